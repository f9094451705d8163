"""Export a training run to a model directory (``step.onnx``, ``sequence.onnx``, ``model.json``).

Nothing is written at the destination until everything has been built, checked and saved: the files go to
a temporary sibling directory that is renamed into place at the end, so bad input (a run directory without
checkpoint, mis-shaped arrays, an unknown cell) raises a one-line :class:`CheckpointError` or
:class:`ConfigError` and leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from model.config import ModelConfig
from model.data.tokenizers import Tokenizer
from model.errors import CheckpointError, ConfigError
from model.export.builder import OPSET
from model.export.manifest import (
    GRAPH_FILES,
    PRECISIONS,
    build_manifest,
    graph_metadata,
    load_model_dir,
    write_manifest,
)
from model.export.precision import convert
from model.export.sequence import build_sequence
from model.export.step import build_step
from model.export.weights import check_params, prepare


def export_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    precision: str = "fp32",
    *,
    overwrite: bool = False,
) -> Path:
    """Export the run in ``run_dir`` (see :func:`model.train.checkpoint.load_run`) to the model directory ``out_dir``.

    Args:
        run_dir: a training run directory (config.json, checkpoint.npz, vocab.json).
        out_dir: the model directory to create; it must not exist unless ``overwrite`` is true.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (see :mod:`model.export.precision`).
        overwrite: replace an existing ``out_dir`` (atomically swapped in once the new one is complete).

    Returns the model directory's path. Raises :class:`CheckpointError` for a missing or broken run and
    :class:`ConfigError` for a bad precision, cell or destination; nothing is written at ``out_dir`` then.
    """
    from model.train.checkpoint import load_run

    _check_destination(Path(out_dir), precision, overwrite)
    run = load_run(run_dir)
    return export_model(
        run.model,
        run.params,
        run.tokenizer,
        run.meta,
        out_dir,
        precision,
        overwrite=overwrite,
        source=str(run_dir),
    )


def export_model(
    cfg: ModelConfig,
    params: dict[str, np.ndarray],
    tokenizer: Tokenizer | None,
    meta: dict[str, Any],
    out_dir: str | os.PathLike[str],
    precision: str = "fp32",
    *,
    overwrite: bool = False,
    source: str | None = None,
    imported: dict[str, Any] | None = None,
) -> Path:
    """Export in-memory weights (``params`` named as :func:`model.network.param_shapes`); see :func:`export_run`.

    ``imported``: for a model brought in by ``seqpred import`` (:mod:`model.importers`), where it came from
    (``format``, ``source``, ``sha256``, ``mapping``); recorded as ``provenance.import`` in ``model.json``.
    """
    out = Path(out_dir)
    _check_destination(out, precision, overwrite)
    if cfg.token_input and (tokenizer is None or tokenizer.vocab_size != cfg.vocab_size):
        got = "none" if tokenizer is None else f"{tokenizer.vocab_size} tokens"
        raise CheckpointError(f"tokenizer: the model has {cfg.vocab_size} token ids, its tokenizer {got}")
    models = build_graphs(cfg, params, precision)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        written: dict[str, tuple[onnx.ModelProto, Path]] = {}
        for key, model in models.items():
            path = tmp / GRAPH_FILES[key]
            onnx.save(model, path)
            written[key] = (model, path)
        write_manifest(tmp, build_manifest(cfg, tokenizer, meta, precision, written, source, OPSET, imported))
        load_model_dir(tmp)  # the directory we hand out must load
        _swap_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_graphs(
    cfg: ModelConfig, params: dict[str, np.ndarray], precision: str = "fp32"
) -> dict[str, onnx.ModelProto]:
    """The checked ``step`` and ``sequence`` models of ``cfg`` in ``precision`` (nothing is written)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    p = check_params(cfg, params)
    layers = prepare(cfg, p)
    md = graph_metadata(cfg, precision)
    gemm = precision != "int8"  # dynamic int8 quantizes MatMul, not Gemm
    return {
        "step": convert(build_step(cfg, layers, p, md, gemm=gemm), precision),
        "sequence": convert(build_sequence(cfg, layers, p, md, gemm=gemm), precision),
    }


def _check_destination(out: Path, precision: str, overwrite: bool) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {str(out)!r} exists and is not a directory")
    if out.exists() and not overwrite:
        raise ConfigError(f"out: {str(out)!r} already exists (pass overwrite=True to replace it)")


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
