"""``seqpred import onnx`` exactness: every supported operator configuration, built with ``onnx.helper`` and
random weights, scores within 1e-5 of onnxruntime running the original file, over sequences fed in several
chunks with the state carried between calls (the source's state by hand, seqpred's through its graphs), for
B = 1 and B = 3; through ``step.onnx`` one token at a time and ``sequence.onnx`` chunk by chunk. (``layout=1``
sources run on ``onnx.reference``: onnxruntime's recurrent kernels refuse that layout.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from import_helpers import Spec, as_logprobs, build, check_sequence, run_sequence, run_source, run_step
from onnx import helper, numpy_helper

from model.export import load_model_dir
from model.importers.write import import_onnx

TOL = 1e-5

CONFIGS = {
    "lstm": (Spec(op="LSTM"), "lstm"),
    "lstm-peephole-2-layers-softmax": (Spec(op="LSTM", peephole=True, layers=2, final="Softmax"), "peephole"),
    "lstm-gemm-head-logsoftmax": (Spec(op="LSTM", head="gemm", final="LogSoftmax"), "lstm"),
    "gru-lbr0": (Spec(op="GRU", lbr=0), "gru"),
    "gru-default-lbr": (Spec(op="GRU", final="LogSoftmax"), "gru"),
    "gru-lbr1-2-layers": (Spec(op="GRU", lbr=1, layers=2, final="LogSoftmax"), "gru-lbr"),
    "rnn-gemm-head": (Spec(op="RNN", head="gemm"), "rnn"),
    "rnn-2-layers-softmax": (Spec(op="RNN", layers=2, final="Softmax"), "rnn"),
    "embedding-then-projection": (Spec(op="LSTM", proj=True, head="gemm", final="LogSoftmax"), "lstm"),
    "real-valued-projection": (Spec(op="LSTM", token=False, proj=True, layers=2), "lstm"),
    "real-valued-gru-lbr1": (Spec(op="GRU", token=False, lbr=1), "gru-lbr"),
    "time-major-input": (Spec(op="LSTM", time_major=True, layers=2, head="gemm"), "lstm"),
    "real-valued-time-major": (Spec(op="RNN", token=False, time_major=True), "rnn"),
    "projection-between-layers": (Spec(op="GRU", lbr=1, layers=2, between=True, final="Softmax"), "gru-lbr"),
    "dropout-cast-unsqueeze-squeeze": (Spec(op="LSTM", glue=True, proj=True), "lstm"),
    "layout-1-rnn": (Spec(op="RNN", layout=1, layers=2), "rnn"),
    "layout-1-lstm-gemm": (Spec(op="LSTM", layout=1, head="gemm", final="LogSoftmax"), "lstm"),
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Spec, onnx.ModelProto, Path]]:
    root = tmp_path_factory.mktemp("imports")
    out = {}
    for name, (spec, _) in CONFIGS.items():
        model = build(spec)
        src = root / f"{name}.onnx"
        onnx.save(model, src)
        out[name] = (spec, model, import_onnx(src, root / name))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 3])
def test_imported_graphs_match_onnxruntime_on_the_source_over_chunks(
    imported: dict[str, tuple[Spec, onnx.ModelProto, Path]], name: str, B: int
) -> None:
    spec, model, out = imported[name]
    rng = np.random.default_rng(B)
    T, chunks = 10, [4, 1, 5]
    x = rng.integers(0, spec.V, (B, T)) if spec.token else rng.standard_normal((B, T, spec.E)).astype(np.float32)
    y = run_source(model, spec, x, chunks)
    ref = as_logprobs(y, spec.final) if spec.token else y.astype(np.float64)
    assert np.abs(run_step(out, x) - ref).max() < TOL
    assert check_sequence(run_sequence(out, x, chunks), ref, x, chunks) < TOL


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_cell_and_the_provenance(imported: dict[str, tuple[Spec, onnx.ModelProto, Path]], name: str) -> None:
    spec, _, out = imported[name]
    md = load_model_dir(out)
    assert md.config.cell == CONFIGS[name][1]
    assert md.config.layers == spec.layers and md.config.hidden == spec.H
    assert md.config.token_input == spec.token
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["producer"] == "seqpred import"
    imp = manifest["provenance"]["import"]
    src = out.parent / f"{name}.onnx"
    assert imp["format"] == "onnx" and imp["source"] == str(src)
    assert imp["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    m = imp["mapping"]
    assert m["cell"] == md.config.cell
    assert [layer["node"] for layer in m["layers"]] == [f"rnn{l}" for l in range(spec.layers)]
    order = ["time", "batch"] if spec.time_major else ["batch", "time"]
    assert m["input"] == {"name": "x", "axes": order + ([] if spec.token else ["features"])}
    assert [layer["layout"] for layer in m["layers"]] == [spec.layout] * spec.layers
    assert m["source_output"] == (
        {"LogSoftmax": "log_softmax", "Softmax": "softmax"}.get(spec.final) or ("logits" if spec.token else "linear")
    )
    assert m["states"] == {f"{k}{l}": f"{k}{l}" for l in range(spec.layers) for k in ("hc" if spec.has_c else "h")}
    if spec.token:
        assert md.tokenizer is not None and md.tokenizer.kind == "ids"  # no --vocab: token ids only


def test_a_zero_initial_state_written_by_shape_ops_imports(tmp_path: Path) -> None:
    """``torch.onnx.export`` without a state argument writes ``Expand(0, Shape(x)...)`` for initial_h; that is a
    zero state, the same as seqpred's."""
    spec = Spec(op="GRU", lbr=1)
    model = build(spec)
    g = model.graph
    g.input.remove(next(i for i in g.input if i.name == "h0"))
    g.output.remove(next(o for o in g.output if o.name == "Y_h0"))
    for name, value in (("zero", np.zeros(1, np.float32)), ("one", [1]), ("H", [spec.H]), ("b_axis", 0), ("ax0", [0])):
        g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
        helper.make_node("Gather", ["x_shape", "b_axis"], ["batch"], name="batch"),
        helper.make_node("Unsqueeze", ["batch", "ax0"], ["batch1"], name="batch1"),
        helper.make_node("Concat", ["one", "batch1", "H"], ["h_shape"], name="h_shape", axis=0),
        helper.make_node("Expand", ["zero", "h_shape"], ["h0"], name="h0_zeros"),
    ]
    for n in reversed(nodes):
        g.node.insert(0, n)
    onnx.checker.check_model(model, full_check=True)
    src = tmp_path / "zero_state.onnx"
    onnx.save(model, src)
    out = import_onnx(src, tmp_path / "m")
    assert json.loads((out / "model.json").read_text())["provenance"]["import"]["mapping"]["states"] == {"h0": "zeros"}
    x = np.random.default_rng(0).integers(0, spec.V, (2, 6))
    y = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    assert np.abs(run_step(out, x) - as_logprobs(y, "")).max() < TOL


