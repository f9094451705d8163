"""The ``seqpred train`` and ``seqpred eval`` commands on parsed arguments (the flags are in :mod:`model.cli`).

``train`` checks everything (flags, corpus, a run to resume) before it touches the disk, then trains with
:func:`model.train.loop.train`; ``--minutes`` counts from the command's start. ``--resume`` of a run that has
finished and is asked for no more steps or time says so and does nothing. An interrupted run has written a
checkpoint of the step it reached (:mod:`model.train.stopping`) and exits with code 130.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from model.config import ModelConfig
from model.data.corpora import load_corpus
from model.data.streams import make_streams
from model.data.tokenizers import make_tokenizer
from model.errors import EXIT_INTERRUPTED, CheckpointError, ConfigError
from model.train.checkpoint import CHECKPOINT, CONFIG, METRICS, VOCAB, load_run, save_config, write_json_atomic
from model.train.evaluate import EvalResult, evaluate, summary
from model.train.loop import EVAL_SEQ_LEN, EVAL_STREAMS, TrainConfig, already_finished, train
from model.train.plots import learning_curve
from model.train.progress import TrainProgress, eval_bar
from model.train.stopping import Interrupted


def run_train(a: argparse.Namespace) -> int:
    """``seqpred train`` on parsed arguments (:func:`model.cli._add_train`); returns the exit code."""
    t_start = getattr(a, "started", None) or time.perf_counter()  # --minutes bounds the whole command

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
        check_tokens=a.check_tokens,
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
        if already_finished(resume.meta, tc):
            print(
                f"{out}: the run already finished at step {resume.meta['step']} (validation "
                f"{resume.meta.get('val_nats_per_token') or float('nan'):.4f} nats/token); nothing to do "
                "(a larger --steps or --minutes trains on)"
            )
            return 0
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
    deadline = t_start + tc.minutes * 60 - (resume.meta["elapsed_s"] if resume else 0.0) if tc.minutes else None
    bar = None if a.no_progress else TrainProgress(tc.steps, tc.minutes)
    try:
        res = train(out, cfg, tc, train_ids, val_ids, meta_base, resume=resume, progress=bar, deadline=deadline)
    except Interrupted as e:
        if bar:
            bar.close()
            bar = None
        print(
            f"seqpred: interrupted ({e.signame}) at step {e.step}; checkpoint {out / CHECKPOINT} written, "
            "continue with --resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        if bar:
            bar.close()
    png = learning_curve(out / METRICS, out / "learning_curve.png")
    print(
        f"done: {res.step} steps, {res.tokens:,} tokens in {res.minutes:.2f} min; train loss {res.train_loss:.4f}, "
        f"validation {_val_text(res.val, len(val_ids))}; checkpoint {out / CHECKPOINT}"
        + (f"; curve {png}" if png else "")
    )
    return 0


def _val_text(v: EvalResult | None, split_tokens: int) -> str:
    """``1.2345 ± 0.0042 nats/token (199,968 of 3,830,842 validation tokens)`` for an EvalResult (or None)."""
    if v is None:
        return "n/a"
    se = "" if v.stderr is None else f" ± {v.stderr:.4f}"
    cut = "" if v.complete else f", cut from {v.total:,} by the time limit"
    return f"{v.nats_per_token:.4f}{se} nats/token ({v.tokens:,} of {split_tokens:,} validation tokens{cut})"


def _check_resume(saved: dict[str, Any], tc: Any) -> None:
    for key in ("corpus", "tokenizer", "max_words", "max_vocab", "max_chars", "batch", "seq_len", "threads"):
        if key in saved and saved[key] != getattr(tc, key):
            raise CheckpointError(f"resume: {key} is {saved[key]!r} in the checkpoint, {getattr(tc, key)!r} requested")


def run_eval(a: argparse.Namespace) -> int:
    """``seqpred eval`` on parsed arguments (:func:`model.cli._add_eval`); returns the exit code."""

    run = load_run(a.run_dir)
    spec = a.corpus or run.train.get("corpus") or "stdlib"
    max_chars = a.max_chars if a.max_chars is not None else (run.train.get("max_chars") or None)
    corpus = load_corpus(spec, max_chars=max_chars)
    assert run.tokenizer is not None
    ids = run.tokenizer.encode(corpus.val if a.split == "val" else corpus.train)
    bar = eval_bar(0, enabled=not a.no_progress)

    def show(n: int, total: int) -> None:
        bar.total = total
        bar.update(n - bar.n)

    try:
        v = evaluate(run.model, run.params, ids, EVAL_STREAMS, EVAL_SEQ_LEN, a.max_tokens, progress=show)  # as training
    finally:
        bar.close()
    res = {"corpus": corpus.name, "split": a.split, "tokens": v.tokens, "split_tokens": len(ids)}
    res.update({**summary(v.nats_per_token), "stderr": v.stderr, "streams": v.streams})
    if a.json:
        print(json.dumps(res))
    else:
        print(
            f"{corpus.name} [{a.split}] {v.tokens:,} of {len(ids):,} tokens: {v.nats_per_token:.4f}"
            + ("" if v.stderr is None else f" ± {v.stderr:.4f}")
            + f" nats/token, {res['bits_per_token']:.4f} bits/token, perplexity {res['perplexity']:.3f}"
        )
    return 0
