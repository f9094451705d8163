"""Read an ONNX file whose recurrence is the built-in ``LSTM``/``GRU``/``RNN`` operator into an
:class:`~model.importers.spec.ImportedNet`.

The *mapped path* runs from one graph input to the one served graph output, following each node's data
input back from the output::

    ids ─ Gather(table) ─┐                              (token models; or real-valued inputs)
                         ├─ [MatMul (+Add)] ─ LSTM/GRU/RNN ─ ... ─ LSTM/GRU/RNN ─ MatMul+Add | Gemm
                                                                         ─ [LogSoftmax | Softmax]
    layout ops anywhere: Transpose, Squeeze, Unsqueeze, Reshape (constant shape), Identity, Dropout, Cast

Affine ops (``MatMul`` by a constant, ``Add`` of a constant, ``Gemm``) compose: before layer 0 they fold
into the embedding table (token models) or layer 0's input weights; between layers into the next layer's
input weights; after the last layer they are the head. Which input axis is time and which is batch is read
from the first recurrent node (:mod:`model.importers.onnx_axes`).

Off the path, only *state plumbing* is allowed: ops that slice graph inputs into ``initial_h``/``initial_c``
or gather ``Y_h``/``Y_c`` into graph outputs, and the ``Shape``-based zeros exporters write for a missing
state. The initial state must be a graph input (seqpred keeps it per session, starting from zeros) or zero.
Weights may be constants computed from constants (exporters leave large ones as ``Slice``/``Concat`` of the
parameters): :meth:`~model.importers.onnx_graph.Graph.const` evaluates them. Anything else is refused with one
line naming the node and what is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from model.errors import ConfigError
from model.importers import onnx_axes as axes
from model.importers.onnx_axes import UNIT, Ax, describe, feature
from model.importers.onnx_graph import Graph, attrs, node_label, read_model
from model.importers.onnx_ops import INITIAL_C, INITIAL_H, has_input, read_recurrent
from model.importers.onnx_path import AFFINE_OPS, LAYOUT_OPS, chain_of, check_off_path, served_output
from model.importers.spec import F64, RECURRENT_OPS, ImportedNet, RecurrentLayer, f64, fold_affine

Affine = tuple[F64 | None, F64]  # (M [F_in, F_out] or None for the identity, c [F_out])


def read_onnx(path: Path) -> tuple[ImportedNet, str]:
    """The network in the ONNX file ``path`` and the file's sha256; refusals as one-line ConfigErrors."""
    model, digest = read_model(path)
    g = Graph(model)
    if not any(n.op_type in RECURRENT_OPS for n in g.nodes):
        raise ConfigError(f"model: {str(path)!r} has no LSTM, GRU or RNN node; seqpred imports those operators")
    main = served_output(g)
    chain, start = chain_of(g, main)
    net = _Walker(g, start).run(chain)
    check_off_path(g, chain, start, main)
    net.record["output"]["name"] = main
    return net, digest


