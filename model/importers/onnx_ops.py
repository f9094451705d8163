"""One ONNX ``LSTM``, ``GRU`` or ``RNN`` node read into a :class:`~model.importers.spec.RecurrentLayer`.

The operators' inputs are ``X, W, R, B, sequence_lens, initial_h, initial_c, P`` (``initial_c`` and ``P``:
LSTM only) with a leading ``num_directions`` axis on ``W [D, G*H, X]``, ``R [D, G*H, H]``, ``B [D, 2*G*H]``
(``[Wb, Rb]``) and ``P [D, 3H]``; gate orders LSTM i, o, f, c, GRU z, r, h, which this project uses too, so
nothing is permuted. What this project has a cell for is mapped; the rest is refused on one line naming the
node and the attribute or input:

* ``direction`` other than ``forward`` (a reverse or bidirectional layer needs the whole sequence at once,
  which a streaming step cannot have);
* ``activations`` other than the defaults (LSTM Sigmoid, Tanh, Tanh; GRU Sigmoid, Tanh; RNN Tanh);
* ``clip`` (cell clipping), LSTM ``input_forget=1``;
* a ``sequence_lens`` input (it changes which steps count; seqpred scores right-padded batches its own way).

``layout`` (0: time-major, 1: batch-major) is the chain walker's business (:mod:`model.importers.onnx_chain`).
"""

from __future__ import annotations

import onnx

from model.errors import ConfigError
from model.importers.onnx_graph import Graph, attrs, node_label
from model.importers.spec import RecurrentLayer, f64

#: Gate blocks per operator and the default activations of one direction.
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
#: Input positions of the optional inputs.
SEQUENCE_LENS, INITIAL_H, INITIAL_C, PEEPHOLES = 4, 5, 6, 7


def has_input(node: onnx.NodeProto, index: int) -> bool:
    return index < len(node.input) and bool(node.input[index])


def read_recurrent(g: Graph, node: onnx.NodeProto) -> RecurrentLayer:
    """The layer ``node`` computes, its weights as float64 in ONNX layout; refusals as described above."""
    op, label, a = node.op_type, node_label(node), attrs(node)
    direction = a.get("direction", "forward")
    if direction != "forward":
        raise ConfigError(
            f"{label}: attribute direction is {direction!r}; seqpred streams one step at a time and imports "
            "forward layers only"
        )
    acts = a.get("activations")
    if acts is not None and list(acts) != DEFAULT_ACTIVATIONS[op]:
        raise ConfigError(
            f"{label}: attribute activations is {list(acts)!r}; seqpred has a cell for the defaults "
            f"{DEFAULT_ACTIVATIONS[op]!r} only"
        )
    if "clip" in a:
        raise ConfigError(f"{label}: attribute clip is {a['clip']!r}; seqpred's cells do not clip")
    if op == "LSTM" and a.get("input_forget", 0):
        raise ConfigError(
            f"{label}: attribute input_forget is {a['input_forget']!r}; seqpred imports LSTMs with separate "
            "input and forget gates only"
        )
    if has_input(node, SEQUENCE_LENS):
        raise ConfigError(
            f"{label}: input sequence_lens ({node.input[SEQUENCE_LENS]!r}) is set; seqpred imports recurrences "
            "that run every step of their input (it pads and scores batches itself)"
        )
    G = GATES[op]
    W = g.need_const(node, 1, "W")
    R = g.need_const(node, 2, "R")
    if W.ndim != 3 or R.ndim != 3 or W.shape[0] != 1 or R.shape[0] != 1:
        raise ConfigError(f"{label}: inputs W {list(W.shape)} and R {list(R.shape)} must be [1, G*H, X], [1, G*H, H]")
    H = R.shape[2]
    if "hidden_size" in a and a["hidden_size"] != H:
        raise ConfigError(f"{label}: attribute hidden_size is {a['hidden_size']}, but R is {list(R.shape)}")
    if W.shape[1] != G * H or R.shape[1] != G * H:
        raise ConfigError(f"{label}: inputs W {list(W.shape)} and R {list(R.shape)} need {G}*H = {G * H} rows")
    B = f64(g.need_const(node, 3, "B")) if has_input(node, 3) else None
    if B is not None and B.shape != (1, 2 * G * H):
        raise ConfigError(f"{label}: input B has shape {list(B.shape)}, expected [1, {2 * G * H}]")
    P = None
    if op == "LSTM" and has_input(node, PEEPHOLES):
        P = f64(g.need_const(node, PEEPHOLES, "P"))
        if P.shape != (1, 3 * H):
            raise ConfigError(f"{label}: input P has shape {list(P.shape)}, expected [1, {3 * H}]")
        P = P[0]
    Wb = B[0, : G * H] if B is not None else f64([0.0] * (G * H))
    Rb = B[0, G * H :] if B is not None else f64([0.0] * (G * H))
    return RecurrentLayer(
        op=op,
        source=label,
        W=f64(W[0]),
        R=f64(R[0]),
        Wb=f64(Wb),
        Rb=f64(Rb),
        P=P,
        linear_before_reset=bool(a.get("linear_before_reset", 0)) if op == "GRU" else False,
    )
