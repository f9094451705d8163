"""The PyTorch round trip: an ``nn.Embedding`` + ``nn.LSTM``/``nn.GRU`` + ``nn.Linear`` model exported both ways
(``torch.onnx.export``, both exporters, and a safetensors ``state_dict``) imports to the same graphs, and they
match PyTorch's own outputs within 1e-5 over sequences fed in chunks with the state carried.

Needs the test-only extra ``torch`` (``pip install -e '.[torch]'``; ``make install`` adds it); skipped without.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from import_helpers import check_sequence, run_sequence, run_step

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from model.importers.write import import_onnx, import_torch  # noqa: E402

V, E, H, LAYERS = 11, 6, 8, 2
TOL = 1e-5


class CharModel(torch.nn.Module):  # type: ignore[misc]
    def __init__(self, arch: str) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(V, E)
        self.rnn = (torch.nn.LSTM if arch == "lstm" else torch.nn.GRU)(E, H, num_layers=LAYERS, batch_first=True)
        self.fc = torch.nn.Linear(H, V)

    def forward(self, x: Any, *state: Any) -> Any:
        y, new = self.rnn(self.emb(x), state if len(state) > 1 else state[0])
        out = torch.log_softmax(self.fc(y), dim=-1)
        return (out, *new) if isinstance(new, tuple) else (out, new)


def _export(model: Any, args: tuple[Any, ...], path: Path, dynamo: bool) -> None:
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1]:
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, args, str(path), dynamo=True)
        else:
            names = ["x", "h"] + (["c"] if len(args) == 3 else [])
            torch.onnx.export(model, args, str(path), dynamo=False, input_names=names, opset_version=17)


@pytest.fixture(scope="module", params=["lstm", "gru"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    arch = request.param
    torch.manual_seed(0)
    model = CharModel(arch).eval()
    with torch.no_grad():
        for p in model.rnn.parameters():  # non-trivial biases in both halves
            p.add_(torch.randn_like(p) * 0.1)
    root = tmp_path_factory.mktemp(f"torch-{arch}")
    x = torch.zeros(2, 3, dtype=torch.long)
    state = (torch.zeros(LAYERS, 2, H),) * (2 if arch == "lstm" else 1)
    dirs = {}
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "m.safetensors"))
    dirs["safetensors"] = import_torch(root / "m.safetensors", root / "from-state", arch=arch, layers=LAYERS)
    _export(model, (x, *state), root / "legacy.onnx", dynamo=False)
    dirs["torch.onnx.export (TorchScript)"] = import_onnx(root / "legacy.onnx", root / "from-legacy")
    try:
        import onnxscript  # noqa: F401  # the default (dynamo) exporter needs it
    except ImportError:
        pass
    else:
        _export(model, (x, *state), root / "dynamo.onnx", dynamo=True)
        dirs["torch.onnx.export (dynamo)"] = import_onnx(root / "dynamo.onnx", root / "from-dynamo")
    return {"arch": arch, "model": model, "dirs": dirs}


def test_both_export_paths_import_to_the_same_graphs(exported: dict[str, Any]) -> None:
    dirs = exported["dirs"]
    assert len(dirs) >= 2
    for fname in ("step.onnx", "sequence.onnx"):
        digests = {how: hashlib.sha256((d / fname).read_bytes()).hexdigest() for how, d in dirs.items()}
        assert len(set(digests.values())) == 1, digests


def _torch_logprobs(model: Any, arch: str, x: np.ndarray, chunks: list[int]) -> np.ndarray:
    B = x.shape[0]
    state = tuple(torch.zeros(LAYERS, B, H) for _ in range(2 if arch == "lstm" else 1))
    outs, t = [], 0
    with torch.no_grad():
        for n in chunks:
            out, *state_list = model(torch.from_numpy(x[:, t : t + n]), *state)
            state = tuple(state_list)
            outs.append(out.double().numpy())
            t += n
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("B", [1, 3])
def test_the_imported_model_matches_pytorch_over_chunks(exported: dict[str, Any], B: int) -> None:
    x = np.random.default_rng(B).integers(0, V, (B, 12))
    chunks = [5, 1, 6]
    ref = _torch_logprobs(exported["model"], exported["arch"], x, chunks)
    out = exported["dirs"]["safetensors"]
    assert np.abs(run_step(out, x) - ref).max() < TOL
    assert check_sequence(run_sequence(out, x, chunks), ref, x, chunks) < TOL


def test_the_cell_is_pytorchs_form(exported: dict[str, Any]) -> None:
    from model.export import load_model_dir

    cfg = load_model_dir(exported["dirs"]["safetensors"]).config
    assert cfg.cell == {"lstm": "lstm", "gru": "gru-lbr"}[exported["arch"]]
    assert (cfg.layers, cfg.hidden, cfg.vocab_size, cfg.embed) == (LAYERS, H, V, E)