class _Walker:
    """Follows the mapped path forward, carrying axis meanings and the pending affine map."""

    def __init__(self, g: Graph, start: str) -> None:
        self.g = g
        vi = next(v for v in g.inputs if v.name == start)
        self.elem = vi.type.tensor_type.elem_type
        dims = [d.dim_value or None for d in vi.type.tensor_type.shape.dim]
        self.tags = [Ax(f"in{k}", d) for k, d in enumerate(dims)]
        self.token = self.elem in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        if not self.token:
            if self.elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
                raise ConfigError(
                    f"model: input {start!r} has element type {onnx.TensorProto.DataType.Name(self.elem)}"
                )
            if not self.tags:
                raise ConfigError(f"model: input {start!r} is a scalar; seqpred needs [time, batch, features]")
            self.tags[-1] = Ax("F", dims[-1])
        self.in_tags = list(self.tags)
        self.names: dict[str, str] = {}  # in0/in1 -> time/batch
        self.pending: Affine | None = None
        self.embed: F64 | None = None
        self.input_dim = 0
        self.layers: list[RecurrentLayer] = []
        self.final = "logits" if self.token else "linear"
        self.finished: onnx.NodeProto | None = None  # the LogSoftmax/Softmax, once seen
        self.record: dict[str, Any] = {"input": {"name": start}, "layers": [], "affine": [], "states": {}}

    def run(self, chain: list[onnx.NodeProto]) -> ImportedNet:
        for node in chain:
            self.step(node)
        last = chain[-1]
        if not self.layers:  # pragma: no cover - _served_output guarantees a recurrent node on the path
            raise ConfigError("model: no recurrent node on the path from input to output")
        M, c = self.pending if self.pending is not None else (None, None)
        if M is None or c is None:
            raise ConfigError(
                f"{self.layers[-1].source}: no linear head (Gemm, or MatMul and Add) after the last recurrent node"
            )
        top = [t for t in self.tags if not t.unit and t.name != "F"]
        if not any(t.name == "F" for t in self.tags) or not top:  # pragma: no cover - guarded by the ops
            raise ConfigError(f"{node_label(last)}: the served output lost its time and batch axes")
        self.record["input"]["axes"] = describe(self.in_tags, self.names)
        self.record["output"] = {"axes": describe(self.tags, self.names), "after_head": self.final}
        return ImportedNet(
            layers=self.layers,
            head_W=f64(M.T),
            head_b=f64(c),
            embed=self.embed,
            input_dim=self.input_dim,
            output=self.final,
            record=self.record,
        )

    def step(self, node: onnx.NodeProto) -> None:
        op, label, g = node.op_type, node_label(node), self.g
        if self.finished is not None and op not in LAYOUT_OPS:
            raise ConfigError(f"{label}: follows {node_label(self.finished)}; seqpred maps nothing after it")
        if op == "Gather":
            self._gather(node)
        elif op in ("Identity", "Dropout"):
            if op == "Dropout" and len(node.input) > 2 and node.input[2]:
                mode = g.need_const(node, 2, "training_mode")
                if bool(np.asarray(mode).reshape(-1)[0]):
                    raise ConfigError(f"{label}: input training_mode is true; seqpred imports inference graphs")
        elif op == "Cast":
            to = attrs(node).get("to")
            ids = self.token and self.embed is None  # before the embedding: token ids, cast between int types
            if to not in ((onnx.TensorProto.INT32, onnx.TensorProto.INT64) if ids else (onnx.TensorProto.FLOAT,)):
                raise ConfigError(f"{label}: attribute to is {to!r}; seqpred computes in float32 on int64 ids")
        elif op == "Transpose":
            self.tags = axes.transpose(node, self.tags)
        elif op == "Squeeze":
            self.tags = axes.squeeze(g, node, self.tags)
        elif op == "Unsqueeze":
            self.tags = axes.unsqueeze(g, node, self.tags)
        elif op == "Reshape":
            self.tags = axes.reshape(g, node, self.tags)
        elif op in AFFINE_OPS:
            self._affine(node)
        elif op in RECURRENT_OPS:
            self._recurrent(node)
        else:  # LogSoftmax, Softmax
            self._softmax(node)

    def _features(self, node: onnx.NodeProto) -> Ax:
        if not self.tags or self.tags[-1].name != "F":
            raise ConfigError(
                f"{node_label(node)}: acts on axis {describe(self.tags[-1:], self.names)} of "
                f"{describe(self.tags, self.names)}; seqpred maps ops on the feature (last) axis"
            )
        return self.tags[-1]

    def _gather(self, node: onnx.NodeProto) -> None:
        label = node_label(node)
        if not self.token or self.embed is not None:
            raise ConfigError(f"{label}: seqpred maps a Gather only as the embedding of the token input")
        if attrs(node).get("axis", 0) != 0:
            raise ConfigError(f"{label}: attribute axis is {attrs(node)['axis']}; an embedding gathers rows (0)")
        table = self.g.need_const(node, 0, "data (the embedding table)")
        if table.ndim != 2:
            raise ConfigError(f"{label}: input data has shape {list(table.shape)}; an embedding table is [V, E]")
        self.embed = f64(table)
        self.tags = [*self.tags, feature(table.shape[1])]
        self.record["embedding"] = node.name or node.output[0]

    def _affine(self, node: onnx.NodeProto) -> None:
        op, label, g = node.op_type, node_label(node), self.g
        if self.token and self.embed is None:
            raise ConfigError(f"{label}: reads token ids; seqpred maps an embedding (Gather) first")
        F = self._features(node)
        M: F64 | None = None
        c: F64
        if op == "MatMul":
            B = g.need_const(node, 1, "B")
            if B.ndim != 2 or (F.size is not None and B.shape[0] != F.size):
                raise ConfigError(f"{label}: input B has shape {list(B.shape)}; expected [{F.size}, N]")
            M, c = f64(B), np.zeros(B.shape[1])
        elif op == "Add":
            k = 1 if g.const(node.input[1]) is not None else 0
            c = self._bias(node, g.need_const(node, k, "B" if k else "A"), F)
        else:
            M, c = self._gemm(node, F)
        self.pending = _compose(self.pending, (M, c), F.size if F.size is not None else c.shape[0])
        width = c.shape[0] if M is None else M.shape[1]
        self.tags[-1] = feature(width)
        self.record["affine"].append(node.name or node.output[0])

    def _bias(self, node: onnx.NodeProto, value: np.ndarray, F: Ax) -> F64:
        arr = np.asarray(value)
        if arr.ndim > len(self.tags) or any(d != 1 for d in arr.shape[:-1]):
            raise ConfigError(
                f"{node_label(node)}: adds a constant of shape {list(arr.shape)}; seqpred maps a bias [N]"
            )
        width = F.size if F.size is not None else (arr.shape[-1] if arr.ndim else 1)
        flat = arr.reshape(-1)
        if flat.size not in (1, width):
            raise ConfigError(f"{node_label(node)}: adds a constant of shape {list(arr.shape)} to {width} features")
        return f64(np.broadcast_to(flat, (width,)))

    def _gemm(self, node: onnx.NodeProto, F: Ax) -> tuple[F64, F64]:
        label, a = node_label(node), attrs(node)
        if len(self.tags) != 2:
            raise ConfigError(f"{label}: input A has axes {describe(self.tags, self.names)}; Gemm needs [N, features]")
        if a.get("transA", 0):
            raise ConfigError(f"{label}: attribute transA is 1; seqpred maps x·B + C heads")
        B = f64(self.g.need_const(node, 1, "B"))
        B = B.T if a.get("transB", 0) else B
        if B.ndim != 2 or (F.size is not None and B.shape[0] != F.size):
            raise ConfigError(f"{label}: input B has shape {list(B.shape)} for {F.size} features")
        M = B * float(a.get("alpha", 1.0))
        c = np.zeros(B.shape[1])
        if len(node.input) > 2 and node.input[2]:
            C = self.g.need_const(node, 2, "C")
            c = self._bias(node, np.asarray(C), feature(B.shape[1])) * float(a.get("beta", 1.0))
        return M, c

    def _recurrent(self, node: onnx.NodeProto) -> None:
        label = node_label(node)
        layer = read_recurrent(self.g, node)
        layout = attrs(node).get("layout", 0)
        if len(self.tags) != 3:
            raise ConfigError(f"{label}: input X has axes {describe(self.tags, self.names)}; expected 3")
        t_ax, b_ax, f_ax = (self.tags[1], self.tags[0], self.tags[2]) if layout else tuple(self.tags)
        if f_ax.name != "F" or t_ax.name not in ("in0", "in1") or b_ax.name not in ("in0", "in1"):
            raise ConfigError(
                f"{label}: input X has axes {describe(self.tags, self.names)}; with layout={layout} it must be "
                + ("[batch, time, features]" if layout else "[time, batch, features]")
            )
        if not self.names:
            self.names = {t_ax.name: "time", b_ax.name: "batch"}
        elif self.names.get(t_ax.name) != "time":
            raise ConfigError(f"{label}: input X swaps the time and batch axes of the layers below")
        if self.token and self.embed is None:
            raise ConfigError(f"{label}: reads token ids; seqpred maps an embedding (Gather) first")
        if f_ax.size is not None and f_ax.size != layer.W.shape[1]:
            raise ConfigError(f"{label}: input W reads {layer.W.shape[1]} features, its input X has {f_ax.size}")
        first = not self.layers
        if self.pending is not None:
            M, c = self.pending
            if first and self.embed is None:
                self.input_dim = layer.W.shape[1] if M is None else M.shape[0]
            M = np.eye(c.shape[0]) if M is None else M
            if first and self.embed is not None:
                self.embed = f64(self.embed @ M + c)
            else:
                fold_affine(layer, M, c)
            self.pending = None
        elif first and self.embed is None:
            self.input_dim = layer.W.shape[1]
        self.layers.append(layer)
        l = len(self.layers) - 1
        self.record["layers"].append({"node": node.name or node.output[0], "op": node.op_type, "layout": layout})
        for index, kind in ((INITIAL_H, "h"), (INITIAL_C, "c")):
            if has_input(node, index):
                self.record["states"][f"{kind}{l}"] = self._state_source(node, index, kind)
        H = layer.hidden
        self.tags = [b_ax, t_ax, UNIT, feature(H)] if layout else [t_ax, UNIT, b_ax, feature(H)]

    def _state_source(self, node: onnx.NodeProto, index: int, kind: str) -> str:
        """``"zeros"`` or the graph input(s) the initial state is sliced from; anything else is refused."""
        label, what = node_label(node), f"initial_{kind}"
        inputs, arrays, producers = self.g.value_sources(node.input[index])
        if producers:
            p, _ = producers[0]
            raise ConfigError(
                f"{label}: input {what} is computed by {node_label(p)}; seqpred starts each session from zeros "
                "(or the state it carries) and maps initial states that come from graph inputs"
            )
        start = self.record["input"]["name"]
        if start in inputs:
            raise ConfigError(f"{label}: input {what} is computed from the model input {start!r}")
        if inputs:
            return ", ".join(sorted(inputs))
        if any(np.any(np.asarray(a) != 0) for a in arrays if np.asarray(a).dtype.kind == "f"):
            raise ConfigError(f"{label}: input {what} is a non-zero constant; seqpred starts each session from zeros")
        return "zeros"

    def _softmax(self, node: onnx.NodeProto) -> None:
        label = node_label(node)
        if not self.layers or self.pending is None:
            raise ConfigError(f"{label}: seqpred maps {node.op_type} only after the head")
        if not self.token:
            raise ConfigError(
                f"{label}: a model with real-valued inputs gets a linear head in seqpred; {node.op_type} is "
                "mapped for token models (Gather input) only"
            )
        rank = len(self.tags)
        axis = attrs(node).get("axis", -1 if self.g.opset >= 13 else 1) % rank
        if self.tags[axis].name != "F" or (self.g.opset < 13 and axis != rank - 1):
            raise ConfigError(f"{label}: attribute axis is {attrs(node).get('axis')}; it must be the feature axis")
        self.final = "log_softmax" if node.op_type == "LogSoftmax" else "softmax"
        self.finished = node


def _compose(first: Affine | None, then: Affine, width: int) -> Affine:
    """``x -> (x M1 + c1) M2 + c2`` as one ``(M, c)`` (None stands for the identity)."""
    if first is None:
        return then
    M1, c1 = first
    M2, c2 = then
    if M2 is None:
        return M1, c1 + c2
    return (M2 if M1 is None else M1 @ M2), c1 @ M2 + c2
