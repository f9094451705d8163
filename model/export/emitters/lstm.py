"""One step of the LSTM family as explicit ONNX ops: ``lstm``, ``cifg`` and ``peephole`` (:mod:`model.cells.lstm`).

Gate order and groups as ONNX (:data:`model.export.weights.GROUPS`), ``h`` and ``c`` ``[B, H]``::

    lstm      [i o f] = σ(h R_iof^T + ax_iof);  c~ = tanh(h R_c^T + ax_c)
              c' = f∘c + i∘c~;  h' = o∘tanh(c')
    cifg      [i o] = σ(h R_io^T + ax_io);  c~ = tanh(h R_c^T + ax_c)
              c' = c + i∘(c~ - c)                      (f = 1 - i)
              h' = o∘tanh(c')
    peephole  [i f] = σ(h R_if^T + ax_if + [P_i P_f]∘[c c]);  c~ = tanh(h R_c^T + ax_c)
              c' = f∘c + i∘c~;  o = σ(h R_o^T + ax_o + P_o∘c');  h' = o∘tanh(c')
"""

from __future__ import annotations

from model.export.builder import GraphBuilder
from model.export.emitters.base import LayerNames, emitter, product, state_out


@emitter("lstm", "cifg", "peephole")
def lstm_family(
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
    """lstm (i o f c), cifg (i o c; f = 1 - i) and peephole (P on i, f before and o after the cell update)."""
    assert c is not None
    RT = names.RT
    if cell == "peephole":  # i and f see the old cell through P before their Sigmoid
        assert names.P_if is not None and names.P_o is not None
        P_o = names.P_o
        pre_if = product(gb, h, RT["if"], ax["if"], "gate_if", gemm)
        peep = gb.op1("Mul", [gb.op1("Concat", [c, c], "c_c", axis=1), names.P_if], "peep_if")
        s_if = gb.op1("Sigmoid", [gb.op1("Add", [pre_if, peep], "pre_if")], "sigmoid_if")
        i, f = gb.op("Split", [s_if], "split_if", outs=["i", "f"], axis=1, num_outputs=2)
    else:  # lstm: blocks i, o, f, c; cifg: i, o, c (no forget block)
        sig = "iof" if cell == "lstm" else "io"
        s = gb.op1("Sigmoid", [product(gb, h, RT[sig], ax[sig], f"gate_{sig}", gemm)], f"sigmoid_{sig}")
        gates = gb.op("Split", [s], f"split_{sig}", outs=list(sig), axis=1, num_outputs=len(sig))
        i, o = gates[0], gates[1]
        if cell == "lstm":
            f = gates[2]
    g = gb.op1("Tanh", [product(gb, h, RT["c"], ax["c"], "gate_c", gemm)], "tanh_c")
    if cell == "cifg":  # c' = (1 - i)∘c + i∘c~ = c + i∘(c~ - c)
        ig = gb.op1("Mul", [i, gb.op1("Sub", [g, c], "c_delta")], "i_delta")
        c2 = state_out(gb, "Add", [c, ig], "c_new", out_c)
    else:
        fc = gb.op1("Mul", [f, c], "f_c")
        c2 = state_out(gb, "Add", [fc, gb.op1("Mul", [i, g], "i_g")], "c_new", out_c)
    if cell == "peephole":  # the output gate sees the new cell
        pre_o = product(gb, h, RT["o"], ax["o"], "gate_o", gemm)
        peep_o = gb.op1("Mul", [c2, P_o], "peep_o")
        o = gb.op1("Sigmoid", [gb.op1("Add", [pre_o, peep_o], "pre_o")], "sigmoid_o")
    h2 = state_out(gb, "Mul", [o, gb.op1("Tanh", [c2], "tanh_c_new")], "h_new", out_h)
    return h2, c2
