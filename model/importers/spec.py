"""What an importer reads out of a foreign model, before it becomes this project's parameters.

Both readers (:mod:`model.importers.onnx_chain` for ONNX files, :mod:`model.importers.torch_state` for PyTorch
``state_dict`` files) produce an :class:`ImportedNet`: the recurrent layers in the ONNX operator layout (gate
orders LSTM i, o, f, c; GRU z, r, h; the two bias halves ``Wb`` and ``Rb`` kept apart, exactly as ONNX's
``B = [Wb, Rb]``), the input (an embedding table, or the width of real-valued inputs with an optional affine
projection), and the affine head. :mod:`model.importers.mapping` turns it into a :class:`~model.config.ModelConfig`
and the parameter dict of :mod:`model.network`. All arrays are float64, so folding (projections into weights,
bias halves into one) rounds once, when the float32 graphs are built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]

#: The recurrent operators an importer maps, by their ONNX name.
RECURRENT_OPS = ("LSTM", "GRU", "RNN")

#: What follows the affine head in the source model (``log_softmax`` and ``softmax`` only for token models).
OUTPUTS = ("logits", "log_softmax", "softmax", "linear")


@dataclass
class RecurrentLayer:
    """One recurrent layer in the ONNX operator layout (one direction, no leading direction axis).

    Attributes:
        op: ``"LSTM"``, ``"GRU"`` or ``"RNN"``.
        source: where it came from, for messages: ``node 'NAME' (LSTM)`` or ``keys 'rnn.*_l0'``.
        W: ``[G*H, X]`` input weights; R: ``[G*H, H]`` recurrent weights.
        Wb, Rb: ``[G*H]`` the input and recurrent bias halves (ONNX ``B = [Wb, Rb]``; PyTorch ``bias_ih``,
            ``bias_hh`` after the gate permutation).
        P: ``[3H]`` LSTM peepholes in ONNX order i, o, f, or None.
        linear_before_reset: GRU only: the reset gate scales ``R_h h + Rb_h`` (ONNX ``linear_before_reset=1``,
            PyTorch's form) instead of ``h`` before ``R_h``.
    """

    op: str
    source: str
    W: F64
    R: F64
    Wb: F64
    Rb: F64
    P: F64 | None = None
    linear_before_reset: bool = False

    @property
    def hidden(self) -> int:
        return int(self.R.shape[1])


@dataclass
class ImportedNet:
    """A whole imported network: input, recurrent layers (bottom first), head.

    Attributes:
        layers: the recurrent layers, bottom first.
        embed: ``[V, E]`` the embedding table of a token model (any projection after it already folded in), or
            None for a model with real-valued inputs.
        input_dim: X, the width of real-valued inputs (``embed is None``; a projection before layer 0 is
            already folded into its ``W`` and ``Wb``, see :func:`fold_affine`).
        head_W: ``[O, H]``, head_b: ``[O]``: the outputs are ``h head_W^T + head_b``.
        output: one of :data:`OUTPUTS`: what the source model applies after the head.
        record: what the reader found, for ``model.json``'s provenance (names of nodes, keys, state inputs).
    """

    layers: list[RecurrentLayer]
    head_W: F64
    head_b: F64
    embed: F64 | None = None
    input_dim: int = 0
    output: str = "logits"
    record: dict[str, Any] = field(default_factory=dict)


def f64(a: Any) -> F64:
    """``a`` as a contiguous float64 array."""
    return np.ascontiguousarray(a, dtype=np.float64)


def fold_affine(layer: RecurrentLayer, M: F64, c: F64) -> None:
    """Fold an affine map applied to the layer's input, ``x' = x M + c`` (``M [X, X']``), into the layer:
    ``W x' + Wb = (W M^T) x + (W c + Wb)``, so ``W <- W M^T`` ``[G*H, X]`` and ``Wb <- Wb + W c``."""
    layer.Wb = layer.Wb + layer.W @ c
    layer.W = np.ascontiguousarray(layer.W @ M.T)
