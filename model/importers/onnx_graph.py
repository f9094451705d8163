"""Reading a source ONNX file: loading and checking it, constants, producers and consumers, attributes.

Nothing here knows about recurrent networks; :mod:`model.importers.onnx_chain` walks the graph with these
helpers. Every refusal is a :class:`~model.errors.ConfigError` with one line naming the file, or the node
(``node 'NAME' (OpType)``) and the attribute or input at fault.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from model.errors import ConfigError

#: Inputs of a node that carry values (the others carry shapes, indices or axes), by op type; an op not
#: listed carries values in every input.
VALUE_INPUTS: dict[str, tuple[int, ...]] = {
    "Shape": (),
    "Size": (),
    "ConstantOfShape": (),
    "Constant": (),
    "Expand": (0,),
    "Reshape": (0,),
    "Slice": (0,),
    "Gather": (0,),
    "Squeeze": (0,),
    "Unsqueeze": (0,),
    "Tile": (0,),
    "Split": (0,),
}


def node_label(node: onnx.NodeProto) -> str:
    """``node 'NAME' (OpType)``; a node without a name is named by its first output."""
    name = node.name or (node.output[0] if node.output else "?")
    return f"node {name!r} ({node.op_type})"


def read_model(path: Path) -> tuple[onnx.ModelProto, str]:
    """The model in ``path`` (checked with ``onnx.checker``; external weights loaded from beside it) and the
    file's sha256; one-line errors."""
    if not path.is_file():
        raise ConfigError(f"model: {str(path)!r} does not exist or is not a file")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # DecodeError and friends: not a ModelProto
        raise ConfigError(f"model: {str(path)!r} is not an ONNX model ({type(e).__name__})") from None
    try:  # weights stored beside the file (torch.onnx.export writes NAME.onnx.data for large models)
        onnx.load_external_data_for_model(model, str(path.parent))
    except OSError as e:
        raise ConfigError(f"model: {str(path)!r}: its external weights are unreadable ({e})") from None
    if not model.graph.node:
        raise ConfigError(f"model: {str(path)!r} is not an ONNX model (its graph has no nodes)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        text = " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"model: {str(path)!r} fails onnx.checker: {text[:300]}") from None
    return model, hashlib.sha256(data).hexdigest()


