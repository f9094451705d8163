"""docs/import.md's worked example, shortened: the PyTorch char-LSTM script trains for a few seconds and exports
both ways; ``seqpred import onnx`` and ``seqpred import torch`` give the same graphs; the model is served and
``seqpred client`` gets predictions from it. (Needs the ``torch`` extra; skipped without.)"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import pytest
from service_helpers import running_server

from model.cli import main
from service.cli import main_client

pytest.importorskip("torch")
pytest.importorskip("safetensors")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "examples" / "torch_char_lstm.py"


def seqpred(*argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    assert rc == 0, err.getvalue()
    return out.getvalue()


def test_the_worked_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = tmp_path / "char-lstm"
    argv = [str(SCRIPT), "--out", str(ex), "--seconds", "3", "--hidden", "32", "--max-chars", "200000"]
    monkeypatch.setattr(sys, "argv", argv)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        runpy.run_path(str(SCRIPT), run_name="__main__")  # in-process: torch is imported once per test run
    assert "wrote" in printed.getvalue()
    assert {"char_lstm.onnx", "char_lstm.safetensors", "vocab.json"} <= {p.name for p in ex.iterdir()}
    vocab = str(ex / "vocab.json")
    seqpred("import", "onnx", str(ex / "char_lstm.onnx"), "--out", str(tmp_path / "from-onnx"), "--vocab", vocab)
    out = seqpred(
        "import", "torch", str(ex / "char_lstm.safetensors"), "--arch", "lstm", "--layers", "2",
        "--out", str(tmp_path / "char-lstm-model"), "--vocab", vocab,
    )  # fmt: skip
    assert "lstm L=2 H=32" in out and "(list)" in out
    for fname in ("step.onnx", "sequence.onnx"):
        assert (tmp_path / "from-onnx" / fname).read_bytes() == (tmp_path / "char-lstm-model" / fname).read_bytes()
    with running_server(model=str(tmp_path / "char-lstm-model")) as server:
        buf = io.StringIO()
        rc = main_client(["--target", server.target, "--json", "--top-k", "3", "def __init__(self"], stdout=buf)
    assert rc == 0
    reply = json.loads(buf.getvalue())
    chars = json.loads((ex / "vocab.json").read_text())
    assert len(reply["predictions"]) == 3 and all(p["text"] in chars for p in reply["predictions"])
