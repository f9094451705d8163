"""One step of the FGR cell (full gate recurrence, :mod:`model.cells.fgr`) as explicit ONNX ops.

The state ``c`` is ``[B, 4H]`` = ``[c | i | o | f]``: the memory cell, then the previous step's gate activations
in ONNX order. The i, f and o groups multiply ``[h | g_prev]`` ``[B, 4H]`` by their stacked weights
``RT_g = [R_g^T; Rg_g^T]`` (one Gemm per group, as for the peephole LSTM, with a 4H-deep operand; see
:mod:`model.export.weights`)::

    c_old, g_prev = Split(c, [H, 3H])
    hg    = Concat(h, g_prev)                                     [B, 4H]
    [i f] = σ(hg RT_if + ax_if + [P_i P_f]∘[c_old c_old])
    c~    = tanh(h RT_c + ax_c)
    c'    = f∘c_old + i∘c~
    o     = σ(hg RT_o + ax_o + P_o∘c')
    h'    = o∘tanh(c')
    state' = Concat(c', i, o, f)                                  [B, 4H]

Registered for :func:`model.export.cells.emit_step`, so the step and sequence graphs share it.
"""

from __future__ import annotations

from model.export.builder import GraphBuilder
from model.export.emitters.base import LayerNames, emitter, product, state_out


@emitter("fgr")
def emit_fgr(
    gb: GraphBuilder,
    cell: str,
    names: LayerNames,
    ax: dict[str, str],
    h: str,
    c: str | None,
    out_h: str | None,
    out_c: str | None,
    gemm: bool,
    low: str | None = None,
) -> tuple[str, str]:
    """Emit one FGR step under the current scope; returns the names of ``(h', state')``."""
    assert c is not None
    RT = names.RT
    assert names.P_if is not None and names.P_o is not None
    c_old, g_prev = gb.op("Split", [c, names.extra["c_split"]], "split_state", outs=["c_old", "g_prev"], axis=1)
    hg = gb.op1("Concat", [h, g_prev], "h_gates", axis=1)
    pre_if = product(gb, hg, RT["if"], ax["if"], "gate_if", gemm)
    peep = gb.op1("Mul", [gb.op1("Concat", [c_old, c_old], "c_c", axis=1), names.P_if], "peep_if")
    s_if = gb.op1("Sigmoid", [gb.op1("Add", [pre_if, peep], "pre_if")], "sigmoid_if")
    i, f = gb.op("Split", [s_if], "split_if", outs=["i", "f"], axis=1, num_outputs=2)
    g = gb.op1("Tanh", [product(gb, h, RT["c"], ax["c"], "gate_c", gemm)], "tanh_c")
    fc = gb.op1("Mul", [f, c_old], "f_c")
    c2 = gb.op1("Add", [fc, gb.op1("Mul", [i, g], "i_g")], "c_new")
    pre_o = product(gb, hg, RT["o"], ax["o"], "gate_o", gemm)
    peep_o = gb.op1("Mul", [c2, names.P_o], "peep_o")
    o = gb.op1("Sigmoid", [gb.op1("Add", [pre_o, peep_o], "pre_o")], "sigmoid_o")
    h2 = state_out(gb, "Mul", [o, gb.op1("Tanh", [c2], "tanh_c_new")], "h_new", out_h)
    if out_c is None:
        return h2, gb.op1("Concat", [c2, i, o, f], "state_new", axis=1)
    gb.op_to("Concat", [c2, i, o, f], [out_c], "state_new", axis=1)
    return h2, out_c
