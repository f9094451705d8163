"""``seqpred import``: every refusal is one line ``seqpred: error: ...`` naming the node (or key) and the
attribute, exit code 2, and nothing written; a good import prints one line and writes the model directory."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from import_helpers import Spec, build
from onnx import helper, numpy_helper

from model.cli import main


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def import_onnx_cli(tmp_path: Path, model: onnx.ModelProto, *extra: str) -> tuple[int, str, str]:
    src = tmp_path / "src.onnx"
    onnx.save(model, src)
    return run(["import", "onnx", str(src), "--out", str(tmp_path / "m"), *extra])


def edited(spec: Spec, edit: Callable[[onnx.GraphProto], None]) -> onnx.ModelProto:
    model = build(spec, full_check=False)
    edit(model.graph)
    return model


def node(g: onnx.GraphProto, name: str) -> onnx.NodeProto:
    return next(n for n in g.node if n.name == name)


def set_input(g: onnx.GraphProto, name: str, index: int, value: str) -> None:
    n = node(g, name)
    while len(n.input) <= index:
        n.input.append("")
    n.input[index] = value


def add_init(g: onnx.GraphProto, name: str, value: object) -> None:
    g.initializer.append(numpy_helper.from_array(np.asarray(value), name))


def nonzero_state(g: onnx.GraphProto) -> None:
    g.input.remove(next(i for i in g.input if i.name == "h0"))
    add_init(g, "h0", np.ones((1, 1, 5), np.float32))


def sequence_lens(g: onnx.GraphProto) -> None:
    g.input.append(helper.make_tensor_value_info("lens", onnx.TensorProto.INT32, ["B"]))
    set_input(g, "rnn0", 4, "lens")


def insert_before(g: onnx.GraphProto, name: str, new: onnx.NodeProto) -> None:
    g.node.insert(list(g.node).index(node(g, name)), new)


def relu_on_path(g: onnx.GraphProto) -> None:
    node(g, "to_batch_major").input[0] = "relu_y"
    insert_before(g, "to_batch_major", helper.make_node("Relu", ["y0"], ["relu_y"], name="act"))


def head_reads_final_state(g: onnx.GraphProto) -> None:
    """A sequence classifier: the head reads the last state Y_h, not the per-step Y."""
    node(g, "to_batch_major").input[0] = "Y_h0"


def residual(g: onnx.GraphProto) -> None:
    node(g, "to_batch_major").input[0] = "res"
    insert_before(g, "to_batch_major", helper.make_node("Identity", ["y0"], ["y0_copy"], name="copy"))
    insert_before(g, "to_batch_major", helper.make_node("Add", ["y0", "y0_copy"], ["res"], name="residual"))


def no_head(g: onnx.GraphProto) -> None:
    for name in ("head", "head_bias"):
        g.node.remove(node(g, name))
    node(g, "out").input[0] = "yb"


def wider_head(g: onnx.GraphProto) -> None:
    for t in list(g.initializer):
        if t.name in ("head_W", "head_b"):
            g.initializer.remove(t)
    add_init(g, "head_W", np.zeros((5, 9), np.float32))
    add_init(g, "head_b", np.zeros(9, np.float32))


def gru_above_rnn(g: onnx.GraphProto) -> None:
    node(g, "rnn1").op_type = "GRU"
    for t in list(g.initializer):
        if t.name in ("W1", "R1", "B1"):
            g.initializer.remove(t)
    add_init(g, "W1", np.zeros((1, 15, 5), np.float32))
    add_init(g, "R1", np.zeros((1, 15, 5), np.float32))
    add_init(g, "B1", np.zeros((1, 30), np.float32))


def narrower_top_layer(g: onnx.GraphProto) -> None:
    """Layer 1 with H = 3 over layer 0's H = 5 (and a head that reads 3 features)."""
    node(g, "rnn1").attribute[0].i = 3  # hidden_size
    for t in list(g.initializer):
        if t.name in ("W1", "R1", "B1", "head_W"):
            g.initializer.remove(t)
    add_init(g, "W1", np.zeros((1, 12, 5), np.float32))
    add_init(g, "R1", np.zeros((1, 12, 3), np.float32))
    add_init(g, "B1", np.zeros((1, 24), np.float32))
    add_init(g, "head_W", np.zeros((3, 7), np.float32))


def mixed_gru_forms(g: onnx.GraphProto) -> None:
    node(g, "rnn1").attribute.append(helper.make_attribute("linear_before_reset", 1))


