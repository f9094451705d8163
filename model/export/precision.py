"""Reduced-precision variants of an exported graph: fp16 and dynamic int8.

fp16 (:func:`to_fp16`): every float32 initializer becomes float16 and every float tensor inside the graph
(Scan bodies included) is computed in float16. The graph's inputs and outputs stay float32 (a ``Cast`` after
each float input and before each float output), and int64 tensors are untouched, so callers feed and read
exactly what they do for fp32. onnxruntime's CPU provider lacks float16 kernels for most of these ops and
wraps them in Casts back to float32 (``InsertCastTransformer``): on CPU fp16 halves the file, not the time;
it is meant for GPUs.

int8 (:func:`to_int8`): ``onnxruntime.quantization.quantize_dynamic`` on a graph built with ``MatMul`` + ``Add``
instead of ``Gemm`` (dynamic quantization handles MatMul only). ``EnableSubgraph`` makes it reach the MatMuls
inside the Scan bodies; weights become int8 with per-column (per-channel) scales, activations are quantized
per call to uint8 (``DynamicQuantizeLinear``). The folded embedding tables (Gather inputs) stay float32.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model.errors import ConfigError
from model.export.builder import all_graphs, set_metadata

FP16_MAX = float(np.finfo(np.float16).max)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 graph inputs and outputs (see the module docstring)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for graph in all_graphs(g):
        for i, init in enumerate(graph.initializer):
            if init.data_type == TensorProto.FLOAT:
                a = numpy_helper.to_array(init)
                if a.size and float(np.abs(a).max()) > FP16_MAX:
                    raise ConfigError(f"fp16: initializer {init.name!r} exceeds the float16 range ({FP16_MAX})")
                graph.initializer[i].CopyFrom(numpy_helper.from_array(a.astype(np.float16), init.name))
        values = list(graph.value_info)
        if graph is not g:  # subgraph interfaces are computed in float16 too
            values += list(graph.input) + list(graph.output)
        for v in values:
            if v.type.tensor_type.elem_type == TensorProto.FLOAT:
                v.type.tensor_type.elem_type = TensorProto.FLOAT16
    casts_in, renames = [], {}
    for v in g.input:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            renames[v.name] = f"{v.name}/fp16"
            casts_in.append(
                helper.make_node(
                    "Cast", [v.name], [renames[v.name]], name=f"fp16/cast_in/{v.name}", to=TensorProto.FLOAT16
                )
            )
    for graph in all_graphs(g):
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name in renames:
                    node.input[k] = renames[name]
    casts_out = []
    for v in g.output:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = f"{v.name}/fp16"
            for node in g.node:
                for k, name in enumerate(node.output):
                    if name == v.name:
                        node.output[k] = inner
            for graph in all_graphs(g):  # outputs that are also used inside (h0_out feeding the head)
                for node in graph.node:
                    for k, name in enumerate(node.input):
                        if name == v.name:
                            node.input[k] = inner
            casts_out.append(
                helper.make_node("Cast", [inner], [v.name], name=f"fp16/cast_out/{v.name}", to=TensorProto.FLOAT)
            )
    nodes = casts_in + list(g.node) + casts_out
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m, full_check=True)
    return m


def to_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8 quantization of every MatMul with a constant weight, Scan bodies included."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    metadata = {p.key: p.value for p in model.metadata_props}
    with tempfile.TemporaryDirectory(prefix="seqpred-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        with _quiet_root_logger():  # the quantizer warns about pre-processing we do not need
            quantize_dynamic(
                src,
                dst,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                extra_options={"EnableSubgraph": True},
            )
        q = onnx.load(dst)
    set_metadata(q, metadata)
    onnx.checker.check_model(q, full_check=True)
    return q


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def convert(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """``model`` in ``precision`` (``fp32`` returns it unchanged; int8 expects a MatMul-form graph)."""
    if precision == "fp32":
        return model
    if precision == "fp16":
        return to_fp16(model)
    if precision == "int8":
        return to_int8(model)
    raise ConfigError(f"precision: unknown precision {precision!r}; choose one of fp32, fp16, int8")