class Graph:
    """Index of one ONNX graph: constants, who produces and who reads each tensor, the graph's interface."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.nodes = list(g.node)
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            if node.domain not in ("", "ai.onnx"):
                raise ConfigError(f"{node_label(node)}: operator domain {node.domain!r} is not the standard ONNX one")
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers.setdefault(i, []).append(node)
            if node.op_type == "Constant":
                self.consts[node.output[0]] = _constant_value(node)
        self.inputs = [v for v in g.input if v.name not in self.consts]
        self.input_names = {v.name for v in self.inputs}
        self.outputs = [v.name for v in g.output]
        self.opset_import = list(model.opset_import)
        self._constant: dict[str, bool] = {}
        self._folded: dict[str, np.ndarray | None] = {}

    def is_constant(self, name: str) -> bool:
        """True when tensor ``name`` depends on no graph input (and on no random op): its value is fixed."""
        if name in self.consts:
            return True
        if name not in self._constant:
            node = self.producer.get(name)
            ok = node is not None and not node.op_type.startswith(("Random", "Bernoulli", "Multinomial"))
            self._constant[name] = False  # a cycle (invalid graph) reads as computed
            self._constant[name] = ok and all(self.is_constant(i) for i in node.input if i)  # type: ignore[union-attr]
        return self._constant[name]

    def const(self, name: str) -> np.ndarray | None:
        """The value of tensor ``name`` if it is a constant, else None: an initializer, a ``Constant`` node's
        output, or computed from those alone (exporters leave weights as ``Slice``/``Concat``/``Unsqueeze`` of
        the parameters when they are too large to fold; evaluated here with ``onnx.reference``)."""
        if name in self.consts:
            return self.consts[name]
        if not name or not self.is_constant(name):
            return None
        if name not in self._folded:
            self._folded[name] = self._fold(name)
        return self._folded[name]

    def _fold(self, name: str) -> np.ndarray | None:
        from onnx.reference import ReferenceEvaluator

        order = {id(n): k for k, n in enumerate(self.nodes)}
        needed: dict[int, onnx.NodeProto] = {}
        todo = [name]
        while todo:
            t = todo.pop()
            node = self.producer.get(t)
            if t in self.consts or node is None or id(node) in needed:
                continue
            needed[id(node)] = node
            todo.extend(i for i in node.input if i)
        nodes = sorted(needed.values(), key=lambda n: order[id(n)])
        used = {i for n in nodes for i in n.input if i in self.consts}
        graph = onnx.helper.make_graph(
            nodes,
            "fold",
            [],
            [onnx.helper.make_empty_tensor_value_info(name)],
            initializer=[numpy_helper.from_array(np.asarray(self.consts[k]), k) for k in sorted(used)],
        )
        model = onnx.helper.make_model(graph, opset_imports=self.opset_import)
        try:
            values: Any = ReferenceEvaluator(model).run(None, {})
        except Exception:  # an op the reference evaluator lacks: treat the tensor as computed
            return None
        return np.asarray(values[0])

    def need_const(self, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
        """Input ``index`` of ``node`` as a constant; a computed (or missing) one is refused naming ``what``."""
        name = node.input[index] if index < len(node.input) else ""
        value = self.const(name) if name else None
        if value is None:
            state = "missing" if not name else f"computed at run time ({name!r})"
            raise ConfigError(f"{node_label(node)}: input {what} is {state}; seqpred needs it as a constant")
        return value

    def value_sources(self, name: str) -> tuple[set[str], list[np.ndarray], list[tuple[onnx.NodeProto, int]]]:
        """Where the *values* of tensor ``name`` come from, following only value-carrying inputs
        (:data:`VALUE_INPUTS`): ``(graph inputs, constant arrays, (node, output index) of every node outside
        :data:`VALUE_INPUTS`' pass-through ops that produced a value on the way)``."""
        inputs: set[str] = set()
        arrays: list[np.ndarray] = []
        producers: list[tuple[onnx.NodeProto, int]] = []
        seen: set[str] = set()
        todo = [name]
        while todo:
            t = todo.pop()
            if not t or t in seen:
                continue
            seen.add(t)
            if t in self.input_names:
                inputs.add(t)
                continue
            if t in self.consts:
                arrays.append(self.consts[t])
                continue
            node = self.producer.get(t)
            if node is None:
                continue
            if node.op_type == "ConstantOfShape":
                arrays.append(_constant_of_shape_value(node))
                continue
            if node.op_type not in PASS_THROUGH:
                producers.append((node, list(node.output).index(t)))
                continue
            picks = VALUE_INPUTS.get(node.op_type)
            todo.extend(node.input if picks is None else [node.input[i] for i in picks if i < len(node.input)])
        return inputs, arrays, producers


#: Ops that move or reshape values without computing new ones: :meth:`Graph.value_sources` looks through them.
PASS_THROUGH = frozenset(
    {
        "Identity",
        "Shape",
        "Size",
        "Expand",
        "Reshape",
        "Slice",
        "Gather",
        "Squeeze",
        "Unsqueeze",
        "Tile",
        "Split",
        "Concat",
        "Transpose",
        "Cast",
        "Constant",
    }
)


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (strings decoded)."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode() for x in v]
        out[a.name] = v
    return out


def int_list(values: Iterable[Any]) -> list[int]:
    return [int(v) for v in np.asarray(list(values)).reshape(-1)]


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    a = attrs(node)
    if "value" in a:
        return numpy_helper.to_array(a["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32)):
        if key in a:
            return np.asarray(a[key], dtype=dtype)
    for key in ("value_int", "value_ints"):
        if key in a:
            return np.asarray(a[key], dtype=np.int64)
    raise ConfigError(f"{node_label(node)}: attribute {', '.join(a) or '(none)'} is not a constant seqpred reads")


def _constant_of_shape_value(node: onnx.NodeProto) -> np.ndarray:
    a = attrs(node)
    return numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, dtype=np.float32)