def test_weights_an_exporter_left_unfolded_are_evaluated(tmp_path: Path) -> None:
    """``torch.onnx.export`` leaves large weights as ``Slice``/``Concat``/``Unsqueeze`` of the parameters (PyTorch's
    gate order regrouped into ONNX's); the importer evaluates such constant subgraphs."""
    spec = Spec(op="LSTM")
    model = build(spec)
    g = model.graph
    W = next(t for t in g.initializer if t.name == "W0")
    w = numpy_helper.to_array(W)[0]  # [4H, X], gates i, o, f, c
    H = spec.H
    torch_order = np.concatenate([w[:H], w[2 * H : 3 * H], w[3 * H :], w[H : 2 * H]])  # i, f, g, o
    g.initializer.remove(W)
    for name, value in (("param", torch_order), ("ax0", [0]), *((f"s{k}", [k * H]) for k in range(5))):
        g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    blocks = [helper.make_node("Slice", ["param", f"s{k}", f"s{k + 1}", "ax0"], [f"blk{k}"]) for k in range(4)]
    fold = [
        *blocks,
        helper.make_node("Concat", ["blk0", "blk3", "blk1", "blk2"], ["W0_2d"], axis=0),  # back to i, o, f, c
        helper.make_node("Unsqueeze", ["W0_2d", "ax0"], ["W0"]),
    ]
    for n in reversed(fold):
        g.node.insert(0, n)
    onnx.checker.check_model(model, full_check=True)
    src = tmp_path / "unfolded.onnx"
    onnx.save(model, src)
    out = import_onnx(src, tmp_path / "m")
    x = np.random.default_rng(0).integers(0, spec.V, (2, 7))
    ref = as_logprobs(run_source(model, spec, x, [3, 4]), spec.final)
    assert np.abs(run_step(out, x) - ref).max() < TOL
