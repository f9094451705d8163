"""Run directories: self-describing checkpoints that load without pickle and never half-write.

A run directory holds::

    config.json       {"format": 1, "model": ModelConfig, "train": TrainConfig}
    checkpoint.npz    param/<name>, opt/<key>, stream/<l>/h|c (carried TBPTT state), meta (a JSON string)
    vocab.json        the tokenizer (absent for numeric models)
    metrics.jsonl     one JSON object per logged step / evaluation

``checkpoint.npz`` is loaded with ``allow_pickle=False``; every array is checked against the shapes the config
implies, and unknown config keys are rejected by name. Files are written to a temporary name and renamed into
place, so a crash or a diverged run leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.config import ModelConfig
from model.data.tokenizers import Tokenizer, tokenizer_from_dict
from model.errors import CheckpointError, ConfigError, SeqpredError
from model.network import param_shapes

FORMAT = 1
CONFIG = "config.json"
CHECKPOINT = "checkpoint.npz"
VOCAB = "vocab.json"
METRICS = "metrics.jsonl"


@dataclass
class Run:
    """A loaded run: config, float32 parameters, tokenizer, and what training left behind."""

    model: ModelConfig
    params: dict[str, np.ndarray]
    tokenizer: Tokenizer | None
    meta: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    opt_state: dict[str, np.ndarray] = field(default_factory=dict)
    stream_state: dict[str, np.ndarray] = field(default_factory=dict)


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_checkpoint(
    run_dir: Path,
    params: dict[str, np.ndarray],
    opt_state: dict[str, np.ndarray],
    stream_state: dict[str, np.ndarray],
    meta: dict[str, Any],
) -> Path:
    """Write ``checkpoint.npz`` atomically (temp file, fsync, rename)."""
    arrays: dict[str, Any] = {f"param/{k}": v for k, v in params.items()}
    arrays.update({f"opt/{k}": v for k, v in opt_state.items()})
    arrays.update({f"stream/{k}": v for k, v in stream_state.items()})
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    path = run_dir / CHECKPOINT
    tmp = run_dir / (CHECKPOINT + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def save_config(run_dir: Path, model: ModelConfig, train: dict[str, Any]) -> None:
    write_json_atomic(run_dir / CONFIG, {"format": FORMAT, "model": model.to_dict(), "train": train})


def read_config(run_dir: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """Parse ``config.json``: the model config (unknown keys rejected) and the training config dict."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise CheckpointError(f"run directory {str(run_dir)!r}: no {CONFIG} (not a training run?)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported format {data.get('format') if isinstance(data, dict) else data!r}")
    unknown = sorted(set(data) - {"format", "model", "train"})
    if unknown:
        raise CheckpointError(f"{path}: unknown key {unknown[0]!r}")
    try:
        model = ModelConfig.from_dict(data.get("model") or {})
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    train = data.get("train") or {}
    return model, train


def load_run(run_dir: str | os.PathLike[str], with_training_state: bool = False) -> Run:
    """Load a run directory, checking every array against the shapes its config implies.

    Raises :class:`CheckpointError` with one line naming the file and the problem (missing directory or
    checkpoint, corrupt file, missing or mis-shaped array, bad config).
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise CheckpointError(f"run directory {str(d)!r} does not exist")
    model, train = read_config(d)
    ckpt = d / CHECKPOINT
    if not ckpt.is_file():
        raise CheckpointError(f"run directory {str(d)!r}: no {CHECKPOINT}")
    try:
        with np.load(ckpt, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{ckpt}: corrupt checkpoint ({type(e).__name__}: {e})") from None
    params: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(model).items():
        key = f"param/{name}"
        if key not in arrays:
            raise CheckpointError(f"{ckpt}: missing array {name!r}")
        a = arrays[key]
        if a.shape != shape:
            raise CheckpointError(f"{ckpt}: array {name!r} has shape {a.shape}, expected {shape}")
        if not np.issubdtype(a.dtype, np.floating):
            raise CheckpointError(f"{ckpt}: array {name!r} has dtype {a.dtype}, expected float")
        params[name] = a.astype(np.float32, copy=False)
    meta: dict[str, Any] = {}
    if "meta" in arrays:
        try:
            meta = json.loads(str(arrays["meta"]))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{ckpt}: corrupt meta ({e})") from None
    tokenizer = None
    if model.token_input:
        vpath = d / VOCAB
        try:
            tokenizer = tokenizer_from_dict(json.loads(vpath.read_text()))
        except FileNotFoundError:
            raise CheckpointError(f"run directory {str(d)!r}: no {VOCAB}") from None
        except (json.JSONDecodeError, SeqpredError) as e:
            raise CheckpointError(f"{vpath}: {e}") from None
        if tokenizer.vocab_size != model.vocab_size:
            raise CheckpointError(
                f"{vpath}: vocabulary has {tokenizer.vocab_size} tokens, the model expects {model.vocab_size}"
            )
    run = Run(model=model, params=params, tokenizer=tokenizer, meta=meta, train=train)
    if with_training_state:
        run.opt_state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}
        run.stream_state = {k[7:]: v for k, v in arrays.items() if k.startswith("stream/")}
    return run
