"""Offline batch scoring: ``seqpred score [--model DIR] INPUT [--out OUTPUT]`` runs ``sequence.onnx`` directly.

Three layers, each usable on its own:

* :class:`~service.scoring.scorer.Scorer` scores a batch of token-id sequences with one onnxruntime session (no server),
  long sequences in chunks with the state carried across, optionally with the top-k at every position;
* :meth:`~service.scoring.scorer.Scorer.score_stream` scores any iterable of :class:`~service.scoring.inputs.Item` in
  bounded memory, yielding ``(item, score)`` in input order (see :mod:`service.scoring.scorer`);
* :func:`main_score` is the command line: input parsing and errors (:mod:`service.scoring.inputs`), the JSONL
  records (:mod:`service.scoring.records`), ``--resume``, the progress bar and the exit codes (0; 2 for a user
  error, one line ``seqpred: error: ...``; 130 when interrupted).

Scores: ``token_logprobs[t] = log p(ids[t] | ids[:t])`` for ``t >= 1`` (the first token has no prediction, as in
the service); a sequence's total is their sum, ``nats_per_token = -total / (n - 1)``, ``perplexity =
exp(nats_per_token)``. A sequence needs at least 2 tokens to have a scored token; shorter ones get a record with
``scored_tokens: 0`` and null ``nats_per_token``/``perplexity``. See ``docs/scoring.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.errors import EXIT_INTERRUPTED, EXIT_USAGE, ConfigError, SeqpredError, report_error
from service.scoring.inputs import FORMATS, ON_UNKNOWN, BadInput, Encoder, InputReader, Item, default_on_unknown
from service.scoring.records import RecordFormatter, RecordWriter, dumps
from service.scoring.scorer import BATCH_TOKENS, CHUNK_LEN, MAX_BATCH, WINDOW_TOKENS, Scorer

#: Warnings printed for skipped inputs before they are only counted.
MAX_WARNINGS = 50

# ----------------------------------------------------------------------------------------------------------------
# Command line


def score_parser(prog: str = "seqpred score") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Score sequences offline with a model directory's sequence.onnx (no server): one JSON line per "
        "sequence with its total log-probability, nats/token and perplexity, in input order.",
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        help="a text file (one sequence per line), a .jsonl file ({'id', 'text' | 'tokens'} per line), "
        "a directory (one sequence per file), or - for stdin; .gz is decompressed",
    )
    p.add_argument("--model", default=None, help="model directory (env SEQPRED_MODEL; default: the shipped model)")
    p.add_argument("--out", default=None, metavar="OUTPUT", help="JSONL file to write (default: stdout)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="input format (auto: by suffix; default)")
    p.add_argument("--per-token", action="store_true", help="also each token's id, text and log-probability")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="also the K most likely tokens at each position")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="keep OUTPUT and skip the ids it already holds")
    g.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    p.add_argument(
        "--on-error",
        default="fail",
        choices=("fail", "skip"),
        help="a malformed line or file: stop with exit code 2 after writing everything before it (fail, the "
        "default), or report it on stderr and go on (skip)",
    )
    p.add_argument(
        "--on-unknown",
        default=None,
        choices=ON_UNKNOWN,
        help="a symbol outside the vocabulary: score it as <unk> (unk), drop it (skip), or treat the sequence as "
        "malformed (error); default: unk when the model has an <unk> token (char and word models), else error",
    )
    p.add_argument("--allow-unknown", action="store_true", help="the same as --on-unknown unk (older spelling)")
    p.add_argument("--threads", type=int, default=0, help="worker threads (0 = one per usable core)")
    p.add_argument("--intra-op-threads", type=int, default=1, help="onnxruntime threads per batch (default 1)")
    p.add_argument("--batch-tokens", type=int, default=BATCH_TOKENS, help="padded tokens per batch")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH, help="most sequences per batch")
    p.add_argument("--chunk-len", type=int, default=CHUNK_LEN, help="longer sequences run in chunks of this many")
    p.add_argument("--window-tokens", type=int, default=WINDOW_TOKENS, help="tokens read ahead and reordered")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def default_model_dir() -> Path:
    """``$SEQPRED_MODEL``, else the model shipped in ``service/default_model``."""
    env = os.environ.get("SEQPRED_MODEL")
    if env:
        return Path(env)
    from service.settings import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "model.json").is_file():
        raise ConfigError(
            f"model: the default model is not installed ({str(DEFAULT_MODEL_DIR)!r} has no model.json); "
            "pass --model DIR (or set SEQPRED_MODEL) naming a directory written by `seqpred export`"
        )
    return DEFAULT_MODEL_DIR


@dataclass
class Summary:
    sequences: int = 0
    tokens: int = 0
    scored: int = 0
    nats: float = 0.0
    bad: int = 0
    resumed: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = f"{self.sequences / self.seconds:,.0f} seq/s, {self.tokens / self.seconds:,.0f} tokens/s"
        mean = f"; {self.nats / self.scored:.4f} nats/token" if self.scored else ""
        extra = ""
        if self.bad:
            extra += f"; {self.bad} malformed skipped"
        if self.resumed:
            extra += f"; {self.resumed} already in OUTPUT"
        return (
            f"seqpred score: {self.sequences:,} sequences, {self.tokens:,} tokens in {self.seconds:.2f} s "
            f"({rate}){mean}{extra}"
        )


def _progress(enabled: bool, total: int | None) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc="scored",
        unit="seq",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None if enabled else True,  # None: only on a terminal
        smoothing=0.1,
    )


def run_score(args: argparse.Namespace, stdin: Any = None, stdout: Any = None) -> int:
    """The ``score`` command on parsed arguments; raises SeqpredError for user errors."""
    if args.window_tokens < 1:
        raise ConfigError(f"--window-tokens: must be >= 1, got {args.window_tokens}")
    model_dir = Path(args.model) if args.model else default_model_dir()
    scorer = Scorer(
        model_dir,
        top_k=args.top_k,
        threads=args.threads,
        intra_op_threads=args.intra_op_threads,
        chunk_len=args.chunk_len,
        batch_tokens=args.batch_tokens,
        max_batch=args.max_batch,
    )
    tok = scorer.tokenizer
    assert tok is not None
    if args.allow_unknown and args.on_unknown not in (None, "unk"):
        raise ConfigError(f"--allow-unknown: means --on-unknown unk, but --on-unknown {args.on_unknown} was given")
    on_unknown = "unk" if args.allow_unknown else args.on_unknown or default_on_unknown(tok)
    encoder = Encoder(tok, on_unknown)
    writer = RecordWriter(args.out, resume=args.resume, overwrite=args.overwrite, stdout=stdout)
    if writer.dropped_bytes:
        print(
            f"seqpred: warning: --out: dropped an incomplete last line ({writer.dropped_bytes} bytes) "
            "left by an interrupted run",
            file=sys.stderr,
        )
    reader = InputReader(args.input, args.format, encoder, stdin=stdin)
    fmt = RecordFormatter(
        [tok.token_text(i) for i in range(tok.vocab_size)], args.per_token, args.top_k, on_unknown != "error"
    )
    summary = Summary()
    failure: list[BadInput] = []
    t0 = time.perf_counter()
    bar = _progress(not args.no_progress, reader.total)

    def already_done(key: str) -> bool:  # --resume: a sequence OUTPUT holds counts as done on the bar
        if key in writer.done:
            bar.update(1)
            return True
        return False

    reader.skip = already_done if writer.done else None  # (no id canonicalization unless resuming)

    def items() -> Iterator[Item]:
        for x in reader:
            if isinstance(x, BadInput):
                if args.on_error == "fail":
                    failure.append(x)
                    return
                summary.bad += 1
                if summary.bad <= MAX_WARNINGS:
                    bar.write(f"seqpred: warning: {x} (skipped)", file=sys.stderr)
                elif summary.bad == MAX_WARNINGS + 1:
                    bar.write("seqpred: warning: more malformed inputs; only counting them now", file=sys.stderr)
                continue
            yield x

    lines: list[str] = []
    last_flush = t0
    ok = False
    try:
        for item, s in scorer.score_stream(items(), window_tokens=args.window_tokens):
            lines.append(dumps(fmt(item, s)))
            summary.sequences += 1
            summary.tokens += s.num_tokens
            summary.scored += max(s.num_tokens - 1, 0)
            summary.nats -= s.total_logprob
            bar.update(1)
            now = time.perf_counter()
            if len(lines) >= 256 or now - last_flush > 0.5:
                writer.write(lines)
                lines = []
                last_flush = now
                bar.set_postfix_str(f"{summary.tokens / max(now - t0, 1e-9):,.0f} tok/s", refresh=False)
        writer.write(lines)
        ok = not failure
    finally:
        bar.close()
        writer.close(ok)
    summary.resumed = reader.skipped
    summary.seconds = max(time.perf_counter() - t0, 1e-9)
    print(summary.line(), file=sys.stderr)
    if failure:
        raise SeqpredError(f"{failure[0]} (pass --on-error skip to skip malformed inputs)")
    return 0


def main_score(argv: Sequence[str] | None = None, stdin: Any = None, stdout: Any = None) -> int:
    """``seqpred score [--model DIR] INPUT [--out OUTPUT] ...``; returns the exit code (0, 2, 130).

    ``argv`` excludes the sub-command name; ``stdin`` (a binary stream) and ``stdout`` (a text stream) default to
    the process's own.
    """
    try:
        args = score_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed by argparse)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return run_score(args, stdin=stdin, stdout=stdout)
    except SeqpredError as e:
        return report_error(e)
    except KeyboardInterrupt:
        hint = "; run again with --resume to continue" if args.out not in (None, "-") else ""
        print(f"seqpred: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (| head): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main_score())
