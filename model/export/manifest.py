"""``model.json``: what a model directory holds, and loading it back with every checksum verified.

A model directory::

    model.json       this manifest (format version, config, vocabulary, state layout, checksums, provenance)
    step.onnx        one time step
    sequence.onnx    right-padded batch scoring

The manifest records the model config, the tokenizer (its ``to_dict``, i.e. the whole vocabulary), the
name/shape/order of every state tensor, the inputs and outputs of each graph, the sha256 of each graph file,
the precision and where the weights came from (run directory, corpus, training steps and tokens, validation
loss; for an imported model, ``provenance.import``: the source file, its sha256 and how it was mapped).
:func:`load_model_dir` refuses a directory whose files do not match their checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from model.config import ModelConfig
from model.data.tokenizers import Tokenizer, tokenizer_from_dict
from model.errors import CheckpointError, SeqpredError
from model.export.signature import StateTensor, state_tensors

#: Bump when the graph interface or the manifest layout changes incompatibly.
FORMAT_VERSION = 1
MANIFEST = "model.json"
GRAPH_FILES = {"step": "step.onnx", "sequence": "sequence.onnx"}
PRECISIONS = ("fp32", "fp16", "int8")
_KEYS = {"format_version", "producer", "precision", "opset", "model", "tokenizer", "states", "graphs", "provenance"}


def graph_metadata(cfg: ModelConfig, precision: str) -> dict[str, str]:
    """The essentials every graph carries in ``metadata_props`` (readable without the manifest)."""
    return {
        "format_version": str(FORMAT_VERSION),
        "cell": cfg.cell,
        "layers": str(cfg.layers),
        "hidden": str(cfg.hidden),
        "vocab_size": str(cfg.vocab_size),
        "state_names": json.dumps([s.name for s in state_tensors(cfg)]),
        "precision": precision,
        "model_config": json.dumps(cfg.to_dict(), sort_keys=True),
    }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _io(values: Any) -> list[dict[str, Any]]:
    """Name, dtype and shape (ints or symbolic names) of graph inputs or outputs."""
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        out.append({"name": v.name, "dtype": dtype, "shape": dims})
    return out


def build_manifest(
    cfg: ModelConfig,
    tokenizer: Tokenizer | None,
    meta: dict[str, Any],
    precision: str,
    graphs: dict[str, tuple[onnx.ModelProto, Path]],
    source: str | None,
    opset: int,
    imported: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a model directory whose graph files are already written (``graphs``: model, path).

    ``imported`` (a model from ``seqpred import``) becomes ``provenance.import`` and the producer reads
    ``seqpred import``; ``provenance`` is free-form, so readers of format version 1 load such a manifest as
    any other."""
    prov: dict[str, Any] = {
        "run_dir": source,
        "corpus": meta.get("corpus"),
        "step": meta.get("step"),
        "tokens": meta.get("tokens"),
        "val_nats_per_token": meta.get("val_nats_per_token"),
        "meta": meta,
    }
    if imported is not None:
        prov["import"] = imported
    return {
        "format_version": FORMAT_VERSION,
        "producer": "seqpred export" if imported is None else "seqpred import",
        "precision": precision,
        "opset": opset,
        "model": cfg.to_dict(),
        "tokenizer": None if tokenizer is None else tokenizer.to_dict(),
        "states": [
            {
                "name": s.name,
                "output": s.out_name,
                "layer": s.layer,
                "kind": s.kind,
                "shape": ["batch", s.width],
                "dtype": "float32",
            }
            for s in state_tensors(cfg)
        ],
        "graphs": {
            key: {
                "file": path.name,
                "sha256": sha256_file(path),
                "inputs": _io(model.graph.input),
                "outputs": _io(model.graph.output),
            }
            for key, (model, path) in graphs.items()
        },
        "provenance": prov,
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return path


@dataclass(frozen=True)
class ModelDir:
    """A loaded, verified model directory."""

    path: Path
    config: ModelConfig
    tokenizer: Tokenizer | None
    precision: str
    states: list[StateTensor]
    manifest: dict[str, Any]

    @property
    def step_path(self) -> Path:
        return self.path / GRAPH_FILES["step"]

    @property
    def sequence_path(self) -> Path:
        return self.path / GRAPH_FILES["sequence"]

    @property
    def state_names(self) -> list[str]:
        return [s.name for s in self.states]

    def graph_bytes(self, fname: str) -> bytes:
        """The verified bytes of graph file ``fname`` (:func:`read_graph`)."""
        return read_graph(self.path, self.manifest, fname)

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.manifest["provenance"])


