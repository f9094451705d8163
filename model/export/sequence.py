"""``sequence.onnx``: score right-padded batches with one ``Scan`` per layer.

Time-major inside (``Scan`` slices axis 0)::

    tok     = tokens^T                                          [T, B]
    Scan_0  carries (h, c); scans tok[t]:  ax_g = table_g[tok[t]]    (layer 0 of a token model: the folded
                                                                      embedding, gathered inside the body)
    AX_g    = Y_{l-1} WT_g + b_g            deeper layers / numeric  [T, B, |g|]  (one large MatMul + Add,
    Scan_l  carries (h, c); scans AX_g[t]                                         outside the loop)
            per-step outputs Y_l[t] = h_t, C_l[t] = c_t             [T, B, H], [T, B, C]
            depth-gated, l > 0: C_{l-1} is one more scan input (step t reads c_t of layer l-1)
    logits  = Y_top head_WT + head_b                                [T, B, V]    (once, outside the loop)
    score[t, b] = log_softmax(logits[t, b])[tok[t+1, b]]

The Scan body is the step emitter of :mod:`model.export.cells`: one Gemm per gate group with the input term
in its C operand, the activation fused into the Gemm by onnxruntime, then the cell's few elementwise ops.
Everything that does not depend on the previous step (input projections of deeper layers, the head, the
softmax, the scoring gathers) runs once over all steps as large kernels, outside the loop. Layer 0's
table lookup is the exception: gathering ``[B, |g|]`` rows per step from a table that stays in cache beat
materialising ``[T, B, 4H]`` outside the loop (it saves writing and re-reading 16 MB at B=32, T=128, H=256).

Padding: with right padding every padded step comes after the valid ones of its row, so valid scores need
no mask (padded ones are set to 0); the final state of row b is gathered from the per-step outputs at
``t = lengths[b] - 1`` with ``GatherND`` (``onnx.reference``'s GatherElements breaks on axes > 64), and a row
of length 0 keeps its initial state. ``next_logprobs`` applies the head to those final states.
"""

from __future__ import annotations

import numpy as np
import onnx

from model.config import ModelConfig
from model.export.builder import FLOAT, INT64, GraphBuilder, make_model
from model.export.cells import LayerNames, emit_step, input_terms_from_tokens, register_layer
from model.export.signature import BATCH, TIME, TIME_M1, output_width, state_tensors
from model.export.step import register_head
from model.export.weights import F32, GROUPS, LayerWeights


def build_sequence(
    cfg: ModelConfig,
    layers: list[LayerWeights],
    params: dict[str, F32],
    metadata: dict[str, str],
    gemm: bool = True,
) -> onnx.ModelProto:
    """The sequence-scoring graph of ``cfg`` (see :mod:`model.export.signature` for its interface)."""
    gb = GraphBuilder("seqpred_sequence")
    x, lengths = declare_inputs(gb, cfg)
    names = [register_layer(gb, lw, l) for l, lw in enumerate(layers)]
    head = register_head(gb, params)
    xt, lens = time_major(gb, cfg, x, lengths)
    seqs: list[tuple[str, str | None]] = []
    y = xt
    for l in range(cfg.layers):
        with gb.scope(f"layer{l}"):
            in_body = l == 0 and cfg.token_input  # the scan input is the token column itself
            ax = [xt] if in_body else _input_terms(gb, cfg, names[l], y)
            low = seqs[-1][1] if cfg.cell == "depth-gated" and l > 0 else None  # the layer below's cells
            y, cseq = _scan(gb, cfg, names[l], l, ax, gemm, in_body, low)
            seqs.append((y, cseq))
    with gb.scope("final_state"):
        idx, has_steps = _last_step_index(gb, lens)
        for s in state_tensors(cfg):
            seq = seqs[s.layer][0] if s.kind == "h" else seqs[s.layer][1]
            assert seq is not None
            last = gb.op1("GatherND", [seq, idx], f"gather_{s.name}")
            gb.op_to("Where", [has_steps, last, s.name], [s.out_name], f"keep_{s.name}")
    emit_head_outputs(gb, cfg, y, xt, lens, head, f"h{cfg.layers - 1}_out")
    declare_outputs(gb, cfg)
    return make_model(gb.graph(), {**metadata, "graph": "sequence"}, doc="seqpred: score padded sequences")


def declare_inputs(gb: GraphBuilder, cfg: ModelConfig) -> tuple[str, str]:
    """Graph inputs: ``tokens [B, T]`` (or ``inputs [B, T, X]``), ``lengths [B]``, the states."""
    if cfg.token_input:
        x = gb.input("tokens", INT64, [BATCH, TIME])
    else:
        x = gb.input("inputs", FLOAT, [BATCH, TIME, cfg.input_dim])
    lengths = gb.input("lengths", INT64, [BATCH])
    for s in state_tensors(cfg):
        gb.input(s.name, FLOAT, [BATCH, s.width])
    return x, lengths


