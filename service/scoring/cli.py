"""Offline batch scoring: ``seqpred score [--model DIR] INPUT [--out OUTPUT]`` runs ``sequence.onnx`` directly.

Three layers, each usable on its own:

* :class:`~service.scoring.scorer.Scorer` scores a batch of token-id sequences with one onnxruntime session (no server),
  long sequences in chunks with the state carried across, optionally with the top-k at every position;
* :meth:`~service.scoring.scorer.Scorer.score_stream` scores any iterable of :class:`~service.scoring.inputs.Item` in
  bounded memory, yielding ``(item, score)`` in input order (see :mod:`service.scoring.scorer`);
* :func:`main_score` is the command line: input parsing and errors (:mod:`service.scoring.inputs`), the JSONL
  records (:mod:`service.scoring.records`) or Parquet parts (:mod:`service.scoring.parquet`), ``--resume``, the
  progress bar and the exit codes (0; 2 for a user error, one line ``seqpred: error: ...``; 130 when interrupted).
  ``--engine ray`` runs the same reading, scoring and formatting as a Ray Data pipeline
  (:mod:`service.scoring.ray_engine`) and writes with the same writers.

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
from pathlib import Path
from typing import Any

from model.errors import EXIT_INTERRUPTED, EXIT_USAGE, ConfigError, SeqpredError, report_error
from service.scoring.inputs import FORMATS, ON_UNKNOWN, BadInput, Encoder, InputReader, Item, default_on_unknown
from service.scoring.parquet import ParquetWriter, record_schema
from service.scoring.ray_engine import PART_BYTES, import_ray, run_on_ray
from service.scoring.records import RecordFormatter, RecordWriter, dumps
from service.scoring.scorer import BATCH_TOKENS, CHUNK_LEN, MAX_BATCH, WINDOW_TOKENS, Scorer
from service.scoring.summary import Malformed, Summary

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
    p.add_argument(
        "--out-format", default="jsonl", choices=("jsonl", "parquet"),
        help="jsonl (default), or parquet: OUTPUT is a directory of part files (needs pyarrow: seqpred[ray])",
    )  # fmt: skip
    r = p.add_argument_group("--engine ray (docs/scoring.md, On Ray)")
    r.add_argument(
        "--engine", default="local", choices=("local", "ray"),
        help="local: threads in this process (default); ray: a Ray Data pipeline with a pool of scoring actors",
    )  # fmt: skip
    r.add_argument(
        "--ray-address", default=None, metavar="auto|ADDR",
        help="the Ray cluster to join (auto: the one started on this machine); default: $RAY_ADDRESS, else a new "
        "local instance",
    )  # fmt: skip
    r.add_argument("--actors", type=int, default=0, help="scoring actors (0 = one per CPU of the cluster)")
    r.add_argument("--part-bytes", type=int, default=PART_BYTES, help="input bytes per Ray read task")
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


def open_writer(args: argparse.Namespace, stdout: Any) -> RecordWriter | ParquetWriter:
    """OUTPUT's writer for ``--out-format``, with ``--resume``'s clean-up reported on stderr."""
    if args.out_format == "parquet":
        schema = record_schema(args.per_token, args.top_k, args.on_unknown != "error")
        pq = ParquetWriter(args.out, schema, resume=args.resume, overwrite=args.overwrite)
        for name in pq.dropped:
            print(f"seqpred: warning: --out: removed {name}, left incomplete by an interrupted run", file=sys.stderr)
        return pq
    writer = RecordWriter(args.out, resume=args.resume, overwrite=args.overwrite, stdout=stdout)
    if writer.dropped_bytes:
        print(
            f"seqpred: warning: --out: dropped an incomplete last line ({writer.dropped_bytes} bytes) "
            "left by an interrupted run",
            file=sys.stderr,
        )
    return writer


def run_score(args: argparse.Namespace, stdin: Any = None, stdout: Any = None) -> int:
    """The ``score`` command on parsed arguments; raises SeqpredError for user errors."""
    if args.window_tokens < 1:
        raise ConfigError(f"--window-tokens: must be >= 1, got {args.window_tokens}")
    model_dir = Path(args.model) if args.model else default_model_dir()
    scorer = Scorer(  # with --engine ray: checks the model and the flags here, once, before Ray starts
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
    args.on_unknown = "unk" if args.allow_unknown else args.on_unknown or default_on_unknown(tok)
    encoder = Encoder(tok, args.on_unknown)
    if args.engine == "ray":
        import_ray()  # the one-line error when Ray is missing, before OUTPUT is touched
    writer = open_writer(args, stdout)
    summary = Summary()
    t0 = time.perf_counter()
    bar = _progress(not args.no_progress, None)
    malformed = Malformed(args.on_error, lambda line: bar.write(line, file=sys.stderr))
    ok = False
    try:
        if args.engine == "ray":
            run_on_ray(args, model_dir, encoder, writer, summary, malformed, bar.update)
        else:
            _score_local(args, scorer, encoder, writer, summary, malformed, bar, stdin)
        ok = not malformed.error()
    finally:
        bar.close()
        writer.close(ok)  # a failed run leaves no OUTPUT it created empty
    summary.bad = malformed.count
    summary.seconds = max(time.perf_counter() - t0, 1e-9)
    print(summary.line(), file=sys.stderr)
    error = malformed.error()
    if error:
        raise SeqpredError(error)
    return 0


def _score_local(
    args: argparse.Namespace,
    scorer: Scorer,
    encoder: Encoder,
    writer: RecordWriter | ParquetWriter,
    summary: Summary,
    malformed: Malformed,
    bar: Any,
    stdin: Any,
) -> None:
    """``--engine local``: read in this thread, score on the scorer's worker threads, write in input order."""

    def already_done(key: str) -> bool:  # --resume: a sequence OUTPUT holds counts as done on the bar
        if key in writer.done:
            bar.update(1)
            return True
        return False

    skip = already_done if writer.done else None  # (no id canonicalization unless resuming)
    reader = InputReader(args.input, args.format, encoder, skip=skip, stdin=stdin)
    bar.reset(total=reader.total)
    tok = encoder.tokenizer
    fmt = RecordFormatter(
        [tok.token_text(i) for i in range(tok.vocab_size)], args.per_token, args.top_k, args.on_unknown != "error"
    )
    encode: Any = dumps if isinstance(writer, RecordWriter) else (lambda rec: rec)

    def items() -> Iterator[Item]:
        for x in reader:
            if isinstance(x, BadInput):
                if not malformed(x):
                    return
                continue
            yield x

    out: list[Any] = []
    t0 = last_flush = time.perf_counter()
    for item, s in scorer.score_stream(items(), window_tokens=args.window_tokens):
        out.append(encode(fmt(item, s)))
        summary.add(s.num_tokens, s.total_logprob)
        bar.update(1)
        now = time.perf_counter()
        if len(out) >= 256 or now - last_flush > 0.5:
            writer.write(out)
            out = []
            last_flush = now
            bar.set_postfix_str(f"{summary.tokens / max(now - t0, 1e-9):,.0f} tok/s", refresh=False)
    writer.write(out)
    summary.resumed = reader.skipped


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
