"""``step.onnx``: one time step of the whole network (input term, every layer, head).

For token models::

    ax_g    = table_g[tokens]                      layer 0: the folded embedding (one Gather per group)
    ax_g    = h_{l-1}' WT_g + b_g                  layers l > 0
    h_l', c_l' = cell step (model.export.cells)           depth-gated: layer l's step also reads c_{l-1}'
    logprobs = log_softmax(h_{L-1}' head_WT + head_b)          [B, V]

Numeric models read ``inputs [B, X]`` (layer 0 uses ``WT``/``b`` like deeper layers) and emit the linear
head ``output [B, O]``. See :mod:`model.export.signature` for names and shapes.
"""

from __future__ import annotations

import onnx

from model.config import ModelConfig
from model.export.builder import FLOAT, INT64, GraphBuilder, make_model
from model.export.cells import (
    LayerNames,
    emit_step,
    input_terms_from_rows,
    input_terms_from_tokens,
    product,
    register_layer,
)
from model.export.signature import BATCH, output_width, state_tensors
from model.export.weights import F32, LayerWeights


def register_head(gb: GraphBuilder, params: dict[str, F32]) -> tuple[str, str]:
    """``head/WT [H, V]`` and ``head/b [V]`` initializers."""
    with gb.scope("head"):
        return gb.const("WT", params["head/W"].T), gb.const("b", params["head/b"])


def build_step(
    cfg: ModelConfig,
    layers: list[LayerWeights],
    params: dict[str, F32],
    metadata: dict[str, str],
    gemm: bool = True,
) -> onnx.ModelProto:
    """The step graph of ``cfg`` with weights ``layers`` (from :func:`weights.prepare`) and the head."""
    gb = GraphBuilder("seqpred_step")
    token = cfg.token_input
    x = gb.input("tokens", INT64, [BATCH]) if token else gb.input("inputs", FLOAT, [BATCH, cfg.input_dim])
    states = state_tensors(cfg)
    for s in states:
        gb.input(s.name, FLOAT, [BATCH, s.width])
    names: list[LayerNames] = [register_layer(gb, lw, l) for l, lw in enumerate(layers)]
    head_WT, head_b = register_head(gb, params)

    h = x
    low: str | None = None  # depth-gated: the layer below's new cell c{l-1}_out (None at layer 0)
    for l in range(cfg.layers):
        with gb.scope(f"layer{l}"):
            if l == 0 and cfg.token_input:
                ax = input_terms_from_tokens(gb, cfg.cell, names[l], x)
            else:
                ax = input_terms_from_rows(gb, cfg.cell, names[l], h, gemm)
            c = f"c{l}" if cfg.has_c else None
            h, c_new = emit_step(
                gb,
                cfg.cell,
                names[l],
                ax,
                f"h{l}",
                c,
                out_h=f"h{l}_out",
                out_c=f"c{l}_out" if cfg.has_c else None,
                gemm=gemm,
                low=low,
            )
            low = c_new if cfg.cell == "depth-gated" else None
    with gb.scope("head"):
        out = product(gb, h, head_WT, head_b, "logits" if cfg.token_input else "linear", gemm)
        if cfg.token_input:
            gb.op_to("LogSoftmax", [out], ["logprobs"], "log_softmax", axis=-1)
        else:
            gb.op_to("Identity", [out], ["output"], "output")
    gb.output("logprobs" if cfg.token_input else "output", FLOAT, [BATCH, output_width(cfg)])
    for s in states:
        gb.output(s.out_name, FLOAT, [BATCH, s.width])
    return make_model(gb.graph(), {**metadata, "graph": "step"}, doc="seqpred: one time step")
