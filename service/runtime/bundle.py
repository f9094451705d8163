"""A model directory as the service loads it: ``step.onnx``, ``sequence.onnx``, ``model.json`` (and optionally
``head.onnx``), verified against the manifest's sha256 before anything is handed to onnxruntime."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import ModelConfig
from model.data.tokenizers import Tokenizer
from model.errors import SeqpredError
from service.errors import ModelLoadError

STEP = "step.onnx"
SEQUENCE = "sequence.onnx"
HEAD = "head.onnx"
MANIFEST = "model.json"


@dataclass(frozen=True)
class ModelBundle:
    """A verified model directory: paths, config, tokenizer, and what the server reports about it."""

    path: Path
    config: ModelConfig
    tokenizer: Tokenizer
    precision: str
    manifest_sha256: str
    manifest: dict[str, Any]

    @property
    def step_path(self) -> Path:
        return self.path / STEP

    @property
    def sequence_path(self) -> Path:
        return self.path / SEQUENCE

    def graph_bytes(self, fname: str) -> bytes:
        """The bytes of graph file ``fname``, checked against the manifest's sha256 as they are read (the bytes
        handed to onnxruntime are the bytes verified; :func:`model.export.manifest.read_graph`); a file the
        manifest does not list is refused. Raises :class:`ModelLoadError` naming the file."""
        from model.export.manifest import read_graph

        try:
            return read_graph(self.path, self.manifest, fname)
        except SeqpredError as e:
            raise ModelLoadError(f"model: {e}") from None


def load_bundle(path: str | Path) -> ModelBundle:
    """Read a model directory with :func:`model.export.load_model_dir` (which verifies every graph's sha256);
    any problem raises :class:`ModelLoadError` naming the file."""
    from model.export import load_model_dir

    root = Path(path)
    try:
        md = load_model_dir(root)
    except SeqpredError as e:
        raise ModelLoadError(f"model: {e}") from None
    if not md.config.token_input or md.tokenizer is None:
        raise ModelLoadError(
            f"model: {str(root)!r} is a regression model (head {md.config.head!r}); serving needs a token model"
        )
    digest = hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()
    return ModelBundle(root, md.config, md.tokenizer, md.precision, digest, md.manifest)
