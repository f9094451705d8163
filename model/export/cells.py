"""One recurrent step of every cell as explicit ONNX ops (never the built-in LSTM/GRU/RNN operators).

Shapes: the state ``h`` (and ``c``) is ``[B, H]`` (fgr's and clockwork's ``c`` are ``[B, 4H]`` and ``[B, 1]``);
``ax[g]`` is the input term ``x W_g^T + b_g`` of gate group ``g`` (``[B, |g|]``, see :mod:`model.export.weights`).
Each group's recurrent product is one ``Gemm(h, RT_g, C=ax_g)`` (``h RT_g + ax_g``: the input term rides in
Gemm's C operand, no separate Add), and an activation directly after a Gemm is fused into it by onnxruntime
(``FusedGemm``). Equations, ONNX gate order, ``∘`` the elementwise product::

    lstm      [i o f] = σ(h R_iof^T + ax_iof);  c~ = tanh(h R_c^T + ax_c)
              c' = f∘c + i∘c~;  h' = o∘tanh(c')
    cifg      [i o] = σ(h R_io^T + ax_io);  c~ = tanh(h R_c^T + ax_c)
              c' = c + i∘(c~ - c)                      (f = 1 - i)
              h' = o∘tanh(c')
    peephole  [i f] = σ(h R_if^T + ax_if + [P_i P_f]∘[c c]);  c~ = tanh(h R_c^T + ax_c)
              c' = f∘c + i∘c~;  o = σ(h R_o^T + ax_o + P_o∘c');  h' = o∘tanh(c')
    gru       [z r] = σ(h R_zr^T + ax_zr);  h~ = tanh((r∘h) R_h^T + ax_h)
              h' = h~ + z∘(h - h~)                     (= (1-z)∘h~ + z∘h)
    gru-lbr   [z r] = σ(h R_zr^T + ax_zr);  u = h R_h^T + Rb;  h~ = tanh(ax_h + r∘u)
              h' = h~ + z∘(h - h~)
    rnn       h' = tanh(h R^T + ax)
    nig nfg nog niaf noaf   peephole without i, f or o (the gate is 1), without c~'s tanh, without h's tanh
              (Greff et al. 2015; :mod:`model.export.emitters.greff`)
    depth-gated  as lstm, plus d = σ(ax_d + c∘w_cd + low∘w_ld) and c' += d∘low, low = the lower layer's
              new cell (:mod:`model.export.emitters.depth`; layer 0 is the plain lstm step)
    fgr       peephole whose i, o, f also read the previous gates: c is [c; i; o; f] [B, 4H] (emitters.fgr)
    clockwork h' = Where(tick, tanh(h (R∘mask)^T + ax), h); c is the step counter [B, 1] (emitters.clockwork)

The step of each cell family is written by an emitter in :mod:`model.export.emitters` (one module per family,
registered by cell name); this module dispatches to it, registers a layer's initializers and forms the input
terms. The same emitter builds the body of the sequence graph's ``Scan`` and the single step graph, so the two
graphs cannot disagree about the math. With ``gemm=False`` products are ``MatMul`` + ``Add`` instead,
the form ``onnxruntime.quantization.quantize_dynamic`` turns into int8 ``MatMulInteger``.
"""

from __future__ import annotations

import numpy as np

from model.export.builder import GraphBuilder
from model.export.emitters import EMITTERS, LayerNames
from model.export.emitters.base import product
from model.export.weights import GROUPS, LayerWeights

__all__ = ["LayerNames", "emit_step", "input_terms_from_rows", "input_terms_from_tokens", "register_layer"]


def register_layer(gb: GraphBuilder, lw: LayerWeights, l: int) -> LayerNames:
    """Add layer ``l``'s arrays as initializers named ``layer{l}/RT_iof``, ``layer{l}/table_iof``, ..."""
    with gb.scope(f"layer{l}"):
        RT = {g: gb.const(f"RT_{g}", a) for g, a in lw.RT.items()}
        WT = {g: gb.const(f"WT_{g}", a) for g, a in lw.WT.items()}
        b = {g: gb.const(f"b_{g}", a) for g, a in lw.b.items()}
        table = {g: gb.const(f"table_{g}", a) for g, a in lw.table.items()}
        P_if = P_o = Rb = w_cd = w_ld = None
        if lw.P is not None:  # blocks of the gates in lw.peepholes (ONNX order i, o, f; Greff cells lack one)
            H = lw.P.shape[0] // len(lw.peepholes)
            P = {g: lw.P[k * H : (k + 1) * H] for k, g in enumerate(lw.peepholes)}
            sees_c = "".join(g for g in "if" if g in P)  # the gates whose peepholes see the old cell
            if sees_c:
                P_if = gb.const(f"P_{sees_c}", np.concatenate([P[g] for g in sees_c]))
            if "o" in P:
                P_o = gb.const("P_o", P["o"])
        if lw.Rb is not None:
            Rb = gb.const("Rb", lw.Rb)
        if lw.D is not None:
            H = lw.D.shape[0] // 2
            w_cd, w_ld = gb.const("w_cd", lw.D[:H]), gb.const("w_ld", lw.D[H:])
        extra = {k: gb.const(k, a) for k, a in lw.extra.items()}
    return LayerNames(RT=RT, WT=WT, b=b, table=table, P_if=P_if, P_o=P_o, Rb=Rb, w_cd=w_cd, w_ld=w_ld, extra=extra)


def emit_step(
    gb: GraphBuilder,
    cell: str,
    names: LayerNames,
    ax: dict[str, str],
    h: str,
    c: str | None,
    out_h: str | None = None,
    out_c: str | None = None,
    gemm: bool = True,
    low: str | None = None,
) -> tuple[str, str | None]:
    """Emit one step of ``cell`` under the current scope; returns the names of ``(h', c')``.

    ``out_h``/``out_c`` name the new state tensors (graph outputs such as ``h0_out``); by default they are
    named after their nodes. ``low`` is the lower layer's new cell ``[B, H]`` (depth-gated above layer 0).
    """
    try:
        emit = EMITTERS[cell]
    except KeyError:
        raise AssertionError(f"no step emitter for cell {cell!r} (model.export.emitters)") from None
    return emit(gb, cell, names, ax, h, c, out_h, out_c, gemm, low)


def input_terms_from_rows(gb: GraphBuilder, cell: str, names: LayerNames, x: str, gemm: bool) -> dict[str, str]:
    """``ax_g = x WT_g + b_g`` for every group of ``cell``, x ``[B, X]`` (a step of a deeper layer)."""
    return {
        g.name: product(gb, x, names.WT[g.name], names.b[g.name], f"input_{g.name}", gemm)
        for g in GROUPS[cell]
        if g.name in names.WT  # depth-gated's layer 0 has no d group
    }


def input_terms_from_tokens(gb: GraphBuilder, cell: str, names: LayerNames, tokens: str) -> dict[str, str]:
    """``ax_g = table_g[tokens]``: the folded embedding + input projection, one Gather per group."""
    return {
        g.name: gb.op1("Gather", [names.table[g.name], tokens], f"input_{g.name}")
        for g in GROUPS[cell]
        if g.name in names.table  # depth-gated's layer 0 has no d group
    }
