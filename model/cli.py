"""The ``seqpred`` command line: train, eval, sample, export; serve, client and score (from ``service``).

Every user error (bad flag value, missing corpus, corrupt checkpoint, ...) ends with one line
``seqpred: error: ...`` on stderr and exit code 2, before anything on disk is touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.config import CELLS, SHARDS_ON, ModelConfig
from model.errors import EXIT_INTERRUPTED, CheckpointError, ConfigError, SeqpredError, report_error
from model.train.checkpoint import CHECKPOINT, CONFIG, METRICS, VOCAB, load_run, save_config, write_json_atomic


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
    p.add_argument("--minutes", type=float, default=0.0, help="stop after this much wall time")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1, help="final lr as a fraction of --lr (cosine)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--clip", type=float, default=5.0, help="global gradient-norm clip (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-tokens", type=int, default=50_000, help="validation tokens per periodic check")
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
    p.add_argument("--max-tokens", type=int, default=0, help="score at most this many tokens (0 = all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


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


#: Subcommands that parse their own flags (``seqpred NAME --help``), imported only when used.
SERVICE_COMMANDS = {
    "serve": ("service.cli", "main_serve", "run the gRPC streaming server"),
    "client": ("service.cli", "main_client", "stream text to a server and show its predictions"),
    "score": ("service.scoring.cli", "main_score", "score sequences offline with sequence.onnx"),
    "experiment": ("model.experiments.cli", "main_experiment", "run a benchmark experiment (memory, variants)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqpred", description="Train, export, serve and score recurrent sequence models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_eval, _add_sample, _add_export):
        add(sub)
    for name, (_, _, text) in SERVICE_COMMANDS.items():
        sub.add_parser(name, add_help=False, help=f"{text} (seqpred {name} --help)")
    return parser


def cmd_train(a: argparse.Namespace) -> int:
    from model.data.corpora import load_corpus
    from model.data.streams import make_streams
    from model.data.tokenizers import make_tokenizer
    from model.train.loop import TrainConfig, train

    tc = TrainConfig(
        corpus=a.corpus,
        tokenizer=a.tokenizer,
        max_words=a.max_words,
        max_vocab=a.max_vocab,
        max_chars=a.max_chars,
        batch=a.batch,
        seq_len=a.seq_len,
        steps=a.steps,
        minutes=a.minutes,
        lr=a.lr,
        min_lr_frac=a.min_lr_frac,
        warmup=a.warmup,
        optimizer=a.optimizer,
        clip=a.clip,
        seed=a.seed,
        eval_every=a.eval_every,
        eval_tokens=a.eval_tokens,
        checkpoint_every=a.checkpoint_every,
        threads=a.threads,
        shards_on=a.shards_on,
    )
    out = Path(a.out)
    has_run = (out / CHECKPOINT).exists() or (out / CONFIG).exists()
    resume = None
    if a.resume:
        resume = load_run(out, with_training_state=True)
        _check_resume(resume.train, tc)
    elif has_run and not a.overwrite:
        raise CheckpointError(f"out: {str(out)!r} already holds a run; pass --resume or --overwrite")
    elif out.exists() and not out.is_dir():
        raise ConfigError(f"out: {str(out)!r} exists and is not a directory")
    corpus = load_corpus(tc.corpus, max_chars=tc.max_chars or None)
    if resume is not None:
        tok = resume.tokenizer
    else:
        tok = make_tokenizer(tc.tokenizer, corpus.train, tc.max_words, tc.max_vocab)
    assert tok is not None
    cfg = ModelConfig(
        cell=a.cell,
        layers=a.layers,
        hidden=a.hidden,
        vocab_size=tok.vocab_size,
        embed=a.embed,
        dropout=a.dropout,
        forget_bias=a.forget_bias,
    )
    if resume is not None and resume.model != cfg:
        diff = [k for k, v in cfg.to_dict().items() if resume.model.to_dict()[k] != v]
        raise CheckpointError(
            f"resume: {diff[0]} is {resume.model.to_dict()[diff[0]]!r} in the checkpoint, "
            f"{cfg.to_dict()[diff[0]]!r} requested"
        )
    train_ids, val_ids = tok.encode(corpus.train), tok.encode(corpus.val)
    make_streams(train_ids, tc.batch, tc.seq_len)
    make_streams(val_ids, 1, 1, what="validation")
    # everything is valid: only now touch the disk
    if resume is None:
        if a.overwrite and out.exists():
            for name in (CHECKPOINT, CONFIG, VOCAB, METRICS, "learning_curve.png"):
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / VOCAB, tok.to_dict())
    save_config(out, cfg, tc.to_dict())
    print(
        f"corpus {corpus.name}: {len(train_ids):,} train / {len(val_ids):,} validation tokens, "
        f"vocabulary {tok.vocab_size} ({tok.kind}); {cfg.cell} L={cfg.layers} H={cfg.hidden}"
        + (f", resuming at step {resume.meta['step']}" if resume else ""),
        file=sys.stderr,
    )
    meta_base = {"corpus": corpus.name, "tokenizer": tok.kind, "train_tokens": len(train_ids)}
    bar = None if a.no_progress else _progress_bar(tc)
    try:
        res = train(out, cfg, tc, train_ids, val_ids, meta_base, resume=resume, progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    from model.train.plots import learning_curve

    png = learning_curve(out / METRICS, out / "learning_curve.png")
    val = "n/a" if res.val_nats_per_token is None else f"{res.val_nats_per_token:.4f}"
    print(
        f"done: {res.step} steps, {res.tokens:,} tokens in {res.minutes:.2f} min; train loss {res.train_loss:.4f}, "
        f"validation {val} nats/token; checkpoint {out / CHECKPOINT}" + (f"; curve {png}" if png else "")
    )
    return 0


def _check_resume(saved: dict[str, Any], tc: Any) -> None:
    for key in ("corpus", "tokenizer", "max_words", "max_vocab", "max_chars", "batch", "seq_len", "threads"):
        if key in saved and saved[key] != getattr(tc, key):
            raise CheckpointError(f"resume: {key} is {saved[key]!r} in the checkpoint, {getattr(tc, key)!r} requested")


class _progress_bar:
    """tqdm bar over steps (or seconds, for a time-bounded run) showing loss and tokens/s."""

    def __init__(self, tc: Any) -> None:
        from tqdm import tqdm

        self.by_steps = bool(tc.steps)
        total = tc.steps if self.by_steps else round(tc.minutes * 60)
        self.bar = tqdm(total=total, unit="step" if self.by_steps else "s", file=sys.stderr, dynamic_ncols=True)

    def update(self, rec: dict[str, Any]) -> None:
        if "loss" in rec:
            target = rec["step"] if self.by_steps else min(round(rec["elapsed_s"]), self.bar.total)
            self.bar.update(max(0, target - self.bar.n))
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:,.0f}", refresh=False)
        elif "val_nats_per_token" in rec:
            self.bar.write(f"step {rec['step']}: validation {rec['val_nats_per_token']:.4f} nats/token")

    def close(self) -> None:
        self.bar.close()


def cmd_eval(a: argparse.Namespace) -> int:
    from model.data.corpora import load_corpus
    from model.train.evaluate import evaluate, summary

    run = load_run(a.run_dir)
    spec = a.corpus or run.train.get("corpus") or "stdlib"
    max_chars = a.max_chars if a.max_chars is not None else (run.train.get("max_chars") or None)
    corpus = load_corpus(spec, max_chars=max_chars)
    assert run.tokenizer is not None
    ids = run.tokenizer.encode(corpus.val if a.split == "val" else corpus.train)
    nats, n = evaluate(run.model, run.params, ids, batch=32, seq_len=256, max_tokens=a.max_tokens)
    res = {"corpus": corpus.name, "split": a.split, "tokens": n, **summary(nats)}
    if a.json:
        print(json.dumps(res))
    else:
        print(
            f"{corpus.name} [{a.split}] {n:,} tokens: {nats:.4f} nats/token, "
            f"{res['bits_per_token']:.4f} bits/token, perplexity {res['perplexity']:.3f}"
        )
    return 0


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


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "export": cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] and args_list[0] in SERVICE_COMMANDS:
        import importlib

        module, func, _ = SERVICE_COMMANDS[args_list[0]]
        entry = getattr(importlib.import_module(module), func)
        return int(entry(args_list[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SeqpredError as e:
        return report_error(e)
    except KeyboardInterrupt:
        print("seqpred: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
