"""One recurrent step of every cell as explicit ONNX ops (never the built-in LSTM/GRU/RNN operators).

Shapes: the state ``h`` (and ``c``) is ``[B, H]``; ``ax[g]`` is the input term ``x W_g^T + b_g`` of gate
group ``g`` (``[B, |g|]``, see :mod:`model.export.weights`). Each group's recurrent product is one
``Gemm(h, RT_g, C=ax_g)`` (``h RT_g + ax_g``: the input term rides in Gemm's C operand, no separate Add), and
an activation directly after a Gemm is fused into it by onnxruntime (``FusedGemm``). Equations, ONNX gate
order, ``∘`` the elementwise product::

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

The same emitter builds the body of the sequence graph's ``Scan`` and the single step graph, so the two
graphs cannot disagree about the math. With ``gemm=False`` products are ``MatMul`` + ``Add`` instead,
the form ``onnxruntime.quantization.quantize_dynamic`` turns into int8 ``MatMulInteger``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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


def register_layer(gb: GraphBuilder, lw: LayerWeights, l: int) -> LayerNames:
    """Add layer ``l``'s arrays as initializers named ``layer{l}/RT_iof``, ``layer{l}/table_iof``, ..."""
    with gb.scope(f"layer{l}"):
        RT = {g: gb.const(f"RT_{g}", a) for g, a in lw.RT.items()}
        WT = {g: gb.const(f"WT_{g}", a) for g, a in lw.WT.items()}
        b = {g: gb.const(f"b_{g}", a) for g, a in lw.b.items()}
        table = {g: gb.const(f"table_{g}", a) for g, a in lw.table.items()}
        P_if = P_o = Rb = None
        if lw.P is not None:
            H = lw.P.shape[0] // 3
            P_if = gb.const("P_if", np.concatenate([lw.P[:H], lw.P[2 * H :]]))  # ONNX order i, o, f
            P_o = gb.const("P_o", lw.P[H : 2 * H])
        if lw.Rb is not None:
            Rb = gb.const("Rb", lw.Rb)
    return LayerNames(RT=RT, WT=WT, b=b, table=table, P_if=P_if, P_o=P_o, Rb=Rb)


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
) -> tuple[str, str | None]:
    """Emit one step of ``cell`` under the current scope; returns the names of ``(h', c')``.

    ``out_h``/``out_c`` name the new state tensors (graph outputs such as ``h0_out``); by default they are
    named after their nodes.
    """
    if cell in ("lstm", "cifg", "peephole"):
        assert c is not None
        return _lstm_family(gb, cell, names, ax, h, c, out_h, out_c, gemm)
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
    return {g.name: product(gb, x, names.WT[g.name], names.b[g.name], f"input_{g.name}", gemm) for g in GROUPS[cell]}


def input_terms_from_tokens(gb: GraphBuilder, cell: str, names: LayerNames, tokens: str) -> dict[str, str]:
    """``ax_g = table_g[tokens]``: the folded embedding + input projection, one Gather per group."""
    return {g.name: gb.op1("Gather", [names.table[g.name], tokens], f"input_{g.name}") for g in GROUPS[cell]}
