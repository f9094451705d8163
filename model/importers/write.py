"""Import a foreign model: read it, map it, and write the usual model directory through :mod:`model.export`.

``--vocab`` (token models only) is a JSON file: a list of token strings (index = id; a ``list`` tokenizer,
see :mod:`model.data.vocab_tokenizers`), or a ``vocab.json`` this project writes (``{"kind": ...}``). Without
one, the model serves token ids only (an ``ids`` tokenizer: text is refused with a message that says so).

``model.json`` records the import under ``provenance.import``: ``format`` (``onnx`` or ``safetensors``),
``source`` (the file as given), ``sha256`` (of its bytes), and ``mapping`` (the cell, how the biases folded,
what the source applied after its head, and what the reader found: nodes or keys, axes, state inputs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from model.data.tokenizers import IdTokenizer, ListTokenizer, Tokenizer, tokenizer_from_dict
from model.errors import ConfigError, SeqpredError
from model.export import export_model
from model.export.manifest import PRECISIONS
from model.importers.mapping import to_model
from model.importers.spec import ImportedNet


def load_vocab(path: str | None, vocab_size: int) -> Tokenizer:
    """The tokenizer for ``--vocab PATH`` (see the module docstring); its size must be ``vocab_size``."""
    if path is None:
        return IdTokenizer(vocab_size)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"vocab: {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"vocab: {path!r} is not readable JSON ({e})") from None
    try:
        if isinstance(data, list):
            tok: Tokenizer = ListTokenizer(data)
        elif isinstance(data, dict):
            tok = tokenizer_from_dict(data)
        else:
            raise ConfigError(
                f"expected a JSON list of token strings or a seqpred vocab.json, got {type(data).__name__}"
            )
    except SeqpredError as e:
        raise ConfigError(f"vocab: {path!r}: {e}") from None
    if tok.vocab_size != vocab_size:
        raise ConfigError(f"vocab: {path!r} has {tok.vocab_size} tokens, the model's embedding has {vocab_size} rows")
    return tok


def write_import(
    net: ImportedNet,
    *,
    fmt: str,
    source: str | os.PathLike[str],
    sha256: str,
    out: str | os.PathLike[str],
    vocab: str | None = None,
    precision: str = "fp32",
    overwrite: bool = False,
) -> Path:
    """Map ``net`` and export it to the model directory ``out`` (atomically; nothing is written on error)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    cfg, params, mapping = to_model(net)
    if cfg.token_input:
        tok: Tokenizer | None = load_vocab(vocab, cfg.vocab_size)
    elif vocab is not None:
        raise ConfigError("vocab: the model reads real-valued inputs (no embedding); --vocab applies to token models")
    else:
        tok = None
    record: dict[str, Any] = {
        "format": fmt,
        "source": str(source),
        "sha256": sha256,
        "mapping": {**mapping, **net.record, "vocab": None if vocab is None else str(vocab)},
    }
    meta = {"imported_from": str(source)}
    return export_model(cfg, params, tok, meta, out, precision, overwrite=overwrite, imported=record)


def import_onnx(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    vocab: str | None = None,
    precision: str = "fp32",
    overwrite: bool = False,
) -> Path:
    """``seqpred import onnx``: the model in the ONNX file ``path`` -> the model directory ``out``."""
    from model.importers.onnx_chain import read_onnx

    net, digest = read_onnx(Path(path))
    return write_import(
        net, fmt="onnx", source=path, sha256=digest, out=out, vocab=vocab, precision=precision, overwrite=overwrite
    )


def import_torch(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    arch: str,
    layers: int,
    prefix: str = "",
    vocab: str | None = None,
    precision: str = "fp32",
    overwrite: bool = False,
) -> Path:
    """``seqpred import torch``: a PyTorch ``state_dict`` in a safetensors file -> the model directory ``out``."""
    from model.importers.torch_state import read_state_dict

    net, digest = read_state_dict(Path(path), arch=arch, layers=layers, prefix=prefix)
    return write_import(
        net,
        fmt="safetensors",
        source=path,
        sha256=digest,
        out=out,
        vocab=vocab,
        precision=precision,
        overwrite=overwrite,
    )