ONNX_REFUSALS = {
    "bidirectional": (
        Spec(attrs={"direction": "bidirectional"}),
        None,
        "node 'rnn0' (LSTM): attribute direction is 'bidirectional'; seqpred streams one step at a time and imports "
        "forward layers only",
    ),
    "reverse": (
        Spec(op="GRU", attrs={"direction": "reverse"}),
        None,
        "node 'rnn0' (GRU): attribute direction is 'reverse'; seqpred streams one step at a time and imports forward "
        "layers only",
    ),
    "relu-rnn": (
        Spec(op="RNN", attrs={"activations": ["Relu"]}),
        None,
        "node 'rnn0' (RNN): attribute activations is ['Relu']; seqpred has a cell for the defaults ['Tanh'] only",
    ),
    "lstm-activations": (
        Spec(attrs={"activations": ["Sigmoid", "Tanh", "Relu"]}),
        None,
        "node 'rnn0' (LSTM): attribute activations is ['Sigmoid', 'Tanh', 'Relu']; seqpred has a cell for the "
        "defaults ['Sigmoid', 'Tanh', 'Tanh'] only",
    ),
    "clip": (Spec(attrs={"clip": 3.0}), None, "node 'rnn0' (LSTM): attribute clip is 3.0; seqpred's cells do not clip"),
    "input-forget": (
        Spec(attrs={"input_forget": 1}),
        None,
        "node 'rnn0' (LSTM): attribute input_forget is 1; seqpred imports LSTMs with separate input and forget "
        "gates only",
    ),
    "sequence-lens": (
        Spec(op="GRU"),
        sequence_lens,
        "node 'rnn0' (GRU): input sequence_lens ('lens') is set; seqpred imports recurrences that run every step of "
        "their input (it pads and scores batches itself)",
    ),
    "unknown-op": (
        Spec(),
        relu_on_path,
        "node 'act' (Relu): operator Relu is not one seqpred maps (on the path from input to output it maps Gather, "
        "MatMul, Add, Gemm, LSTM, GRU, RNN, LogSoftmax, Softmax and layout ops)",
    ),
    "final-state-head": (
        Spec(),
        head_reads_final_state,
        "node 'rnn0' (LSTM): output Y_h (the final state) feeds the served output; seqpred maps models that predict "
        "at every step from Y",
    ),
    "residual": (
        Spec(),
        residual,
        "node 'residual' (Add): both operands are computed; seqpred maps affine ops with one constant operand",
    ),
    "nonzero-initial-state": (
        Spec(),
        nonzero_state,
        "node 'rnn0' (LSTM): input initial_h is a non-zero constant; seqpred starts each session from zeros",
    ),
    "no-head": (
        Spec(),
        no_head,
        "node 'rnn0' (LSTM): no linear head (Gemm, or MatMul and Add) after the last recurrent node",
    ),
    "head-vocabulary": (
        Spec(),
        wider_head,
        "head: predicts 9 classes but the embedding has 7 rows; a seqpred token model predicts the vocabulary it reads",
    ),
    "mixed-cells": (
        Spec(op="RNN", layers=2),
        gru_above_rnn,
        "node 'rnn1' (GRU): layer 1 is GRU, layer 0 is RNN; seqpred uses one cell for all layers",
    ),
    "mixed-hidden-sizes": (
        Spec(layers=2),
        narrower_top_layer,
        "node 'rnn1' (LSTM): attribute hidden_size is 3, the layer below has 5; seqpred uses one hidden size for all "
        "layers",
    ),
    "mixed-gru-forms": (
        Spec(op="GRU", layers=2),
        mixed_gru_forms,
        "node 'rnn1' (GRU): attribute linear_before_reset is 1, the layer below has 0; seqpred uses one GRU form "
        "for all layers",
    ),
    "softmax-on-real-valued": (
        Spec(token=False, final="Softmax"),
        None,
        "node 'final' (Softmax): a model with real-valued inputs gets a linear head in seqpred; Softmax is mapped for "
        "token models (Gather input) only",
    ),
}


@pytest.mark.parametrize("case", list(ONNX_REFUSALS))
def test_each_onnx_refusal_is_one_line_naming_the_node_and_attribute(tmp_path: Path, case: str) -> None:
    spec, edit, message = ONNX_REFUSALS[case]
    model = build(spec, full_check=False) if edit is None else edited(spec, edit)
    rc, out, err = import_onnx_cli(tmp_path, model)
    assert (rc, out, err) == (2, "", f"seqpred: error: {message}\n")
    assert not (tmp_path / "m").exists() and [p.name for p in tmp_path.iterdir()] == ["src.onnx"]