def declare_outputs(gb: GraphBuilder, cfg: ModelConfig) -> None:
    if cfg.token_input:
        gb.output("token_logprobs", FLOAT, [BATCH, TIME_M1])
        gb.output("next_logprobs", FLOAT, [BATCH, cfg.vocab_size])
    else:
        gb.output("outputs", FLOAT, [BATCH, TIME, output_width(cfg)])
    for s in state_tensors(cfg):
        gb.output(s.out_name, FLOAT, [BATCH, s.width])


def time_major(gb: GraphBuilder, cfg: ModelConfig, x: str, lengths: str) -> tuple[str, str]:
    """``x`` time-major (``[T, B]`` or ``[T, B, X]``) and ``lengths`` clipped to [0, T]."""
    with gb.scope("input"):
        xt = gb.op1("Transpose", [x], "time_major", perm=[1, 0] if cfg.token_input else [1, 0, 2])
        T = gb.op1("Gather", [gb.op1("Shape", [x], "shape"), gb.const("time_axis", np.int64(1))], "T")
        lens = gb.op1("Clip", [lengths, gb.const("zero", np.int64(0)), T], "lengths")
    return xt, lens


def emit_head_outputs(
    gb: GraphBuilder, cfg: ModelConfig, y: str, xt: str, lens: str, head: tuple[str, str], top_out: str
) -> None:
    """The head over the top layer's per-step outputs ``y [T, B, H]``: scores or predictions."""
    WT, b = head
    with gb.scope("head"):
        if cfg.token_input:
            _token_scores(gb, y, xt, lens, WT, b)
            nxt = gb.op1("Gemm", [top_out, WT, b], "next_logits")
            gb.op_to("LogSoftmax", [nxt], ["next_logprobs"], "next_log_softmax", axis=-1)
        else:
            _predictions(gb, y, xt, lens, WT, b)


def _input_terms(gb: GraphBuilder, cfg: ModelConfig, names: LayerNames, y: str) -> list[str]:
    """Every step's input terms ``AX_g = y WT_g + b_g`` ``[T, B, |g|]``, one tensor per gate group (no Split)."""
    out = []
    for g in GROUPS[cfg.cell]:
        if g.name not in names.WT:  # depth-gated's layer 0 has no d group
            continue
        mm = gb.op1("MatMul", [y, names.WT[g.name]], f"input_{g.name}/matmul")
        out.append(gb.op1("Add", [mm, names.b[g.name]], f"input_{g.name}"))
    return out


def _scan(
    gb: GraphBuilder,
    cfg: ModelConfig,
    names: LayerNames,
    l: int,
    ax: list[str],
    gemm: bool,
    tokens_in_body: bool,
    low: str | None = None,
) -> tuple[str, str | None]:
    """One Scan over time for layer ``l``; returns the per-step ``h`` ``[T, B, H]`` (and ``c`` ``[T, B, C]``)
    sequences.

    ``low`` (depth-gated above layer 0) is the layer below's cell sequence ``[T, B, H]``, one more scan input.
    """
    H = cfg.hidden
    body = gb.sub(f"layer{l}_step")
    with body.scope("step"):
        h = body.input(body.path("h"), FLOAT, [BATCH, H])
        c = body.input(body.path("c"), FLOAT, [BATCH, cfg.c_width]) if cfg.has_c else None
        if tokens_in_body:  # the scan input is the token column; the folded tables are gathered per step
            tok = body.input(body.path("tokens"), INT64, [BATCH])
            ax_t = input_terms_from_tokens(body, cfg.cell, names, tok)
        else:
            ax_t = {}
            for g in GROUPS[cfg.cell]:
                if g.name not in names.WT:  # depth-gated's layer 0 has no d group
                    continue
                width = len(g.blocks) * H
                ax_t[g.name] = body.input(body.path(f"ax_{g.name}"), FLOAT, [BATCH, width])
        low_t = None if low is None else body.input(body.path("c_low"), FLOAT, [BATCH, H])
        h2, c2 = emit_step(body, cfg.cell, names, ax_t, h, c, gemm=gemm, low=low_t)
        # Scan needs distinct tensors for the carried state and the per-step output.
        hs = body.op1("Identity", [h2], "h_seq")
        cs = body.op1("Identity", [c2], "c_seq") if c2 is not None else None
    carried = [h2] if c2 is None else [h2, c2]
    per_step = [hs] if cs is None else [hs, cs]
    for name in carried + per_step:
        body.output(name, FLOAT, [BATCH, cfg.c_width if name in (c2, cs) else H])
    init = [f"h{l}"] + ([f"c{l}"] if cfg.has_c else [])
    outs = ["h_last"] + (["c_last"] if cfg.has_c else []) + ["h_seq"] + (["c_seq"] if cfg.has_c else [])
    scanned = ax + ([] if low is None else [low])
    res = gb.op("Scan", init + scanned, "scan", outs=outs, body=body.graph(), num_scan_inputs=len(scanned))
    if cfg.has_c:
        return res[2], res[3]
    return res[1], None


