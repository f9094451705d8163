"""A small ONNX graph builder: hierarchical names, named initializers, a visible build order.

Graphs are built in the order onnx/onnx's own examples use: inputs and outputs, then nodes, then
``make_graph`` -> ``make_model`` (opset pinned) -> ``check_model(full_check=True)``.

Every node gets a hierarchical name from the scope stack (``layer0/gate_iof``, ``layer0/step/c_new``), and
its first output tensor is named after the node, so a profile, a Netron view or an error message points
straight at the equation. One :class:`Names` registry is shared by a graph and all its subgraphs (Scan
bodies), so node and tensor names are unique across the whole model (quantizers and fp16 converters add
nodes named after existing ones and rely on that).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: The pinned operator set: opset 21 (onnx >= 1.15) is fully supported by onnxruntime >= 1.17, its
#: quantization tools, and ``onnx.reference``.
OPSET = 21
#: IR version 10 goes with opset 21.
IR_VERSION = 10

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
Dim = int | str


class Names:
    """Registry of every node and tensor name in a model (outer graph and subgraphs together)."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def claim(self, name: str) -> str:
        """Reserve ``name``; a second claim of the same name is a builder bug and raises ValueError."""
        if name in self.taken:
            raise ValueError(f"duplicate ONNX name {name!r}")
        self.taken.add(name)
        return name


class GraphBuilder:
    """Collects inputs, outputs, initializers and nodes of one graph under a stack of name scopes."""

    def __init__(self, name: str, names: Names | None = None, scope: Sequence[str] = ()) -> None:
        self.name = name
        self.names = names if names is not None else Names()
        self._scope: list[str] = list(scope)
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []

    # --- names ---------------------------------------------------------------------------------------
    @contextmanager
    def scope(self, part: str) -> Iterator[None]:
        """Prefix every name made inside the ``with`` block by ``part/``."""
        self._scope.append(part)
        try:
            yield
        finally:
            self._scope.pop()

    def path(self, leaf: str) -> str:
        """``leaf`` under the current scope, e.g. ``layer0/step/c_new``."""
        return "/".join([*self._scope, leaf])

    def sub(self, name: str) -> GraphBuilder:
        """A builder for a subgraph (a Scan body) sharing this model's name registry and scope."""
        return GraphBuilder(name, self.names, self._scope)

    # --- graph interface ----------------------------------------------------------------------------
    def input(self, name: str, elem_type: int, shape: Sequence[Dim]) -> str:
        self.inputs.append(helper.make_tensor_value_info(self.names.claim(name), elem_type, list(shape)))
        return name

    def output(self, name: str, elem_type: int, shape: Sequence[Dim]) -> str:
        """Declare ``name`` (an existing tensor, produced by a node or passed through) a graph output."""
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def const(self, leaf: str, value: Any, dtype: Any = None) -> str:
        """A named initializer under the current scope; returns its name."""
        arr = np.asarray(value, dtype=dtype)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self.names.claim(self.path(leaf))
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        leaf: str,
        outs: Sequence[str] | None = None,
        **attrs: Any,
    ) -> list[str]:
        """Add one node named ``scope/leaf``; returns its output tensor names.

        A single output is named like the node; ``outs`` names several outputs by their leaves under the
        current scope (``Split`` into ``layer0/step/i``, ``layer0/step/o``, ...).
        """
        name = self.names.claim(self.path(leaf))
        out_names = [name] if outs is None else [self.names.claim(self.path(o)) for o in outs]
        self.nodes.append(helper.make_node(op_type, list(inputs), out_names, name=name, **attrs))
        return out_names

    def op1(self, op_type: str, inputs: Sequence[str], leaf: str, **attrs: Any) -> str:
        """:meth:`op` for the common single-output case."""
        return self.op(op_type, inputs, leaf, **attrs)[0]

    def op_to(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], leaf: str, **attrs: Any) -> None:
        """Add one node whose outputs have given names (graph outputs such as ``h0_out``)."""
        name = self.names.claim(self.path(leaf))
        for o in outputs:
            self.names.claim(o)
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name, **attrs))

    def graph(self) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, initializer=self.initializers)


def make_model(graph: onnx.GraphProto, metadata: dict[str, str], doc: str = "") -> onnx.ModelProto:
    """Wrap ``graph`` into a model with the pinned opset and ``metadata_props``; checked with full_check."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="seqpred",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    set_metadata(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace ``model.metadata_props`` by ``metadata`` (sorted by key, values as strings)."""
    del model.metadata_props[:]
    for k in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, str(metadata[k])


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs (Scan/Loop/If bodies), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from all_nodes(g)


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph below it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from all_graphs(g)
