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
              (Greff et al. 2015; :mod:`model.export.greff`)
    depth-gated  as lstm, plus d = σ(ax_d + c∘w_cd + low∘w_ld) and c' += d∘low, low = the lower layer's
              new cell (:mod:`model.export.depth`; layer 0 is the plain lstm step)
    fgr       peephole whose i, o, f also read the previous gates: c is [c; i; o; f] [B, 4H] (model.export.fgr)
    clockwork h' = Where(tick, tanh(h (R∘mask)^T + ax), h); c is the step counter [B, 1] (model.export.clockwork)

The same emitter builds the body of the sequence graph's ``Scan`` and the single step graph, so the two
graphs cannot disagree about the math. With ``gemm=False`` products are ``MatMul`` + ``Add`` instead,
the form ``onnxruntime.quantization.quantize_dynamic`` turns into int8 ``MatMulInteger``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.cells.greff import GREFF_CELLS
from model.export.builder import GraphBuilder
from model.export.weights import GROUPS, LayerWeights


@dataclass(frozen=True)
class LayerNames:
    """Names of one layer's initializers in the outer graph (Scan bodies reference them from there)."""

    RT: dict[str, str]
    WT: dict[str, str] = field(default_factory=dict)
    b: dict[str, str] = field(default_factory=dict)
    table: dict[str, str] = field(default_factory=dict)
    P_if: str | None = None
    P_o: str | None = None
    Rb: str | None = None
    w_cd: str | None = None  # depth-gated above layer 0: the depth gate's weights on c and on the lower cell
    w_ld: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # cell-specific constants: layer{l}/{key} (fgr, clockwork)


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


def product(gb: GraphBuilder, x: str, weight: str, add: str, leaf: str, gemm: bool) -> str:
    """``x @ weight + add`` as one Gemm (C = ``add``) or, with ``gemm=False``, MatMul then Add."""
    if gemm:
        return gb.op1("Gemm", [x, weight, add], leaf)
    return gb.op1("Add", [gb.op1("MatMul", [x, weight], f"{leaf}/matmul"), add], leaf)


def _last(gb: GraphBuilder, op: str, inputs: list[str], leaf: str, out: str | None) -> str:
    """The node that produces a state: written to the given graph-output name when there is one."""
    if out is None:
        return gb.op1(op, inputs, leaf)
    gb.op_to(op, inputs, [out], leaf)
    return out


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
    if cell == "depth-gated":
        assert c is not None
        from model.export.depth import emit_depth_gated  # it builds on this module's helpers

        return emit_depth_gated(gb, names, ax, h, c, low, out_h, out_c, gemm)
    if cell in ("lstm", "cifg", "peephole"):
        assert c is not None
        return _lstm_family(gb, cell, names, ax, h, c, out_h, out_c, gemm)
    if cell in GREFF_CELLS:
        assert c is not None
        from model.export.greff import emit_greff  # it builds on this module's helpers

        return emit_greff(gb, cell, names, ax, h, c, out_h, out_c, gemm)
    if cell == "fgr":
        assert c is not None
        from model.export.fgr import emit_fgr  # it builds on this module's helpers

        return emit_fgr(gb, names, ax, h, c, out_h, out_c, gemm)
    if cell == "clockwork":
        assert c is not None
        from model.export.clockwork import emit_clockwork  # it builds on this module's helpers

        return emit_clockwork(gb, names, ax, h, c, out_h, out_c, gemm)
    if cell in ("gru", "gru-lbr"):
        return _gru(gb, cell, names, ax, h, out_h, gemm), None
    if cell == "rnn":
        pre = product(gb, h, names.RT["h"], ax["h"], "gate_h", gemm)
        return _last(gb, "Tanh", [pre], "h_new", out_h), None
    raise AssertionError(f"unhandled cell {cell!r}")


def _lstm_family(
    gb: GraphBuilder,
    cell: str,
    names: LayerNames,
    ax: dict[str, str],
    h: str,
    c: str,
    out_h: str | None,
    out_c: str | None,
    gemm: bool,
) -> tuple[str, str]:
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
        c2 = _last(gb, "Add", [c, ig], "c_new", out_c)
    else:
        fc = gb.op1("Mul", [f, c], "f_c")
        c2 = _last(gb, "Add", [fc, gb.op1("Mul", [i, g], "i_g")], "c_new", out_c)
    if cell == "peephole":  # the output gate sees the new cell
        pre_o = product(gb, h, RT["o"], ax["o"], "gate_o", gemm)
        peep_o = gb.op1("Mul", [c2, P_o], "peep_o")
        o = gb.op1("Sigmoid", [gb.op1("Add", [pre_o, peep_o], "pre_o")], "sigmoid_o")
    h2 = _last(gb, "Mul", [o, gb.op1("Tanh", [c2], "tanh_c_new")], "h_new", out_h)
    return h2, c2


def _gru(
    gb: GraphBuilder, cell: str, names: LayerNames, ax: dict[str, str], h: str, out_h: str | None, gemm: bool
) -> str:
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
    return _last(gb, "Add", [hh, zd], "h_new", out_h)


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
