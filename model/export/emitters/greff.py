"""One step of the Greff et al. (2015) peephole-LSTM variants as explicit ONNX ops (see :mod:`model.cells.greff`).

Gate groups (:data:`model.export.weights.GROUPS`) as for ``peephole`` without the removed gate: the gates that
see the old cell (``if``, or ``i`` / ``f`` alone), ``o``, and ``c``. ``h`` and ``c`` are ``[B, H]``::

    s   = σ(h RT_s + ax_s + P_s∘[c c])              s = if (nog, niaf, noaf), f (nig), i (nfg)
    c~  = tanh(h RT_c + ax_c)                       niaf: c~ = h RT_c + ax_c (no Tanh)
    c'  = f∘c + i∘c~                                nig: f∘c + c~;  nfg: c + i∘c~
    o   = σ(h RT_o + ax_o + P_o∘c')                 nog: none
    h'  = o∘tanh(c')                                nog: tanh(c');  noaf: o∘c'

Registered for :func:`model.export.cells.emit_step`, so the step and sequence graphs share it.
"""

from __future__ import annotations

from model.cells.greff import GREFF_CELLS
from model.export.builder import GraphBuilder
from model.export.emitters.base import LayerNames, emitter, product, state_out


@emitter(*GREFF_CELLS)
def emit_greff(
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
    """Emit one step of Greff variant ``cell`` under the current scope; returns the names of ``(h', c')``."""
    assert c is not None
    spec = GREFF_CELLS[cell]
    RT = names.RT
    gate: dict[str, str] = {}
    s = "".join(g for g in "if" if g in spec.gates)  # the gates that see the old cell through P
    assert names.P_if is not None
    pre_s = product(gb, h, RT[s], ax[s], f"gate_{s}", gemm)
    cc = c if len(s) == 1 else gb.op1("Concat", [c, c], "c_c", axis=1)
    peep = gb.op1("Mul", [cc, names.P_if], f"peep_{s}")
    sig = gb.op1("Sigmoid", [gb.op1("Add", [pre_s, peep], f"pre_{s}")], f"sigmoid_{s}")
    if len(s) == 1:
        gate[s] = sig
    else:
        gate["i"], gate["f"] = gb.op("Split", [sig], "split_if", outs=["i", "f"], axis=1, num_outputs=2)
    g = product(gb, h, RT["c"], ax["c"], "gate_c", gemm)
    if spec.input_act:
        g = gb.op1("Tanh", [g], "tanh_c")
    ig = gb.op1("Mul", [gate["i"], g], "i_g") if "i" in gate else g
    fc = gb.op1("Mul", [gate["f"], c], "f_c") if "f" in gate else c
    c2 = state_out(gb, "Add", [fc, ig], "c_new", out_c)
    if "o" not in spec.gates:  # nog: h' = tanh(c')
        return state_out(gb, "Tanh", [c2], "h_new", out_h), c2
    assert names.P_o is not None
    pre_o = product(gb, h, RT["o"], ax["o"], "gate_o", gemm)
    peep_o = gb.op1("Mul", [c2, names.P_o], "peep_o")
    o = gb.op1("Sigmoid", [gb.op1("Add", [pre_o, peep_o], "pre_o")], "sigmoid_o")
    act = gb.op1("Tanh", [c2], "tanh_c_new") if spec.output_act else c2
    return state_out(gb, "Mul", [o, act], "h_new", out_h), c2