def test_a_file_that_is_not_onnx_and_a_missing_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01 not a protobuf at all \xff" * 3)
    rc, _, err = run(["import", "onnx", str(bad), "--out", str(tmp_path / "m")])
    assert rc == 2 and err.startswith(f"seqpred: error: model: {str(bad)!r} is not an ONNX model (")
    assert err.count("\n") == 1
    rc, _, err = run(["import", "onnx", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "m")])
    assert (rc, err) == (2, f"seqpred: error: model: {str(tmp_path / 'nope.onnx')!r} does not exist or is not a file\n")


def test_a_model_without_a_recurrent_operator(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["B", 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["B", 2])
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x], [y], [w])
    src = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    rc, _, err = run(["import", "onnx", str(src), "--out", str(tmp_path / "m")])
    assert (rc, err) == (
        2,
        f"seqpred: error: model: {str(src)!r} has no LSTM, GRU or RNN node; seqpred imports those operators\n",
    )


def test_vocab_files(tmp_path: Path) -> None:
    model = build(Spec(V=4))
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(["a", "b", "c"]))
    rc, _, err = import_onnx_cli(tmp_path, model, "--vocab", str(tokens))
    assert (rc, err) == (2, f"seqpred: error: vocab: {str(tokens)!r} has 3 tokens, the model's embedding has 4 rows\n")
    rc, _, err = import_onnx_cli(tmp_path, model, "--vocab", str(tmp_path / "none.json"))
    assert (rc, err) == (2, f"seqpred: error: vocab: {str(tmp_path / 'none.json')!r} does not exist\n")
    tokens.write_text(json.dumps(["a", "b", "a", "d"]))
    rc, _, err = import_onnx_cli(tmp_path, model, "--vocab", str(tokens))
    assert (rc, err) == (2, f"seqpred: error: vocab: {str(tokens)!r}: list vocab: duplicate token 'a'\n")
    rc, _, err = import_onnx_cli(tmp_path, build(Spec(token=False)), "--vocab", str(tokens))
    assert (rc, err) == (
        2,
        "seqpred: error: vocab: the model reads real-valued inputs (no embedding); --vocab applies to token models\n",
    )
    tokens.write_text(json.dumps(["<unk>", "a", "bc", "d"]))
    rc, out, err = import_onnx_cli(tmp_path, model, "--vocab", str(tokens))
    assert (rc, err) == (0, "")
    assert out == f"imported {tmp_path / 'src.onnx'} -> {tmp_path / 'm'}: lstm L=1 H=5, vocabulary 4 (list), fp32\n"
    # a vocab.json of this project (char tokenizer: <unk> + 3 characters)
    proj = tmp_path / "vocab.json"
    proj.write_text(json.dumps({"kind": "char", "vocab": ["<unk>", "x", "y", "z"]}))
    rc, out, err = import_onnx_cli(tmp_path, model, "--vocab", str(proj), "--overwrite")
    assert (rc, err) == (0, "") and "vocabulary 4 (char)" in out
    rc, _, err = import_onnx_cli(tmp_path, model)
    assert (rc, err) == (
        2,
        f"seqpred: error: out: {str(tmp_path / 'm')!r} already exists; pass --overwrite to replace it\n",
    )


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_every_precision(tmp_path: Path, precision: str) -> None:
    rc, out, err = import_onnx_cli(tmp_path, build(Spec(op="GRU", lbr=1, layers=2)), "--precision", precision)
    assert (rc, err) == (0, "") and out.endswith(f", {precision}\n")


# --- seqpred import torch: safetensors state_dicts (written here with safetensors.numpy, no torch needed) -----------


