"""``seqpred import onnx|torch``: bring a recurrent model trained elsewhere into a seqpred model directory.

::

    seqpred import onnx MODEL.onnx --out models/NAME [--vocab VOCAB] [--precision fp32|fp16|int8] [--overwrite]
    seqpred import torch STATE.safetensors --arch lstm|gru --layers L --out models/NAME [--prefix P] [--vocab ...]

User errors (a file that is not a model, an operator attribute without a cell, missing keys, ...) are one line
``seqpred: error: ...`` and exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from model.errors import EXIT_INTERRUPTED, ConfigError, SeqpredError, report_error


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become a one-line :class:`ConfigError` (exit 2) instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="model directory to write (step.onnx, sequence.onnx, model.json)")
    p.add_argument(
        "--vocab",
        default=None,
        help="JSON list of token strings (index = id) or a seqpred vocab.json; without it the model serves token ids",
    )
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seqpred import", description="Import a recurrent model trained elsewhere.")
    sub = parser.add_subparsers(dest="source", required=True, parser_class=_Parser)
    p = sub.add_parser(
        "onnx",
        help="an ONNX model built on the LSTM, GRU or RNN operator",
        description="Map an ONNX model whose recurrence is the built-in LSTM, GRU or RNN operator (stacked, after "
        "an embedding or projection, before a linear head and optional LogSoftmax/Softmax) onto seqpred's cells.",
    )
    p.add_argument("model", help="the .onnx file")
    _common(p)
    p = sub.add_parser(
        "torch",
        help="a PyTorch state_dict saved with safetensors",
        description="Map a state_dict of nn.Embedding + nn.LSTM/nn.GRU + nn.Linear saved with safetensors.",
    )
    p.add_argument("state", help="the .safetensors file (a .pt/.pth file is never unpickled)")
    p.add_argument("--arch", required=True, choices=("lstm", "gru"), help="the recurrent module's type")
    p.add_argument("--layers", required=True, type=int, help="its num_layers")
    p.add_argument("--prefix", default="", help="the prefix every key starts with (e.g. 'model.')")
    _common(p)
    return parser


def main_import(argv: Sequence[str] | None = None) -> int:
    try:
        a = build_parser().parse_args(argv)
        return _run(a)
    except SeqpredError as e:
        return report_error(e)
    except KeyboardInterrupt:
        print("seqpred: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(a: Any) -> int:
    from model.importers.write import import_onnx, import_torch

    out = Path(a.out)
    if out.is_dir() and not a.overwrite:  # the API's own check words it for Python callers (overwrite=True)
        raise ConfigError(f"out: {str(out)!r} already exists; pass --overwrite to replace it")
    if a.source == "onnx":
        path = import_onnx(a.model, a.out, vocab=a.vocab, precision=a.precision, overwrite=a.overwrite)
        src = a.model
    else:
        path = import_torch(
            a.state,
            a.out,
            arch=a.arch,
            layers=a.layers,
            prefix=a.prefix,
            vocab=a.vocab,
            precision=a.precision,
            overwrite=a.overwrite,
        )
        src = a.state
    from model.export import load_model_dir

    md = load_model_dir(path)
    cfg = md.config
    tok = md.tokenizer
    what = f"vocabulary {cfg.vocab_size} ({tok.kind})" if tok is not None else f"{cfg.input_dim} real-valued inputs"
    print(f"imported {src} -> {path}: {cfg.cell} L={cfg.layers} H={cfg.hidden}, {what}, {md.precision}")
    return 0
