"""One step of the Depth Gated LSTM (``depth-gated``, see :mod:`model.cells.depth`) as explicit ONNX ops.

The step reads ``low`` = c_t^{l-1} ``[B, H]``, the new cell of the layer below at the same step: in the step
graph that is layer l-1's ``c{l-1}_out``, in the sequence graph one more scan input of layer l's ``Scan``
(layer l-1's per-step cell sequence ``c_seq [T, B, H]``). Groups (``model.export.weights``): ``iof``
(Sigmoid) | ``c`` (Tanh) | ``d`` (input term only; d has no recurrent weights)::

    [i o f] = σ(h R_iof^T + ax_iof);  c~ = tanh(h R_c^T + ax_c)
    d  = σ(ax_d + c∘w_cd + low∘w_ld)
    c' = f∘c + i∘c~ + d∘low;  h' = o∘tanh(c')

Layer 0 has no lower cell (c^{-1} = 0, so d has no effect): it is emitted as the plain ``lstm`` step, and
its d group, ``w_cd`` and ``w_ld`` are not exported.
"""

from __future__ import annotations

from model.export.builder import GraphBuilder
from model.export.emitters.base import LayerNames, emitter, product, state_out
from model.export.emitters.lstm import lstm_family


@emitter("depth-gated")
def emit_depth_gated(
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
    """Emit one depth-gated step under the current scope; returns the names of ``(h', c')``."""
    assert c is not None
    if low is None:
        return lstm_family(gb, "lstm", names, ax, h, c, out_h, out_c, gemm)
    assert names.w_cd is not None and names.w_ld is not None
    RT = names.RT
    s = gb.op1("Sigmoid", [product(gb, h, RT["iof"], ax["iof"], "gate_iof", gemm)], "sigmoid_iof")
    i, o, f = gb.op("Split", [s], "split_iof", outs=["i", "o", "f"], axis=1, num_outputs=3)
    g = gb.op1("Tanh", [product(gb, h, RT["c"], ax["c"], "gate_c", gemm)], "tanh_c")
    peep = gb.op1(
        "Add", [gb.op1("Mul", [c, names.w_cd], "c_wcd"), gb.op1("Mul", [low, names.w_ld], "low_wld")], "peep_d"
    )
    d = gb.op1("Sigmoid", [gb.op1("Add", [ax["d"], peep], "pre_d")], "sigmoid_d")
    fc_ig = gb.op1("Add", [gb.op1("Mul", [f, c], "f_c"), gb.op1("Mul", [i, g], "i_g")], "f_c_i_g")
    c2 = state_out(gb, "Add", [fc_ig, gb.op1("Mul", [d, low], "d_low")], "c_new", out_c)
    h2 = state_out(gb, "Mul", [o, gb.op1("Tanh", [c2], "tanh_c_new")], "h_new", out_h)
    return h2, c2
