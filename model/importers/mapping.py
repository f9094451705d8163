"""An :class:`~model.importers.spec.ImportedNet` becomes this project's config and parameters.

The cell (one for every layer, as :class:`~model.config.ModelConfig` has one ``cell``)::

    LSTM without peepholes (or all-zero P)   lstm       b = Wb + Rb
    LSTM with P                              peephole   b = Wb + Rb, P as is (ONNX order i, o, f; a layer
                                                        without P gets zeros)
    GRU, linear_before_reset = 0             gru        b = Wb + Rb   (exact: Rb_h is added outside r∘(R_h h),
                                                        h~ = tanh(W_h x + R_h (r∘h) + Wb_h + Rb_h))
    GRU, linear_before_reset = 1             gru-lbr    b = Wb + [Rb_z, Rb_r, 0], Rb = Rb_h (it sits inside
                                                        r∘(R_h h + Rb_h), so it stays a separate parameter)
    RNN (Tanh)                               rnn        b = Wb + Rb

Token models (an embedding) get ``head = "softmax"``: the exported graphs emit log-probabilities, which is
the source's LogSoftmax, the log of its Softmax, or the log-softmax of its logits. Real-valued inputs get
``head = "mse"`` (a linear output, as the source's). All layers need the same hidden size, and a token
model's head predicts the vocabulary it reads (``V`` rows in the embedding, ``V`` outputs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.config import ModelConfig
from model.errors import ConfigError
from model.importers.spec import ImportedNet, RecurrentLayer


def cell_of(net: ImportedNet) -> str:
    """The one cell of every layer (see the module docstring); mixed layers are refused naming one."""
    first = net.layers[0]
    for l, layer in enumerate(net.layers[1:], start=1):
        if layer.op != first.op:
            raise ConfigError(
                f"{layer.source}: layer {l} is {layer.op}, layer 0 is {first.op}; seqpred uses one cell for all layers"
            )
        if layer.linear_before_reset != first.linear_before_reset:
            raise ConfigError(
                f"{layer.source}: attribute linear_before_reset is {int(layer.linear_before_reset)}, the layer "
                f"below has {int(first.linear_before_reset)}; seqpred uses one GRU form for all layers"
            )
    if first.op == "LSTM":
        peep = any(layer.P is not None and np.any(layer.P != 0) for layer in net.layers)
        return "peephole" if peep else "lstm"
    if first.op == "GRU":
        return "gru-lbr" if first.linear_before_reset else "gru"
    return "rnn"


def to_model(net: ImportedNet) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, Any]]:
    """``(config, params, mapping)``: params named as :func:`model.network.param_shapes`, float64; ``mapping``
    says in words what became what (recorded in ``model.json``)."""
    cell = cell_of(net)
    H = net.layers[0].hidden
    for layer in net.layers[1:]:
        if layer.hidden != H:
            raise ConfigError(
                f"{layer.source}: attribute hidden_size is {layer.hidden}, the layer below has {H}; seqpred uses "
                "one hidden size for all layers"
            )
    O = net.head_W.shape[0]
    if net.head_W.shape[1] != H:
        raise ConfigError(f"head: reads {net.head_W.shape[1]} features, the top layer has {H}")
    params: dict[str, np.ndarray] = {}
    if net.embed is not None:
        V, E = net.embed.shape
        if O != V:
            raise ConfigError(
                f"head: predicts {O} classes but the embedding has {V} rows; a seqpred token model predicts the "
                "vocabulary it reads"
            )
        cfg = ModelConfig(cell=cell, layers=len(net.layers), hidden=H, vocab_size=V, embed=E)
        params["embed"] = net.embed
    else:
        cfg = ModelConfig(
            cell=cell, layers=len(net.layers), hidden=H, input_dim=net.input_dim, output_dim=O, head="mse"
        )
    for l, layer in enumerate(net.layers):
        for k, v in layer_params(cell, layer).items():
            params[f"layer{l}/{k}"] = v
    params["head/W"] = net.head_W
    params["head/b"] = net.head_b
    mapping = {
        "cell": cell,
        "bias": _BIAS[cell],
        "head": "softmax (log-probabilities)" if cfg.token_input else "linear",
        "source_output": net.output,
    }
    return cfg, params, mapping


_BIAS = {
    "lstm": "b = Wb + Rb",
    "peephole": "b = Wb + Rb; P in ONNX order i, o, f",
    "gru": "b = Wb + Rb (linear_before_reset=0)",
    "gru-lbr": "b = Wb + [Rb_z, Rb_r, 0]; Rb = Rb_h (linear_before_reset=1)",
    "rnn": "b = Wb + Rb",
}


def layer_params(cell: str, layer: RecurrentLayer) -> dict[str, np.ndarray]:
    """One layer's ``W``, ``R``, ``b`` (and ``P``, ``Rb``) for ``cell``."""
    H = layer.hidden
    p = {"W": layer.W, "R": layer.R, "b": layer.Wb + layer.Rb}
    if cell == "peephole":
        p["P"] = layer.P if layer.P is not None else np.zeros(3 * H)
    if cell == "gru-lbr":
        p["b"] = layer.Wb + np.concatenate([layer.Rb[: 2 * H], np.zeros(H)])
        p["Rb"] = layer.Rb[2 * H :]
    return p