def state(
    layers: int = 1, G: int = 4, H: int = 3, E: int = 2, V: int = 5, **extra: np.ndarray
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    sd = {"emb.weight": rng.standard_normal((V, E)), "fc.weight": rng.standard_normal((V, H)), "fc.bias": np.zeros(V)}
    for k in range(layers):
        X = E if k == 0 else H
        sd |= {
            f"rnn.weight_ih_l{k}": rng.standard_normal((G * H, X)),
            f"rnn.weight_hh_l{k}": rng.standard_normal((G * H, H)),
            f"rnn.bias_ih_l{k}": rng.standard_normal(G * H),
            f"rnn.bias_hh_l{k}": rng.standard_normal(G * H),
        }
    return {k: v.astype(np.float32) for k, v in (sd | extra).items()}


def import_torch_cli(tmp_path: Path, sd: dict[str, np.ndarray], *args: str) -> tuple[int, str, str]:
    from safetensors.numpy import save_file

    src = tmp_path / "state.safetensors"
    save_file(sd, str(src))
    return run(["import", "torch", str(src), "--out", str(tmp_path / "m"), *args])


TORCH_REFUSALS = {
    "missing-layer": (
        state(1),
        ["--layers", "2"],
        "state: missing keys for --layers 2: rnn.weight_ih_l1, rnn.weight_hh_l1",
    ),
    "extra-layer": (
        state(2),
        ["--layers", "1"],
        "state: extra keys: rnn.bias_hh_l1, rnn.bias_ih_l1, rnn.weight_hh_l1, rnn.weight_ih_l1",
    ),
    "extra-module": (
        state(1, **{"norm.running_mean": np.zeros(3, np.float32)}),
        ["--layers", "1"],
        "state: extra keys: norm.running_mean",
    ),
    "bidirectional": (
        state(1, **{"rnn.weight_ih_l0_reverse": np.zeros((12, 2), np.float32)}),
        ["--layers", "1"],
        "state: key 'rnn.weight_ih_l0_reverse' is a bidirectional layer's; seqpred imports forward ones",
    ),
    "proj-size": (
        state(1, **{"rnn.weight_hr_l0": np.zeros((2, 3), np.float32)}),
        ["--layers", "1"],
        "state: key 'rnn.weight_hr_l0' is a projection (proj_size); seqpred has no cell for it",
    ),
    "wrong-arch": (
        state(1, G=4),
        ["--layers", "1", "--arch", "gru"],
        "state: rnn.weight_ih_l0 has shape [12, 2]; --arch gru needs [3*H, ...]",
    ),
    "outside-prefix": (
        state(1),
        ["--layers", "1", "--prefix", "model."],
        "state: extra keys outside --prefix 'model.': emb.weight, fc.bias, fc.weight, rnn.bias_hh_l0, rnn.bias_ih_l0, "
        "rnn.weight_hh_l0, rnn.weight_ih_l0",
    ),
}


@pytest.mark.parametrize("case", list(TORCH_REFUSALS))
def test_each_torch_refusal_lists_the_keys(tmp_path: Path, case: str) -> None:
    pytest.importorskip("safetensors")
    sd, args, message = TORCH_REFUSALS[case]
    if "--arch" not in args:
        args = [*args, "--arch", "lstm"]
    rc, out, err = import_torch_cli(tmp_path, sd, *args)
    assert (rc, out, err) == (2, "", f"seqpred: error: {message}\n")
    assert not (tmp_path / "m").exists()


def test_a_pickle_file_gets_the_two_lines_that_convert_it(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(b"PK\x03\x04 a zip archive torch.save writes")
    rc, _, err = run(["import", "torch", str(src), "--arch", "lstm", "--layers", "1", "--out", str(tmp_path / "m")])
    assert (rc, err) == (
        2,
        f"seqpred: error: state: {str(src)!r} is a pickle file, which seqpred never loads; convert it in PyTorch: "
        "sd = torch.load('model.pt', map_location='cpu', weights_only=True); "
        "safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\n",
    )


def test_without_the_safetensors_package_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file

    src = tmp_path / "state.safetensors"
    save_file(state(1), str(src))
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)  # import fails as if it were not installed
    rc, _, err = run(["import", "torch", str(src), "--arch", "lstm", "--layers", "1", "--out", str(tmp_path / "m")])
    assert (rc, err) == (
        2,
        "seqpred: error: state: reading safetensors needs the package safetensors: pip install 'seqpred[import]'\n",
    )


def test_a_prefixed_bias_free_state_dict_imports(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    sd = {f"model.{k}": v for k, v in state(2, G=3).items() if "bias" not in k or k == "fc.bias"}
    rc, out, err = import_torch_cli(tmp_path, sd, "--arch", "gru", "--layers", "2", "--prefix", "model.")
    assert (rc, err) == (0, "")
    assert out.endswith("gru-lbr L=2 H=3, vocabulary 5 (ids), fp32\n")
    manifest = json.loads((tmp_path / "m" / "model.json").read_text())
    imp = manifest["provenance"]["import"]
    assert imp["format"] == "safetensors"
    assert imp["mapping"]["recurrent"] == "model.rnn.*" and imp["mapping"]["embedding"] == "model.emb.weight"
    assert imp["mapping"]["gate_permutation"] == {"from": "r, z, n", "blocks": [1, 0, 2]}


def test_a_state_dict_without_embedding_reads_real_valued_inputs(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    sd = {k: v for k, v in state(1).items() if not k.startswith("emb.")}
    rc, out, err = import_torch_cli(tmp_path, sd, "--arch", "lstm", "--layers", "1")
    assert (rc, err) == (0, "")
    assert out.endswith("lstm L=1 H=3, 2 real-valued inputs, fp32\n")
    manifest = json.loads((tmp_path / "m" / "model.json").read_text())
    assert (manifest["model"]["head"], manifest["model"]["input_dim"], manifest["model"]["output_dim"]) == ("mse", 2, 5)
    assert manifest["tokenizer"] is None
