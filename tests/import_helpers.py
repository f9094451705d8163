"""Shared by the importer tests: source ONNX models built with ``onnx.helper`` on the built-in LSTM/GRU/RNN
operators (random weights), and a runner that feeds them chunk by chunk with the state carried by hand.

A source model reads ``x`` (token ids ``[B, T]``, or real-valued ``[B, T, X]``) and, per layer l, ``h{l}``
(and ``c{l}``) ``[1, B, H]``; it writes ``y`` and ``h{l}_n`` (``c{l}_n``). Inside it is time-major
(``Transpose`` to ``[T, B, .]``), as ``torch.onnx.export`` writes models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@dataclass
class Spec:
    """One source model to build (see :func:`build`)."""

    op: str = "LSTM"
    layers: int = 1
    H: int = 5
    V: int = 7  # vocabulary (token models) or output width (real-valued)
    E: int = 4  # embedding width, or real-valued input width X
    token: bool = True
    peephole: bool = False
    lbr: int | None = None  # GRU linear_before_reset (None: attribute absent)
    proj: bool = False  # a MatMul (+Add) projection before layer 0
    head: str = "matmul"  # "matmul" (MatMul + Add) or "gemm" (Reshape to 2-D, Gemm)
    final: str = ""  # "", "LogSoftmax" or "Softmax"
    attrs: dict[str, Any] = field(default_factory=dict)  # extra attributes on every recurrent node
    time_major: bool = False  # x is [T, B] ([T, B, X]) and y [T, B, V]: no transposes
    layout: int = 0  # 1: the recurrent nodes read [B, T, .] themselves (onnxruntime refuses it: onnx.reference)
    between: bool = False  # a MatMul + Add projection between stacked layers
    glue: bool = False  # Dropout, Cast, Unsqueeze + Squeeze after the input
    seed: int = 0

    @property
    def has_c(self) -> bool:
        return self.op == "LSTM"


def _w(rng: np.random.Generator, *shape: int, scale: float = 0.5) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def build(s: Spec, full_check: bool = True) -> onnx.ModelProto:
    """The source model of ``s`` (checked with shape inference unless ``full_check`` is false: the refusal tests
    write attributes whose shapes the weights do not follow)."""
    rng = np.random.default_rng(s.seed)
    G = GATES[s.op]
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    bt = ["T", "B"] if s.time_major else ["B", "T"]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.INT64, bt)
        if s.token
        else helper.make_tensor_value_info("x", TensorProto.FLOAT, [*bt, s.E])
    ]
    outputs = []
    if s.token:
        nodes.append(helper.make_node("Gather", [const("emb", _w(rng, s.V, s.E, scale=1.0)), "x"], ["e"], name="embed"))
        x = "e"
    else:
        x = "x"
    X = s.E
    if s.glue:
        ratio = const("drop_ratio", np.array(0.3, np.float32))
        nodes.append(helper.make_node("Dropout", [x, ratio], ["g1"], name="dropout"))
        nodes.append(helper.make_node("Cast", ["g1"], ["g2"], name="cast", to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Unsqueeze", ["g2", const("ax0", np.array([0]))], ["g3"], name="unsq"))
        nodes.append(helper.make_node("Squeeze", ["g3", "ax0"], ["g4"], name="sq"))
        x = "g4"
    if s.proj:
        P = 6
        nodes.append(helper.make_node("MatMul", [x, const("proj_W", _w(rng, X, P))], ["pm"], name="proj"))
        nodes.append(helper.make_node("Add", ["pm", const("proj_b", _w(rng, P))], ["pa"], name="proj_bias"))
        x, X = "pa", P
    if not s.time_major and not s.layout:
        nodes.append(helper.make_node("Transpose", [x], ["xt"], name="to_time_major", perm=[1, 0, 2]))
        x = "xt"
    state_shape: list[Any] = ["B", 1, s.H] if s.layout else [1, "B", s.H]
    for l in range(s.layers):
        if s.between and l > 0:
            nodes.append(helper.make_node("MatMul", [x, const(f"mid_W{l}", _w(rng, X, 4))], [f"mm{l}"], name=f"mid{l}"))
            nodes.append(
                helper.make_node("Add", [f"mm{l}", const(f"mid_b{l}", _w(rng, 4))], [f"ma{l}"], name=f"mid_b{l}")
            )
            x, X = f"ma{l}", 4
        ins = [
            x,
            const(f"W{l}", _w(rng, 1, G * s.H, X)),
            const(f"R{l}", _w(rng, 1, G * s.H, s.H)),
            const(f"B{l}", _w(rng, 1, 2 * G * s.H)),
            "",
            f"h{l}",
        ]
        inputs.append(helper.make_tensor_value_info(f"h{l}", TensorProto.FLOAT, state_shape))
        outs = ["Y", "Y_h", "Y_c"][: 3 if s.has_c else 2]
        outs = [f"{o}{l}" for o in outs]
        outputs.append(helper.make_tensor_value_info(f"Y_h{l}", TensorProto.FLOAT, state_shape))
        if s.has_c:
            ins.append(f"c{l}")
            inputs.append(helper.make_tensor_value_info(f"c{l}", TensorProto.FLOAT, state_shape))
            outputs.append(helper.make_tensor_value_info(f"Y_c{l}", TensorProto.FLOAT, state_shape))
            if s.peephole:
                ins.append(const(f"P{l}", _w(rng, 1, 3 * s.H)))
        attrs = dict(hidden_size=s.H, **s.attrs)
        if s.lbr is not None:
            attrs["linear_before_reset"] = s.lbr
        if s.layout:
            attrs["layout"] = 1
        nodes.append(helper.make_node(s.op, ins, outs, name=f"rnn{l}", **attrs))
        axis1 = const(f"axis1_{l}", np.array([2 if s.layout else 1]))
        nodes.append(helper.make_node("Squeeze", [outs[0], axis1], [f"y{l}"], name=f"sq{l}"))
        x, X = f"y{l}", s.H
    Wh, bh = _w(rng, s.H, s.V), _w(rng, s.V)
    if s.head == "gemm":  # [T, B, H] -> [T*B, H] -> Gemm(transB) -> [T*B, V]
        nodes.append(helper.make_node("Reshape", [x, const("flat", np.array([-1, s.H]))], ["flat_y"], name="flatten"))
        gemm_ins = ["flat_y", const("head_W", Wh.T.copy()), const("head_b", bh)]
        nodes.append(helper.make_node("Gemm", gemm_ins, ["z"], name="head", transB=1, alpha=0.5, beta=2.0))
    else:  # back to batch-major (unless time-major or layout 1), then MatMul + Add
        if not s.time_major and not s.layout:
            nodes.append(helper.make_node("Transpose", [x], ["yb"], name="to_batch_major", perm=[1, 0, 2]))
            x = "yb"
        nodes.append(helper.make_node("MatMul", [x, const("head_W", Wh)], ["zm"], name="head"))
        nodes.append(helper.make_node("Add", ["zm", const("head_b", bh)], ["z"], name="head_bias"))
    if s.final:
        nodes.append(helper.make_node(s.final, ["z"], ["y"], name="final", axis=-1))
    else:
        nodes.append(helper.make_node("Identity", ["z"], ["y"], name="out"))
    y_shape: list[Any] = ["N", s.V] if s.head == "gemm" else [*bt, s.V]
    outputs.insert(0, helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape))
    graph = helper.make_graph(nodes, "source", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=full_check)
    return model


def as_logprobs(y: np.ndarray, final: str) -> np.ndarray:
    """The source's output as log-probabilities (what seqpred's graphs emit)."""
    y = y.astype(np.float64)
    if final == "LogSoftmax":
        return y
    if final == "Softmax":
        return np.log(y)
    z = y - y.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def run_source(model: onnx.ModelProto, s: Spec, x: np.ndarray, chunks: list[int]) -> np.ndarray:
    """The source model over ``x`` (``[B, T]`` or ``[B, T, X]``) fed in chunks of the given lengths, its state
    carried from one call to the next; returns the outputs ``[B, T, V]`` (batch-major)."""
    B = x.shape[0]
    if s.layout:  # onnxruntime's recurrent kernels refuse layout=1
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(model)
        names = list(ref.output_names)

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return list(ref.run(None, feeds))
    else:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return list(sess.run(None, feeds))

    shape = (B, 1, s.H) if s.layout else (1, B, s.H)
    state = {f"{k}{l}": np.zeros(shape, np.float32) for l in range(s.layers) for k in ("hc" if s.has_c else "h")}
    ys, t = [], 0
    for n in chunks:
        xc = x[:, t : t + n]
        if s.time_major:
            xc = np.ascontiguousarray(xc.swapaxes(0, 1))
        res = dict(zip(names, run({"x": xc, **state}), strict=True))
        y = res["y"]
        if s.head == "gemm":
            y = y.reshape((B, n, -1) if s.layout else (n, B, -1))
        if s.time_major or (s.head == "gemm" and not s.layout):
            y = y.swapaxes(0, 1)
        ys.append(y)
        state = {k: res[f"Y_{k[0]}{k[1:]}"] for k in state}
        t += n
    return np.concatenate(ys, axis=1)


def _state_inputs(sess: ort.InferenceSession, B: int) -> dict[str, np.ndarray]:
    skip = ("tokens", "inputs", "lengths")
    return {i.name: np.zeros((B, i.shape[1]), np.float32) for i in sess.get_inputs() if i.name not in skip}


def run_step(model_dir: Any, x: np.ndarray) -> np.ndarray:
    """seqpred's ``step.onnx`` over ``x`` one step at a time, state carried: ``[B, T, V]`` log-probs (or the
    outputs of a real-valued model)."""
    sess = ort.InferenceSession(str(model_dir / "step.onnx"), providers=["CPUExecutionProvider"])
    B, T = x.shape[:2]
    state = _state_inputs(sess, B)
    names = [o.name for o in sess.get_outputs()]
    token = x.dtype.kind in "iu"
    outs = []
    for t in range(T):
        res = dict(zip(names, sess.run(None, {("tokens" if token else "inputs"): x[:, t], **state}), strict=True))
        outs.append(res["logprobs" if token else "output"])
        state = {k: res[f"{k}_out"] for k in state}
    return np.stack(outs, axis=1)


def run_sequence(model_dir: Any, x: np.ndarray, chunks: list[int]) -> list[dict[str, np.ndarray]]:
    """seqpred's ``sequence.onnx`` over ``x`` in chunks, state carried: each chunk's outputs by name."""
    sess = ort.InferenceSession(str(model_dir / "sequence.onnx"), providers=["CPUExecutionProvider"])
    B = x.shape[0]
    state = _state_inputs(sess, B)
    names = [o.name for o in sess.get_outputs()]
    token = x.dtype.kind in "iu"
    res_all, t = [], 0
    for n in chunks:
        feeds = {("tokens" if token else "inputs"): x[:, t : t + n], "lengths": np.full(B, n, np.int64), **state}
        res = dict(zip(names, sess.run(None, feeds), strict=True))
        res_all.append(res)
        state = {k: res[f"{k}_out"] for k in state}
        t += n
    return res_all


def check_sequence(res: list[dict[str, np.ndarray]], ref: np.ndarray, x: np.ndarray, chunks: list[int]) -> float:
    """The largest difference between the chunked ``sequence.onnx`` results and the reference log-probs
    ``ref [B, T, V]`` (token models: the scored next tokens and each chunk's next-token distribution)."""
    err, t = 0.0, 0
    for r, n in zip(res, chunks, strict=True):
        if "outputs" in r:
            err = max(err, float(np.abs(r["outputs"] - ref[:, t : t + n]).max()))
        else:
            want = np.take_along_axis(ref[:, t : t + n - 1], x[:, t + 1 : t + n, None], axis=2)[..., 0]
            if n > 1:
                err = max(err, float(np.abs(r["token_logprobs"] - want).max()))
            err = max(err, float(np.abs(r["next_logprobs"] - ref[:, t + n - 1]).max()))
        t += n
    return err