def _check_digest(gpath: Path, digest: str, entry: dict[str, Any]) -> None:
    if digest != entry.get("sha256"):
        raise CheckpointError(
            f"{gpath}: sha256 {digest[:12]}... does not match the manifest's "
            f"{str(entry.get('sha256'))[:12]}... (file modified or corrupt)"
        )


def read_graph(directory: Path, manifest: dict[str, Any], fname: str) -> bytes:
    """The bytes of graph file ``fname`` in ``directory``, checked against ``manifest``'s sha256 as they are read,
    so the bytes handed to onnxruntime are the bytes verified (a file swapped after :func:`load_model_dir` is
    caught). A file the manifest does not list is refused. Raises :class:`CheckpointError` naming the file."""
    entry = next((g for g in manifest.get("graphs", {}).values() if g.get("file") == fname), None)
    fpath = directory / fname
    if entry is None:
        raise CheckpointError(
            f"{fpath}: not listed in {MANIFEST}'s graphs, so its sha256 cannot be checked; remove it or "
            "list it with its sha256"
        )
    try:
        data = fpath.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{fpath}: unreadable ({e.strerror or e})") from None
    _check_digest(fpath, hashlib.sha256(data).hexdigest(), entry)
    return data


def load_model_dir(path: str | os.PathLike[str]) -> ModelDir:
    """Parse ``model.json`` and verify every graph file's sha256.

    Raises :class:`CheckpointError` with one line naming the file: missing directory, manifest or graph,
    unreadable JSON, unsupported format version, bad config or tokenizer, checksum mismatch.
    """
    d = Path(path)
    if not d.is_dir():
        raise CheckpointError(f"model directory {str(d)!r} does not exist")
    mpath = d / MANIFEST
    try:
        m = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"model directory {str(d)!r}: no {MANIFEST} (not an exported model?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{mpath}: unreadable JSON ({e})") from None
    if not isinstance(m, dict):
        raise CheckpointError(f"{mpath}: expected a JSON object")
    if m.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{mpath}: unsupported format_version {m.get('format_version')!r} (this code reads {FORMAT_VERSION})"
        )
    unknown = sorted(set(m) - _KEYS)
    if unknown:
        raise CheckpointError(f"{mpath}: unknown key {unknown[0]!r}")
    missing = sorted(_KEYS - set(m))
    if missing:
        raise CheckpointError(f"{mpath}: missing key {missing[0]!r}")
    try:
        cfg = ModelConfig.from_dict(m["model"])
        tok = None if m["tokenizer"] is None else tokenizer_from_dict(m["tokenizer"])
    except SeqpredError as e:
        raise CheckpointError(f"{mpath}: {e}") from None
    if cfg.token_input and (tok is None or tok.vocab_size != cfg.vocab_size):
        got = "none" if tok is None else f"{tok.vocab_size} tokens"
        raise CheckpointError(f"{mpath}: tokenizer ({got}) does not match vocab_size {cfg.vocab_size}")
    if m["precision"] not in PRECISIONS:
        raise CheckpointError(f"{mpath}: unknown precision {m['precision']!r}")
    states = state_tensors(cfg)
    if [s.get("name") for s in m["states"]] != [s.name for s in states]:
        raise CheckpointError(f"{mpath}: state tensors do not match the {cfg.cell} x {cfg.layers} config")
    for entry, s in zip(m["states"], states, strict=True):
        if entry.get("shape") != ["batch", s.width]:
            raise CheckpointError(
                f"{mpath}: state {s.name!r} has shape {entry.get('shape')!r}, the config needs ['batch', {s.width}]"
            )
    for key, fname in GRAPH_FILES.items():
        entry = m["graphs"].get(key)
        if not isinstance(entry, dict) or entry.get("file") != fname:
            raise CheckpointError(f"{mpath}: graphs.{key} must name {fname!r}")
        gpath = d / fname
        if not gpath.is_file():
            raise CheckpointError(f"model directory {str(d)!r}: missing {fname}")
        _check_digest(gpath, sha256_file(gpath), entry)
    return ModelDir(path=d, config=cfg, tokenizer=tok, precision=m["precision"], states=states, manifest=m)
