"""Reference graphs built on ONNX's own LSTM/GRU/RNN operators: an independent oracle and the speed baseline.

Never exported. They have exactly the interface of ``step.onnx``/``sequence.onnx`` (same input and output
names, same scoring tail from :mod:`model.export.sequence`), so tests compare outputs name by name and the
benchmark times the same work. The recurrent part is onnxruntime's fused CPU kernel instead of our explicit
ops. Mapping of our parameters (ONNX layout already, time-major ``X [T, B, X]``; layout=1 is rejected)::

    lstm      W, R as stored; B = [b, 0]
    peephole  + P [3H] (ONNX order i, o, f)
    cifg      input_forget=1 (f = 1 - i); W, R, b get a zero f block: [i, o, 0, c]
    gru       linear_before_reset=0; B = [b, 0]
    gru-lbr   linear_before_reset=1; B = [b, (0, 0, Rb)]  (Wb_h = b_h, Rb_h = Rb)
    rnn       Tanh; B = [b, 0]
    nig, nfg, nog   the removed gate's block inserted into W, R (zeros) and b (+50: σ(50) = 1 in float32,
              the gate held open), a zero peephole in P; ONNX order i, o, f, c restored
    niaf      activations [Sigmoid, Affine, Tanh], Affine(α=1, β=0) = identity for c~
    noaf      activations [Sigmoid, Tanh, Affine]: h = o∘c'

``depth-gated`` has no native form (its step reads the lower layer's new cell, which stacked native ops
cannot pass between layers), nor do ``fgr`` (gates that see the previous gates) and ``clockwork`` (modules
that keep their value between ticks): :func:`require_native` raises :class:`ConfigError` and the oracle tests
skip them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from model.cells.greff import GREFF_CELLS, GreffCell
from model.config import ModelConfig
from model.errors import ConfigError
from model.export.builder import FLOAT, INT64, GraphBuilder, make_model
from model.export.sequence import declare_inputs, declare_outputs, emit_head_outputs, time_major
from model.export.signature import BATCH, output_width, state_tensors
from model.export.step import register_head
from model.export.weights import F32, check_params

OP = {"lstm": "LSTM", "peephole": "LSTM", "cifg": "LSTM", "gru": "GRU", "gru-lbr": "GRU", "rnn": "RNN"}
OP.update({name: "LSTM" for name in GREFF_CELLS})

#: The bias that holds a removed gate open in the native graph: σ(50) rounds to 1 in float32.
OPEN = 50.0


def native_weights(cfg: ModelConfig, p: dict[str, F32], l: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``W``, ``R``, ``B`` (and ``P``) of layer ``l`` for the native operator (leading direction axis), and
    the operator's extra attributes."""
    W, R, b = (p[f"layer{l}/{k}"] for k in ("W", "R", "b"))
    H = cfg.hidden
    attrs: dict[str, Any] = {}
    Rb = np.zeros_like(b)
    if cfg.cell == "cifg":  # insert a zero forget block: [i, o, c] -> [i, o, 0, c]

        def widen(a: np.ndarray) -> np.ndarray:
            return np.concatenate([a[: 2 * H], np.zeros_like(a[:H]), a[2 * H :]])

        W, R, b, Rb = widen(W), widen(R), widen(b), np.zeros(4 * H, dtype=np.float32)
        attrs["input_forget"] = 1
    if cfg.cell == "gru-lbr":
        Rb[2 * H :] = p[f"layer{l}/Rb"]
        attrs["linear_before_reset"] = 1
    if cfg.cell == "gru":
        attrs["linear_before_reset"] = 0
    if cfg.cell in GREFF_CELLS:
        return _greff_weights(GREFF_CELLS[cfg.cell], W, R, b, p[f"layer{l}/P"], H)
    w = {"W": W[None], "R": R[None], "B": np.concatenate([b, Rb])[None]}
    if cfg.cell == "peephole":
        w["P"] = p[f"layer{l}/P"][None]
    return w, attrs


