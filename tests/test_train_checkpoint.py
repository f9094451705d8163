"""Run directories: strict loading, no pickle, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model import network as N
from model.config import ModelConfig
from model.data.tokenizers import CharTokenizer
from model.errors import CheckpointError
from model.train.checkpoint import load_run, save_checkpoint, save_config, write_json_atomic


def _write_run(d: Path, rng: np.random.Generator) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    tok = CharTokenizer.fit("abcdef")
    cfg = ModelConfig(cell="gru-lbr", layers=2, hidden=5, vocab_size=tok.vocab_size, embed=3)
    params = N.init_params(cfg, rng)
    d.mkdir()
    save_config(d, cfg, {"corpus": "x"})
    write_json_atomic(d / "vocab.json", tok.to_dict())
    save_checkpoint(d, params, {}, {}, {"step": 3})
    return cfg, params


def test_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    cfg, params = _write_run(tmp_path / "r", rng)
    run = load_run(tmp_path / "r")
    assert run.model == cfg and run.meta == {"step": 3} and run.train == {"corpus": "x"}
    assert run.tokenizer is not None and run.tokenizer.vocab_size == cfg.vocab_size
    for k, v in params.items():
        np.testing.assert_array_equal(run.params[k], v)


def _rewrite(d: Path, mutate) -> None:  # type: ignore[no-untyped-def]
    with np.load(d / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files}
    mutate(arrays)
    np.savez(d / "checkpoint.npz", **arrays)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.pop("param/layer1/R"), "missing array 'layer1/R'"),
        (
            lambda a: a.update({"param/head/W": np.zeros((2, 2))}),
            "array 'head/W' has shape (2, 2), expected (7, 5)",
        ),
        (
            lambda a: a.update({"param/embed": np.zeros((7, 3), dtype=np.int32)}),
            "has dtype int32, expected float",
        ),
    ],
)
def test_bad_arrays(tmp_path: Path, rng: np.random.Generator, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "r"
    _write_run(d, rng)
    _rewrite(d, mutate)
    with pytest.raises(CheckpointError) as e:
        load_run(d)
    assert message in str(e.value)


def test_pickled_arrays_are_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    d = tmp_path / "r"
    _write_run(d, rng)
    _rewrite(d, lambda a: a.update({"meta": np.array([{"evil": 1}], dtype=object)}))
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_run(d)


def test_unknown_config_key(tmp_path: Path, rng: np.random.Generator) -> None:
    d = tmp_path / "r"
    _write_run(d, rng)
    data = json.loads((d / "config.json").read_text())
    data["model"]["bidirectional"] = True
    (d / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="unknown key 'bidirectional'"):
        load_run(d)


def test_missing_pieces(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "nope")
    d = tmp_path / "r"
    _write_run(d, rng)
    (d / "vocab.json").unlink()
    with pytest.raises(CheckpointError, match=r"no vocab\.json"):
        load_run(d)
    (d / "checkpoint.npz").unlink()
    with pytest.raises(CheckpointError, match=r"no checkpoint\.npz"):
        load_run(d)


class _Payload:
    """Unpickling this creates a file: proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_a_pickled_payload_is_never_unpickled(tmp_path: Path, rng: np.random.Generator) -> None:
    import io
    import pickle
    import zipfile

    d = tmp_path / "r"
    _write_run(d, rng)
    marker = tmp_path / "pwned"
    # 1. the whole checkpoint replaced by a pickle
    (d / "checkpoint.npz").write_bytes(pickle.dumps({"param/x": _Payload(marker)}))
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_run(d)
    # 2. a well-formed npz whose member is an object array: a .npy holding a pickle
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(d / "checkpoint.npz", "w") as z:
        z.writestr("meta.npy", buf.getvalue())
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_run(d)
    assert not marker.exists()
