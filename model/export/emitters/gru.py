"""One step of the GRU as explicit ONNX ops, in both reset forms (:mod:`model.cells.gru`).

Gate order z, r, h (ONNX); ``h`` ``[B, H]``; ``h' = (1-z)∘h~ + z∘h`` as ONNX and PyTorch write it::

    gru       [z r] = σ(h R_zr^T + ax_zr);  h~ = tanh((r∘h) R_h^T + ax_h)        linear_before_reset=0
    gru-lbr   [z r] = σ(h R_zr^T + ax_zr);  u = h R_h^T + Rb;  h~ = tanh(ax_h + r∘u)   linear_before_reset=1
              h' = h~ + z∘(h - h~)
"""

from __future__ import annotations

from model.export.builder import GraphBuilder
from model.export.emitters.base import LayerNames, emitter, product, state_out


@emitter("gru", "gru-lbr")
def emit_gru(
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
) -> tuple[str, None]:
    """gru (reset before the recurrent product) and gru-lbr (linear before reset); no cell state."""
    RT = names.RT
    s = gb.op1("Sigmoid", [product(gb, h, RT["zr"], ax["zr"], "gate_zr", gemm)], "sigmoid_zr")
    z, r = gb.op("Split", [s], "split_zr", outs=["z", "r"], axis=1, num_outputs=2)
    if cell == "gru":  # reset before the matmul: h~ = tanh((r∘h) R_h^T + ax_h)
        rh = gb.op1("Mul", [r, h], "r_h")
        hh = gb.op1("Tanh", [product(gb, rh, RT["h"], ax["h"], "gate_h", gemm)], "tanh_h")
    else:  # linear before reset: h~ = tanh(ax_h + r∘(h R_h^T + Rb))
        assert names.Rb is not None
        u = product(gb, h, RT["h"], names.Rb, "gate_h", gemm)
        pre = gb.op1("Add", [ax["h"], gb.op1("Mul", [r, u], "r_u")], "pre_h")
        hh = gb.op1("Tanh", [pre], "tanh_h")
    zd = gb.op1("Mul", [z, gb.op1("Sub", [h, hh], "h_delta")], "z_delta")
    return state_out(gb, "Add", [hh, zd], "h_new", out_h), None