def _greff_weights(
    spec: GreffCell, W: np.ndarray, R: np.ndarray, b: np.ndarray, P: np.ndarray, H: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A Greff variant as the native LSTM: the removed gate held open, identity activations as Affine(1, 0)."""

    def widen(a: np.ndarray, have: str, full: str, fill: float = 0.0) -> np.ndarray:
        blocks = {g: a[k * H : (k + 1) * H] for k, g in enumerate(have)}
        return np.concatenate([blocks[g] if g in blocks else np.full_like(a[:H], fill) for g in full])

    W4, R4 = widen(W, spec.gates, "iofc"), widen(R, spec.gates, "iofc")
    b4 = widen(b, spec.gates, "iofc", OPEN)
    w = {"W": W4[None], "R": R4[None], "B": np.concatenate([b4, np.zeros_like(b4)])[None]}
    w["P"] = widen(P, spec.peepholes, "iof")[None]
    acts = ["Sigmoid", "Tanh" if spec.input_act else "Affine", "Tanh" if spec.output_act else "Affine"]
    attrs: dict[str, Any] = {"activations": acts}
    if "Affine" in acts:
        attrs["activation_alpha"], attrs["activation_beta"] = [1.0], [0.0]
    return w, attrs


def _native_layer(
    gb: GraphBuilder, cfg: ModelConfig, p: dict[str, F32], l: int, x: str, seq_lens: str
) -> tuple[str, str, str | None]:
    """One native recurrent op over ``x [T, B, X]``: ``(Y [T, B, H], Y_h [B, H], Y_c [B, H] or None)``."""
    w, attrs = native_weights(cfg, p, l)
    with gb.scope(f"layer{l}"):
        axis0 = gb.const("axis0", [0])
        names = {k: gb.const(k, v) for k, v in w.items()}
        h0 = gb.op1("Unsqueeze", [f"h{l}", axis0], "h0")
        ins = [x, names["W"], names["R"], names["B"], seq_lens, h0]
        if cfg.has_c:
            ins.append(gb.op1("Unsqueeze", [f"c{l}", axis0], "c0"))
            if "P" in names:
                ins.append(names["P"])
        n_out = 3 if cfg.has_c else 2
        outs = ["Y", "Y_h", "Y_c"][:n_out]
        res = gb.op(OP[cfg.cell], ins, "native", outs=outs, hidden_size=cfg.hidden, **attrs)
        y = gb.op1("Squeeze", [res[0], gb.const("axis1", [1])], "y")
        hT = gb.op1("Squeeze", [res[1], axis0], "h_last")
        cT = gb.op1("Squeeze", [res[2], axis0], "c_last") if cfg.has_c else None
    return y, hT, cT


def require_native(cfg: ModelConfig) -> None:
    """Raise :class:`ConfigError` for a cell no native operator expresses (e.g. ``depth-gated``, whose step
    reads the lower layer's cell): the oracle skips those cells."""
    if cfg.cell not in OP:
        raise ConfigError(f"cell: {cfg.cell!r} has no native ONNX operator; the native oracle covers {', '.join(OP)}")


def native_sequence_model(cfg: ModelConfig, params: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``sequence.onnx``'s interface on the native operators (``lengths`` must be >= 1)."""
    require_native(cfg)
    p = check_params(cfg, params)
    gb = GraphBuilder("native_sequence")
    x, lengths = declare_inputs(gb, cfg)
    head = register_head(gb, p)
    xt, lens = time_major(gb, cfg, x, lengths)
    y = gb.op1("Gather", [gb.const("embed", p["embed"]), xt], "embedding") if cfg.token_input else xt
    seq_lens = gb.op1("Cast", [lens], "seq_lens", to=onnx.TensorProto.INT32)
    for l in range(cfg.layers):
        y, hT, cT = _native_layer(gb, cfg, p, l, y, seq_lens)
        gb.op_to("Identity", [hT], [f"h{l}_out"], f"layer{l}/h_out")
        if cT is not None:
            gb.op_to("Identity", [cT], [f"c{l}_out"], f"layer{l}/c_out")
    emit_head_outputs(gb, cfg, y, xt, lens, head, f"h{cfg.layers - 1}_out")
    declare_outputs(gb, cfg)
    return make_model(gb.graph(), {"graph": "native_sequence"})


def native_step_model(cfg: ModelConfig, params: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``step.onnx``'s interface on the native operators (a sequence of length 1)."""
    require_native(cfg)
    p = check_params(cfg, params)
    gb = GraphBuilder("native_step")
    if cfg.token_input:
        x = gb.input("tokens", INT64, [BATCH])
        x = gb.op1("Gather", [gb.const("embed", p["embed"]), x], "embedding")
    else:
        x = gb.input("inputs", FLOAT, [BATCH, cfg.input_dim])
    for s in state_tensors(cfg):
        gb.input(s.name, FLOAT, [BATCH, cfg.hidden])
    WT, b = register_head(gb, p)
    y = gb.op1("Unsqueeze", [x, gb.const("time_axis", [0])], "one_step")
    for l in range(cfg.layers):
        y, hT, cT = _native_layer(gb, cfg, p, l, y, "")
        gb.op_to("Identity", [hT], [f"h{l}_out"], f"layer{l}/h_out")
        if cT is not None:
            gb.op_to("Identity", [cT], [f"c{l}_out"], f"layer{l}/c_out")
    top = f"h{cfg.layers - 1}_out"
    with gb.scope("head"):
        if cfg.token_input:
            gb.op_to("LogSoftmax", [gb.op1("Gemm", [top, WT, b], "logits")], ["logprobs"], "log_softmax", axis=-1)
        else:
            gb.op_to("Gemm", [top, WT, b], ["output"], "linear")
    gb.output("logprobs" if cfg.token_input else "output", FLOAT, [BATCH, output_width(cfg)])
    for s in state_tensors(cfg):
        gb.output(s.out_name, FLOAT, [BATCH, cfg.hidden])
    return make_model(gb.graph(), {"graph": "native_step"})
