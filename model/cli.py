"""The ``seqpred`` command line: train, eval, sample, export, gradcheck; serve, client and score (from
``service``); import (``model.importers``).

Every user error (bad flag value, missing corpus, corrupt checkpoint, ...) ends with one line
``seqpred: error: ...`` on stderr and exit code 2, before anything on disk is touched.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.config import CELLS, SHARDS_ON
from model.errors import EXIT_INTERRUPTED, ConfigError, SeqpredError, report_error
from model.train.checkpoint import load_run


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model on a corpus", description="Train a recurrent language model.")
    p.add_argument(
        "--corpus", default="stdlib", help="'stdlib' (default), 'tinyshakespeare', a text file, a directory or a glob"
    )
    p.add_argument("--tokenizer", default="char", choices=("char", "byte", "word"))
    p.add_argument("--max-words", type=int, default=10000, help="word tokenizer vocabulary size")
    p.add_argument("--max-vocab", type=int, default=0, help="char tokenizer: keep the N-1 most frequent (0 = all)")
    p.add_argument("--max-chars", type=int, default=0, help="read at most this many corpus characters (0 = all)")
    p.add_argument("--cell", default="lstm", help=f"one of: {', '.join(CELLS)}")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0, help="dropout between layers while training")
    p.add_argument("--forget-bias", type=float, default=1.0, help="initial forget-gate bias (default +1)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64, help="truncated-BPTT window length")
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (0 = use --minutes)")
    p.add_argument("--minutes", type=float, default=0.0, help="wall time of the whole run, final evaluation included")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1, help="final lr as a fraction of --lr (cosine)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--clip", type=float, default=5.0, help="global gradient-norm clip (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=250, help="steps between periodic validation checks")
    p.add_argument("--check-tokens", type=int, default=50_000, help="validation tokens per periodic check")
    p.add_argument(
        "--eval-tokens",
        type=_token_count,
        default=200_000,
        help="validation tokens of the final evaluation, spread over the split (default 200000; 'all': every one)",
    )
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=0, help="cores sharing each batch (0 = one per core)")
    p.add_argument("--shards-on", default=SHARDS_ON[0], choices=SHARDS_ON, help="where each core's shard runs")
    p.add_argument("--out", required=True, help="run directory to create")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="validation loss of a trained run")
    p.add_argument("run_dir")
    p.add_argument("--corpus", default=None, help="corpus spec (default: the one the run trained on)")
    p.add_argument("--split", default="val", choices=("val", "train"))
    p.add_argument("--max-chars", type=int, default=None, help="read at most this many corpus characters")
    p.add_argument(
        "--max-tokens",
        type=_token_count,
        default=200_000,
        help="tokens scored, spread over the split as in training's final evaluation (default 200000; 'all')",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _token_count(text: str) -> int:
    """``N`` (>= 2) or ``all`` (0)."""
    if text.strip().lower() == "all":
        return 0
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or 'all', got {text!r}") from None
    if n < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (or 'all'), got {n}")
    return n


def _add_sample(sub: Any) -> None:
    p = sub.add_parser("sample", help="generate text from a trained run")
    p.add_argument("run_dir")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="export a run to ONNX (step.onnx, sequence.onnx, model.json)")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")


def _add_gradcheck(sub: Any) -> None:
    p = sub.add_parser(
        "gradcheck",
        help="check a cell's BPTT gradients against float64 finite differences",
        description="Check the exact BPTT gradient of a tiny network of one cell (V=5, E=3, H=4, B=2, T=4, "
        "float64, random non-zero initial state) against central finite differences: one row per parameter "
        "block and initial state, max relative error max|a-n| / max(max|n|, 1e-8). Exit 0 when every block is "
        "below 1e-6, 1 when any is not.",
    )
    p.add_argument("--cell", required=True, metavar="NAME", help=f"one of: {', '.join(CELLS)}")
    p.add_argument(
        "--layers",
        type=int,
        default=None,
        help="recurrent layers (default 1; 2 for depth-gated, whose layer 0 has no depth gate)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--seed", type=int, default=0, help="seed of the parameters, batch and initial state")


#: Subcommands that parse their own flags (``seqpred NAME --help``), imported only when used.
SERVICE_COMMANDS = {
    "serve": ("service.cli", "main_serve", "run the gRPC streaming server"),
    "client": ("service.cli", "main_client", "stream text to a server and show its predictions"),
    "score": ("service.scoring.cli", "main_score", "score sequences offline with sequence.onnx"),
    "durability": ("service.durability.cli", "main_durability", "check or salvage a --state-dir after damage"),
    "experiment": ("model.experiments.cli", "main_experiment", "run a benchmark experiment (memory, variants)"),
    "import": ("model.importers.cli", "main_import", "import an ONNX or PyTorch recurrent model (onnx, torch)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqpred", description="Train, export, serve and score recurrent sequence models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_eval, _add_sample, _add_export, _add_gradcheck):
        add(sub)
    for name, (_, _, text) in SERVICE_COMMANDS.items():
        sub.add_parser(name, add_help=False, help=f"{text} (seqpred {name} --help)")
    return parser


def cmd_train(a: argparse.Namespace) -> int:
    from model.train.command import run_train

    return run_train(a)


def cmd_eval(a: argparse.Namespace) -> int:
    from model.train.command import run_eval

    return run_eval(a)


def cmd_sample(a: argparse.Namespace) -> int:
    from model.train.evaluate import generate

    if a.length < 0:
        raise ConfigError(f"length: must be >= 0, got {a.length}")
    if a.temperature < 0 or a.top_k < 0 or not 0 < a.top_p <= 1:
        raise ConfigError(f"sampling: temperature {a.temperature}, top-k {a.top_k}, top-p {a.top_p} out of range")
    run = load_run(a.run_dir)
    assert run.tokenizer is not None
    prompt = run.tokenizer.encode(a.prompt or "\n")
    if len(prompt) == 0:
        raise ConfigError(f"prompt: {a.prompt!r} encodes to no tokens")
    rng = np.random.default_rng(a.seed)
    ids = generate(run.model, run.params, prompt, a.length, rng, a.temperature, a.top_k, a.top_p)
    print(a.prompt + run.tokenizer.decode(ids))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from model.export import export_run

    out = Path(a.out)
    if out.is_dir() and not a.overwrite:  # the API's own check words it for Python callers (overwrite=True)
        raise ConfigError(f"out: {str(out)!r} already exists; pass --overwrite to replace it")
    path = export_run(a.run_dir, a.out, precision=a.precision, overwrite=a.overwrite)
    print(f"exported {a.run_dir} -> {path}")
    return 0


def cmd_gradcheck(a: argparse.Namespace) -> int:
    from model.train.gradcheck import check, default_layers, table

    if a.cell not in CELLS:
        raise ConfigError(f"--cell: unknown cell {a.cell!r}; choose one of {', '.join(CELLS)}")
    layers = default_layers(a.cell) if a.layers is None else a.layers
    if layers < 1:
        raise ConfigError(f"--layers: must be a positive integer, got {layers}")
    res = check(a.cell, layers, np.random.default_rng(a.seed))
    print(json.dumps(res.to_dict()) if a.json else table(res))
    return 0 if res.ok else 1


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "sample": cmd_sample,
    "export": cmd_export,
    "gradcheck": cmd_gradcheck,
}


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()  # --minutes bounds the whole command, from here
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] and args_list[0] in SERVICE_COMMANDS:
        import importlib

        module, func, _ = SERVICE_COMMANDS[args_list[0]]
        entry = getattr(importlib.import_module(module), func)
        return int(entry(args_list[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = started
    try:
        return COMMANDS[args.command](args)
    except SeqpredError as e:
        return report_error(e)
    except KeyboardInterrupt:
        print("seqpred: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