def _last_step_index(gb: GraphBuilder, lens: str) -> tuple[str, str]:
    """``idx [B, 2] = (max(len - 1, 0), b)`` for GatherND on ``[T, B, H]``, and ``len > 0`` as ``[B, 1]``."""
    one, zero = gb.const("one", np.int64(1)), gb.const("zero", np.int64(0))
    t_last = gb.op1("Max", [gb.op1("Sub", [lens, one], "len_minus_1"), zero], "t_last")
    B = gb.op1("Gather", [gb.op1("Shape", [lens], "shape"), zero], "B")
    b = gb.op1("Range", [zero, B, one], "rows")
    axis1 = gb.const("axis1", np.array([1], dtype=np.int64))
    idx = gb.op1(
        "Concat",
        [gb.op1("Unsqueeze", [t_last, axis1], "t_col"), gb.op1("Unsqueeze", [b, axis1], "b_col")],
        "index",
        axis=1,
    )
    has = gb.op1("Unsqueeze", [gb.op1("Greater", [lens, zero], "has_steps"), axis1], "has_steps_col")
    return idx, has


def _token_scores(gb: GraphBuilder, y: str, tok: str, lens: str, WT: str, b: str) -> None:
    """``token_logprobs [B, T-1]``: log_softmax(logits[t, b])[tok[t+1, b]], 0 where padded."""
    logits = gb.op1("Add", [gb.op1("MatMul", [y, WT], "logits/matmul"), b], "logits")  # [T, B, V]
    logp = gb.op1("LogSoftmax", [logits], "log_softmax", axis=-1)  # faster than ReduceLogSumExp + Sub
    # targets = tok shifted by one step; the last step gets tok[0] (any valid id) and is dropped below,
    # so no [T-1, B, V] slice of the logits is ever copied
    zero, one = gb.const("zero", [0]), gb.const("one", [1])
    nxt = gb.op1("Slice", [tok, one, gb.const("end", [np.iinfo(np.int64).max]), zero], "next_tokens")
    first = gb.op1("Slice", [tok, zero, one, zero], "first_tokens")
    tgt = gb.op1("Concat", [nxt, first], "targets", axis=0)
    tgt3 = gb.op1("Unsqueeze", [tgt, gb.const("last_axis", [-1])], "targets_col")
    score = gb.op1("GatherND", [logp, tgt3], "score", batch_dims=2)  # [T, B]
    T = gb.op1("Shape", [tok], "T", start=0, end=1)
    Tm1 = gb.op1("Sub", [T, one], "T_minus_1")
    scored = gb.op1("Slice", [score, zero, Tm1, zero], "scored")  # [T-1, B]
    rows = gb.op1("Transpose", [scored], "batch_major", perm=[1, 0])  # [B, T-1]
    # position t is valid when t + 1 < len
    limit = gb.op1("Sub", [lens, gb.const("one_scalar", np.int64(1))], "last_valid")
    mask = _time_mask(gb, Tm1, limit)
    gb.op_to("Where", [mask, rows, gb.const("pad", np.float32(0.0))], ["token_logprobs"], "mask_padding")


def _predictions(gb: GraphBuilder, y: str, xt: str, lens: str, WT: str, b: str) -> None:
    """``outputs [B, T, O]`` = linear head after every step, 0 at padded positions."""
    pred = gb.op1("Add", [gb.op1("MatMul", [y, WT], "linear/matmul"), b], "linear")  # [T, B, O]
    rows = gb.op1("Transpose", [pred], "batch_major", perm=[1, 0, 2])
    T = gb.op1("Shape", [xt], "T", start=0, end=1)
    mask = _time_mask(gb, T, lens)  # [B, T]
    mask3 = gb.op1("Unsqueeze", [mask, gb.const("last_axis", [-1])], "mask_col")
    gb.op_to("Where", [mask3, rows, gb.const("pad", np.float32(0.0))], ["outputs"], "mask_padding")


def _time_mask(gb: GraphBuilder, n: str, limit: str) -> str:
    """``mask[b, t] = t < limit[b]`` for t in [0, n), ``n`` a 1-element tensor: ``[B, n]`` bool."""
    n0 = gb.op1("Squeeze", [n, gb.const("mask_axis0", [0])], "mask_len")
    t = gb.op1("Range", [gb.const("mask_start", np.int64(0)), n0, gb.const("mask_step", np.int64(1))], "positions")
    lim = gb.op1("Unsqueeze", [limit, gb.const("mask_axis1", [1])], "limit_col")
    return gb.op1("Less", [t, lim], "valid")
