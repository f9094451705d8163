"""Parameter checks and the weight layouts the exported graphs use.

The NumPy model stores every layer in the ONNX operator layout (``W [G*H, X]``, ``R [G*H, H]``, ``b [G*H]``,
gate blocks in ONNX order: LSTM i, o, f, c; CIFG i, o, c; GRU z, r, h; RNN one block). The graphs regroup the
rows into *gate groups*: the rows one ``Gemm`` computes and one activation then covers, so a step needs as
few kernels as possible (see ``docs/export.md``)::

    lstm      iof (Sigmoid) | c (Tanh)
    cifg      io  (Sigmoid) | c (Tanh)
    peephole  if | o | c (Tanh)       i, f see P∘c and o sees P∘c' before their Sigmoid
    nig       f | o | c (Tanh)        the Greff variants group like peephole, without the removed gate
    nfg       i | o | c (Tanh)
    nog       if | c (Tanh)
    niaf      if | o | c              (c~ is the pre-activation: no Tanh)
    noaf      if | o | c (Tanh)
    gru       zr  (Sigmoid) | h (Tanh; its operand is r∘h)
    gru-lbr   zr  (Sigmoid) | h (u = R_h h + Rb; h~ = tanh(ax_h + r∘u))
    rnn       h   (Tanh)
    fgr       if | o | c (Tanh)       as peephole; the if and o products also read the previous gates:
                                      RT_if = [R_if^T; Rg_if^T] [4H, 2H], operand [h, g_prev] (model.export.fgr)
    clockwork h                       RT_h = (R∘mask)^T, the block-triangular mask applied; Tanh, then the
                                      modules that do not tick keep h (model.export.clockwork)
    depth-gated  iof (Sigmoid) | c (Tanh) | d (no R rows: σ(ax_d + w_cd∘c + w_ld∘c_low)); layer 0 has no
              lower cell, so its d group is left out there (it would multiply c^{-1} = 0)

For a group g with rows ``rows_g``, the input term is ``ax_g = x W_g^T + b_g``. For token models the first
layer's input is an embedding row, so the whole input term is folded into one table (computed in float64)::

    table_g = embed @ W_g^T + b_g          [V, |g|]     ax_g(token) = table_g[token]

which replaces the embedding lookup *and* the input projection by one ``Gather``. Weights are stored
transposed (``WT_g [X, |g|]``, ``RT_g [H, |g|]``) so ``Gemm``/``MatMul`` need no transpose attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from model.cells import get_cell
from model.cells.clockwork import block_mask, cycle, inv_periods
from model.cells.greff import GreffCell
from model.config import ModelConfig
from model.errors import CheckpointError
from model.network import param_shapes

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class Group:
    """Gate blocks (indices into the ONNX block order) computed by one product, and their activation."""

    name: str
    blocks: tuple[int, ...]
    act: str | None
    recurrent: bool = True  # False: the blocks have no rows in R (the depth gate)


GROUPS: dict[str, tuple[Group, ...]] = {
    "lstm": (Group("iof", (0, 1, 2), "Sigmoid"), Group("c", (3,), "Tanh")),
    "cifg": (Group("io", (0, 1), "Sigmoid"), Group("c", (2,), "Tanh")),
    "peephole": (Group("if", (0, 2), None), Group("o", (1,), None), Group("c", (3,), "Tanh")),
    "nig": (Group("f", (1,), None), Group("o", (0,), None), Group("c", (2,), "Tanh")),  # blocks o, f, c
    "nfg": (Group("i", (0,), None), Group("o", (1,), None), Group("c", (2,), "Tanh")),  # blocks i, o, c
    "nog": (Group("if", (0, 1), None), Group("c", (2,), "Tanh")),  # blocks i, f, c
    "niaf": (Group("if", (0, 2), None), Group("o", (1,), None), Group("c", (3,), None)),
    "noaf": (Group("if", (0, 2), None), Group("o", (1,), None), Group("c", (3,), "Tanh")),
    "gru": (Group("zr", (0, 1), "Sigmoid"), Group("h", (2,), "Tanh")),
    "gru-lbr": (Group("zr", (0, 1), "Sigmoid"), Group("h", (2,), None)),
    "rnn": (Group("h", (0,), "Tanh"),),
    "depth-gated": (
        Group("iof", (0, 1, 2), "Sigmoid"),
        Group("c", (3,), "Tanh"),
        Group("d", (4,), None, recurrent=False),
    ),
    "fgr": (Group("if", (0, 2), None), Group("o", (1,), None), Group("c", (3,), "Tanh")),
    "clockwork": (Group("h", (0,), None),),
}


def layer_groups(cell: str, l: int) -> tuple[Group, ...]:
    """The groups layer ``l`` computes: every group of ``cell``, except depth-gated's d at layer 0 (there is
    no lower cell there, so the depth gate has no effect; see :mod:`model.cells.depth`)."""
    if cell == "depth-gated" and l == 0:
        return tuple(g for g in GROUPS[cell] if g.name != "d")
    return GROUPS[cell]


def group_rows(group: Group, H: int) -> NDArray[np.int64]:
    """Row indices of ``group`` in the ``[G*H, ...]`` ONNX layout."""
    return np.concatenate([np.arange(k * H, (k + 1) * H) for k in group.blocks])


@dataclass
class LayerWeights:
    """One layer's arrays in graph layout, keyed by group name.

    ``table`` is set for the first layer of token models (the folded embedding), ``WT`` and ``b``
    otherwise. ``P`` (peephole, ONNX order i, o, f) and ``Rb`` (gru-lbr) are the cell's vector parameters;
    ``peepholes`` names the gates of P's blocks in order (``"iof"``; the Greff variants lack the removed gate's).
    """

    RT: dict[str, F32] = field(default_factory=dict)
    WT: dict[str, F32] = field(default_factory=dict)
    b: dict[str, F32] = field(default_factory=dict)
    table: dict[str, F32] = field(default_factory=dict)
    P: F32 | None = None
    peepholes: str = "iof"
    Rb: F32 | None = None
    D: F32 | None = None  # depth-gated above layer 0: [w_cd, w_ld] [2H]
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # cell-specific constants (fgr, clockwork)


def check_params(cfg: ModelConfig, params: dict[str, np.ndarray]) -> dict[str, F32]:
    """Float32 copies of ``params`` after checking names, shapes and values against ``cfg``.

    Raises :class:`CheckpointError` naming the first missing, unexpected, mis-shaped or non-finite array.
    """
    shapes = param_shapes(cfg)
    for name, shape in shapes.items():
        if name not in params:
            raise CheckpointError(f"params: missing array {name!r}")
        a = np.asarray(params[name])
        if a.shape != shape:
            raise CheckpointError(f"params: array {name!r} has shape {a.shape}, expected {shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise CheckpointError(f"params: array {name!r} has dtype {a.dtype}, expected float")
        if not np.isfinite(a).all():
            raise CheckpointError(f"params: array {name!r} holds NaN or Inf values")
    unknown = sorted(set(params) - set(shapes))
    if unknown:
        raise CheckpointError(f"params: unexpected array {unknown[0]!r} for cell {cfg.cell!r}")
    return {k: np.asarray(params[k], dtype=np.float32) for k in shapes}


def prepare(cfg: ModelConfig, params: dict[str, F32]) -> list[LayerWeights]:
    """Graph-layout weights of every layer (see the module docstring)."""
    cell = get_cell(cfg.cell)  # unknown cell -> ConfigError
    H = cfg.hidden
    out: list[LayerWeights] = []
    for l in range(cfg.layers):
        W, R, b = (params[f"layer{l}/{k}"].astype(np.float64) for k in ("W", "R", "b"))
        lw = LayerWeights()
        for g in layer_groups(cfg.cell, l):
            rows = group_rows(g, H)
            if g.recurrent:
                lw.RT[g.name] = _f32(R[rows].T)
            if l == 0 and cfg.token_input:
                lw.table[g.name] = _f32(params["embed"].astype(np.float64) @ W[rows].T + b[rows])
            else:
                lw.WT[g.name] = _f32(W[rows].T)
                lw.b[g.name] = _f32(b[rows])
        if cfg.cell == "peephole":
            lw.P = params[f"layer{l}/P"]
        if isinstance(cell, GreffCell):
            lw.P, lw.peepholes = params[f"layer{l}/P"], cell.peepholes
        if cfg.cell == "gru-lbr":
            lw.Rb = params[f"layer{l}/Rb"]
        if cfg.cell == "depth-gated" and l > 0:
            lw.D = params[f"layer{l}/D"]
        if cfg.cell == "fgr":
            _fgr_weights(lw, R, params[f"layer{l}/Rg"].astype(np.float64), params[f"layer{l}/P"], H)
        if cfg.cell == "clockwork":
            _clockwork_weights(lw, R, H)
        out.append(lw)
    return out


def _fgr_weights(lw: LayerWeights, R: NDArray[np.float64], Rg: NDArray[np.float64], P: F32, H: int) -> None:
    """fgr: the i, f and o groups multiply ``[h, g_prev]`` (``[B, 4H]``) by ``[R_g^T; Rg_g^T]``; ``c_split``
    cuts the state ``[c; i; o; f]`` into the cell and the previous gates."""
    lw.P = P
    for g in GROUPS["fgr"]:
        if g.name != "c":  # the candidate does not see the previous gates
            rows = group_rows(g, H)  # Rg's rows are the gates i, o, f: the same indices as R's first 3H
            lw.RT[g.name] = _f32(np.concatenate([R[rows].T, Rg[rows].T]))
    lw.extra["c_split"] = np.array([H, 3 * H], dtype=np.int64)


def _clockwork_weights(lw: LayerWeights, R: NDArray[np.float64], H: int) -> None:
    """clockwork: R with its block-triangular mask applied, and the constants of the module clock."""
    lw.RT["h"] = _f32((R * block_mask(H)).T)
    N = float(cycle(H))
    lw.extra.update(inv_period=_f32(inv_periods(H)), cycle=_f32(N), inv_cycle=_f32(1.0 / N), one=_f32(1.0))


def _f32(a: NDArray[np.float64] | float) -> F32:
    return np.ascontiguousarray(a, dtype=np.float32)
