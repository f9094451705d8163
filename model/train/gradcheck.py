"""The gradient check: exact BPTT (:func:`model.network.backward`) against float64 central differences.

A tiny token network of one cell: V = 5 tokens, E = 3, H = 4, L layers, a batch of B = 2 sequences of T = 4
steps, all in float64. Every parameter is moved off its initial value (``θ += 0.3 N(0, 1)``, so biases and
peepholes are non-zero), each layer starts from a random non-zero state ``s0 = (h0, c0)`` (``c0`` where the
cell has one), and the loss is the network's own plus a random projection of the final state::

    J(θ, s0) = CE_w(z(x; θ, s0), y) + Σ_l ( <h_T^l, u_l> + <c_T^l, v_l> )

``CE_w`` is :func:`model.network.loss_and_dout`'s weighted mean cross-entropy (random weights w > 0); the
projection ``(u_l, v_l)`` makes the error also enter through the final state (``backward``'s ``dstate``).

Analytic: ``(g, ds0) = backward(cfg, θ, forward(cfg, θ, x, s0), dJ/dz, dstate=(u, v))``.
Numeric, element k of a block x (perturbed in place, then restored)::

    n_k = (J(x + ε e_k) - J(x - ε e_k)) / (2ε),      ε = 1e-6

(truncation error O(ε²), rounding error O(1e-16 |J| / ε) ≈ 1e-10: far below the tolerance). Per block, with the
analytic gradient a::

    r = max_k |a_k - n_k| / max(max_k |n_k|, 1e-8)          passes when r < 1e-6

The blocks are every parameter (``embed``, ``layer{l}/W``, ``R``, ``b`` and the cell's own, ``head/W``,
``head/b``) and every initial state (``layer{l}/h0``, ``layer{l}/c0``). With V = 5 a batch has at most 5
distinct ids, so layer 0 takes the folded-embedding path (``network.FOLD_MAX_UNIQUE``); the plain path is
checked against it in ``tests/test_model_network.py``. ``depth-gated`` needs L >= 2 to exercise its depth
gate: its layer 0 has no lower cell and is exactly an LSTM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model import network as N
from model.cells.base import Array, Params
from model.cells.clockwork import cycle
from model.config import ModelConfig

#: Largest relative error a block may have.
TOLERANCE = 1e-6
#: Central-difference step.
EPS = 1e-6
#: The tiny network and batch.
V, E, H, T, B = 5, 3, 4, 4, 2


def numeric_grad(f: Callable[[], float], x: Array, eps: float = EPS) -> Array:
    """d f / d x by central differences, perturbing ``x`` in place (restored afterwards)."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        fp = f()
        x[idx] = old - eps
        fm = f()
        x[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


def rel_error(analytic: Array, numeric: Array) -> float:
    """max |a - n| / max(max |n|, 1e-8): the relative error of a whole gradient block."""
    return float(np.abs(analytic - numeric).max() / max(float(np.abs(numeric).max()), 1e-8))


def default_layers(cell: str) -> int:
    """2 for ``depth-gated`` (its depth gate acts from layer 1 on), 1 for every other cell."""
    return 2 if cell == "depth-gated" else 1


@dataclass(frozen=True)
class Block:
    """One checked block: its name, shape and relative error."""

    name: str
    shape: tuple[int, ...]
    rel_error: float


@dataclass(frozen=True)
class GradCheck:
    """The result of :func:`check`, one :class:`Block` per parameter and initial state, in network order."""

    cell: str
    layers: int
    tolerance: float
    blocks: tuple[Block, ...]

    @property
    def max_rel_error(self) -> float:
        return max(b.rel_error for b in self.blocks)

    @property
    def ok(self) -> bool:
        return all(b.rel_error < self.tolerance for b in self.blocks)

    def to_dict(self) -> dict[str, object]:
        """The ``--json`` object: cell, layers, tolerance, blocks (name -> error), max_rel_error."""
        return {
            "cell": self.cell,
            "layers": self.layers,
            "tolerance": self.tolerance,
            "blocks": {b.name: b.rel_error for b in self.blocks},
            "max_rel_error": self.max_rel_error,
        }


@dataclass
class Problem:
    """Everything :math:`J` depends on besides θ: inputs, targets, weights, initial state, projections."""

    cfg: ModelConfig
    x: Array  # [B, T] ids
    y: Array  # [B, T] ids
    w: Array  # [B, T] loss weights
    s0: N.State
    proj: N.State  # (u_l, v_l) per layer, shaped like the state

    def loss(self, p: Params) -> float:
        f = N.forward(self.cfg, p, self.x, self.s0)
        total, _ = N.loss_and_dout(self.cfg, f.out, self.y, self.w)
        for (h, c), (u, v) in zip(f.state, self.proj, strict=True):
            total += float((h * u).sum()) + (0.0 if c is None or v is None else float((c * v).sum()))
        return total


def analytic_grads(pb: Problem, p: Params) -> tuple[Params, N.State]:
    """``(dJ/dθ keyed like p, dJ/ds0)`` by exact BPTT."""
    f = N.forward(pb.cfg, p, pb.x, pb.s0)
    _, dout = N.loss_and_dout(pb.cfg, f.out, pb.y, pb.w)
    return N.backward(pb.cfg, p, f, dout, pb.proj)


def _random_state(cfg: ModelConfig, rng: np.random.Generator, counter: bool) -> N.State:
    """Per layer ``(h [B, H], c [B, C] or None)``, standard normal; ``counter``: c is clockwork's step counter."""
    state: N.State = []
    for _ in range(cfg.layers):
        h = rng.standard_normal((B, cfg.hidden))
        c = rng.standard_normal((B, cfg.c_width)) if cfg.has_c else None
        if counter:  # an integer below the largest period, different per row, so the modules tick apart
            c = rng.integers(0, cycle(cfg.hidden), (B, 1)).astype(np.float64)
        state.append((h, c))
    return state


def problem(cell: str, layers: int, rng: np.random.Generator) -> tuple[Problem, Params]:
    """The tiny network of ``cell`` at ``layers`` layers, its random batch and state, and perturbed θ."""
    cfg = ModelConfig(cell=cell, layers=layers, hidden=H, vocab_size=V, embed=E)
    p = N.init_params(cfg, rng, np.float64)
    for k in p:
        p[k] = p[k] + rng.standard_normal(p[k].shape) * 0.3
    pb = Problem(
        cfg=cfg,
        x=rng.integers(0, V, (B, T)),
        y=rng.integers(0, V, (B, T)),
        w=rng.random((B, T)) + 0.1,
        s0=_random_state(cfg, rng, counter=cell == "clockwork"),
        proj=_random_state(cfg, rng, counter=False),
    )
    return pb, p


def check(cell: str, layers: int, rng: np.random.Generator, tolerance: float = TOLERANCE) -> GradCheck:
    """Check every parameter block and initial state of ``cell`` at ``layers`` layers; see the module docstring."""
    pb, p = problem(cell, layers, rng)
    grads, ds0 = analytic_grads(pb, p)
    blocks = [Block(k, p[k].shape, rel_error(grads[k], numeric_grad(lambda: pb.loss(p), p[k]))) for k in p]
    for l, ((h, c), (dh, dc)) in enumerate(zip(pb.s0, ds0, strict=True)):
        blocks.append(Block(f"layer{l}/h0", h.shape, rel_error(dh, numeric_grad(lambda: pb.loss(p), h))))
        if c is not None:
            assert dc is not None
            blocks.append(Block(f"layer{l}/c0", c.shape, rel_error(dc, numeric_grad(lambda: pb.loss(p), c))))
    return GradCheck(cell, layers, tolerance, tuple(blocks))


def table(res: GradCheck) -> str:
    """The human-readable report: one row per block (name, shape, error, ok/FAIL) and the overall line."""
    layers = f"{res.layers} layer{'s' if res.layers > 1 else ''}"
    rows = [
        f"gradcheck {res.cell}, {layers}: V={V} E={E} H={H}, B={B} T={T}, float64 central differences (eps {EPS:g})",
        f"{'block':<12} {'shape':<8} {'max rel error':>13}  tol {res.tolerance:g}",
    ]
    for b in res.blocks:
        shape = "x".join(map(str, b.shape))
        rows.append(f"{b.name:<12} {shape:<8} {b.rel_error:>13.2e}  {'ok' if b.rel_error < res.tolerance else 'FAIL'}")
    failed = sum(b.rel_error >= res.tolerance for b in res.blocks)
    verdict = "ok" if res.ok else f"FAIL ({failed} of {len(res.blocks)} blocks)"
    rows.append(f"max rel error {res.max_rel_error:.2e}: {verdict}")
    return "\n".join(rows)
