"""End to end: a run directory -> export_run -> a model directory that loads and scores like the NumPy model.

Covers model/export/export.py and manifest.py: the atomic write, bad input, checksums and tampering, the
manifest round trip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model import network
from model.config import ModelConfig
from model.data.tokenizers import CharTokenizer
from model.errors import CheckpointError, ConfigError
from model.export import FORMAT_VERSION, export_run, load_model_dir, make_session
from model.train.checkpoint import VOCAB, save_checkpoint, save_config, write_json_atomic

TEXT = "to be or not to be, that is the question"
META = {"corpus": "unit-test", "step": 7, "tokens": 1234, "val_nats_per_token": 2.5}


def write_run(d: Path, rng: np.random.Generator, cell: str = "lstm", layers: int = 1) -> tuple[ModelConfig, Any]:
    tok = CharTokenizer.fit(TEXT)
    cfg = ModelConfig(cell=cell, layers=layers, hidden=8, vocab_size=tok.vocab_size, embed=4)
    params = {k: v + rng.normal(0, 0.2, v.shape).astype(np.float32) for k, v in network.init_params(cfg, rng).items()}
    d.mkdir(parents=True)
    save_config(d, cfg, {"corpus": "unit-test"})
    save_checkpoint(d, params, {}, {}, META)
    write_json_atomic(d / VOCAB, tok.to_dict())
    return cfg, params


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_export_run_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    cfg, params = write_run(tmp_path / "run", rng, cell="gru-lbr", layers=2)
    out = export_run(tmp_path / "run", tmp_path / "model")
    assert out == tmp_path / "model"
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "sequence.onnx", "step.onnx"]
    md = load_model_dir(out)
    assert md.config == cfg and md.precision == "fp32"
    assert md.tokenizer is not None and md.tokenizer.to_dict() == CharTokenizer.fit(TEXT).to_dict()
    assert md.state_names == ["h0", "h1"]
    prov = md.provenance
    assert prov["corpus"] == "unit-test" and prov["step"] == 7 and prov["val_nats_per_token"] == 2.5
    assert prov["run_dir"] == str(tmp_path / "run")
    m = json.loads((out / "model.json").read_text())
    assert m["format_version"] == FORMAT_VERSION
    assert [s["name"] for s in m["states"]] == ["h0", "h1"] and m["states"][0]["shape"] == ["batch", 8]
    assert [i["name"] for i in m["graphs"]["sequence"]["inputs"]] == ["tokens", "lengths", "h0", "h1"]
    # the loaded graphs score text like the NumPy model
    ids = md.tokenizer.encode("to be or not")[None]
    state = network.zero_state(cfg, 1)
    lp, fs = network.log_probs(cfg, params, ids, state)
    sess = make_session(md.sequence_path)
    feeds = {"tokens": ids, "lengths": np.array([ids.shape[1]]), "h0": state[0][0], "h1": state[1][0]}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    want = lp[0, np.arange(ids.shape[1] - 1), ids[0, 1:]]
    np.testing.assert_allclose(got["token_logprobs"][0], want, atol=1e-5)
    np.testing.assert_allclose(got["h1_out"], fs[1][0], atol=1e-5)
    assert leftovers(tmp_path) == []


def test_tampered_graph_fails_checksum(tmp_path: Path, rng: np.random.Generator) -> None:
    write_run(tmp_path / "run", rng)
    out = export_run(tmp_path / "run", tmp_path / "model")
    data = bytearray((out / "step.onnx").read_bytes())
    data[-1] ^= 0xFF
    (out / "step.onnx").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"step\.onnx: sha256 .* does not match"):
        load_model_dir(out)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.update(format_version=99), "unsupported format_version 99"),
        (lambda m: m.update(extra=1), "unknown key 'extra'"),
        (lambda m: m["model"].update(cell="lstmx"), "unknown cell 'lstmx'"),
        (lambda m: m["states"].pop(), "state tensors do not match"),
        (lambda m: m["states"][1].update(shape=["batch", 1]), r"state 'c0' has shape \['batch', 1\], the config needs"),
        (lambda m: m["graphs"]["sequence"].update(sha256="0" * 64), r"sequence\.onnx: sha256"),
    ],
)
def test_bad_manifest(tmp_path: Path, rng: np.random.Generator, mutate: Any, message: str) -> None:
    write_run(tmp_path / "run", rng)
    out = export_run(tmp_path / "run", tmp_path / "model")
    m = json.loads((out / "model.json").read_text())
    mutate(m)
    (out / "model.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=message):
        load_model_dir(out)


def test_missing_pieces_of_a_model_dir(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_dir(tmp_path / "nope")
    write_run(tmp_path / "run", rng)
    out = export_run(tmp_path / "run", tmp_path / "model")
    (out / "sequence.onnx").unlink()
    with pytest.raises(CheckpointError, match=r"missing sequence\.onnx"):
        load_model_dir(out)
    (out / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable JSON"):
        load_model_dir(out)


def test_missing_run_dir_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        export_run(tmp_path / "no-run", tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_run_without_checkpoint_writes_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    write_run(tmp_path / "run", rng)
    (tmp_path / "run" / "checkpoint.npz").unlink()
    with pytest.raises(CheckpointError, match=r"no checkpoint\.npz"):
        export_run(tmp_path / "run", tmp_path / "model")
    assert not (tmp_path / "model").exists() and leftovers(tmp_path) == []


def test_misshaped_array_writes_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    _, params = write_run(tmp_path / "run", rng)
    params["layer0/R"] = params["layer0/R"][:, :-1]
    save_checkpoint(tmp_path / "run", params, {}, {}, META)
    with pytest.raises(CheckpointError, match="'layer0/R' has shape"):
        export_run(tmp_path / "run", tmp_path / "model")
    assert not (tmp_path / "model").exists() and leftovers(tmp_path) == []


def test_unknown_cell_writes_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    write_run(tmp_path / "run", rng)
    cfg_path = tmp_path / "run" / "config.json"
    data = json.loads(cfg_path.read_text())
    data["model"]["cell"] = "quantum-lstm"
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="unknown cell 'quantum-lstm'"):
        export_run(tmp_path / "run", tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_destination_and_precision_checks(tmp_path: Path, rng: np.random.Generator) -> None:
    write_run(tmp_path / "run", rng)
    with pytest.raises(ConfigError, match="precision: unknown precision 'fp8'"):
        export_run(tmp_path / "run", tmp_path / "model", precision="fp8")
    assert not (tmp_path / "model").exists()
    out = export_run(tmp_path / "run", tmp_path / "model")
    before = (out / "model.json").read_text()
    with pytest.raises(ConfigError, match="already exists"):
        export_run(tmp_path / "run", out)
    assert (out / "model.json").read_text() == before
    export_run(tmp_path / "run", out, precision="fp16", overwrite=True)
    assert load_model_dir(out).precision == "fp16"
    assert leftovers(tmp_path) == []
