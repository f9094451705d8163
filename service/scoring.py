"""Offline batch scoring: ``seqpred score [--model DIR] INPUT [--out OUTPUT]`` runs ``sequence.onnx`` directly.

Three layers, each usable on its own:

* :class:`Scorer` scores a batch of token-id sequences with one onnxruntime session (no server). Sequences
  longer than ``chunk_len`` are cut into chunks and the recurrent state is carried from one chunk to the next
  (``h{l}_out``/``c{l}_out`` fed back as ``h{l}``/``c{l}``); the first token of a chunk is scored with the
  previous chunk's ``next_logprobs``, so chunking changes nothing but rounding. With ``top_k`` the graph is
  extended in memory by a ``TopK`` over its per-step logits (``head/logits`` - ``head/logsumexp``).
* :meth:`Scorer.score_stream` takes any iterable of :class:`~service.scoring_io.Item` and yields
  ``(item, score)`` in input order while keeping memory bounded: it reads a *window* of sequences (at most
  ``window_tokens`` tokens or ``window_seqs`` sequences), sorts it by length into batches of similar length
  (at most ``batch_tokens`` padded tokens, ``max_batch`` rows), runs the batches on ``threads`` worker threads
  sharing the session (``InferenceSession.run`` releases the GIL and is thread-safe), and, while the next window
  is being scored, hands the oldest one back in input order (``WINDOWS_AHEAD`` windows are queued ahead, so
  reading, formatting and writing in the main thread overlap the scoring).
* :func:`main_score` is the command line: input parsing and errors (:mod:`service.scoring_io`), the JSONL
  records, ``--resume``, the progress bar and the exit codes (0; 2 for a user error, one line
  ``seqpred: error: ...``; 130 when interrupted).

Scores: ``token_logprobs[t] = log p(ids[t] | ids[:t])`` for ``t >= 1`` (the first token has no prediction, as in
the service); a sequence's total is their sum, ``nats_per_token = -total / (n - 1)``, ``perplexity =
exp(nats_per_token)``. A sequence needs at least 2 tokens to have a scored token; shorter ones get a record with
``scored_tokens: 0`` and null ``nats_per_token``/``perplexity``. See ``docs/scoring.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from model.errors import EXIT_INTERRUPTED, EXIT_USAGE, ConfigError, DataError, SeqpredError, report_error
from service.scoring_io import (
    FORMATS,
    BadInput,
    Encoder,
    IdArray,
    InputReader,
    Item,
    RecordWriter,
    dumps,
    round_floats,
)

#: Defaults, measured on 2 cores with H=256 (see docs/scoring.md): batches of ~16k padded tokens, at most 128
#: rows, long sequences in chunks of 256 tokens, one worker thread per core each running whole batches.
CHUNK_LEN = 256
BATCH_TOKENS = 16384
MAX_BATCH = 128
WINDOW_TOKENS = 65_536
WINDOW_SEQS = 4096
#: Windows queued for the workers beyond the one being handed back: reading, formatting and writing in the main
#: thread overlap the scoring of these.
WINDOWS_AHEAD = 2
#: Warnings printed for skipped inputs before they are only counted.
MAX_WARNINGS = 50

#: Names of the outputs the top-k extension adds to ``sequence.onnx`` (time-major ``[T, B, K]``).
TOP_IDS, TOP_LOGPROBS = "scoring/top_ids", "scoring/top_logprobs"
_LOGP, _LOGITS, _LSE = "head/log_softmax", "head/logits", "head/logsumexp"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class SeqScore:
    """The scores of one sequence of ``n`` tokens.

    ``token_logprobs [max(n-1, 0)]``: element ``t - 1`` is ``log p(ids[t] | ids[:t])``, t = 1..n-1.
    ``top_ids``/``top_logprobs [n, K]`` (with top-k): row ``t`` holds the K most likely tokens after ``ids[:t+1]``
    (row ``n-1``: the prediction after the whole sequence), most likely first.
    """

    num_tokens: int
    token_logprobs: NDArray[np.float32]
    top_ids: NDArray[np.int64] | None = None
    top_logprobs: NDArray[np.float32] | None = None

    @property
    def total_logprob(self) -> float:
        return float(self.token_logprobs.sum(dtype=np.float64))


def with_top_k(model: onnx.ModelProto, k: int) -> onnx.ModelProto:
    """A copy of a ``sequence.onnx`` model that also outputs the top ``k`` log-probabilities after every step.

    Adds ``TopK`` over the head's per-step log-probabilities as ``scoring/top_logprobs [T, B, k]`` (float32) and
    the token ids as ``scoring/top_ids [T, B, k]``: row ``t`` is the prediction after ``tokens[:, : t + 1]``.
    The graph exposes them as ``head/log_softmax`` (or, in earlier exports, as ``head/logits`` minus
    ``head/logsumexp``). Raises ConfigError when it has neither (not a seqpred export).
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    produced = {o for node in g.node for o in node.output}
    g.initializer.append(numpy_helper.from_array(np.array([k], dtype=np.int64), "scoring/k"))
    if _LOGP in produced:
        nodes = [
            helper.make_node("TopK", [_LOGP, "scoring/k"], ["scoring/top_lp", TOP_IDS], name="scoring/top_k", axis=-1)
        ]
    elif _LOGITS in produced and _LSE in produced:
        g.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "scoring/last_axis"))
        nodes = [
            helper.make_node(
                "TopK", [_LOGITS, "scoring/k"], ["scoring/top_logits", TOP_IDS], name="scoring/top_k", axis=-1
            ),
            helper.make_node("Unsqueeze", [_LSE, "scoring/last_axis"], ["scoring/lse"], name="scoring/lse"),
            helper.make_node("Sub", ["scoring/top_logits", "scoring/lse"], ["scoring/top_lp"], name="scoring/sub"),
        ]
    else:
        raise ConfigError(f"--top-k: sequence.onnx has no tensor {_LOGP!r} to take the top-k from")
    nodes.append(
        helper.make_node("Cast", ["scoring/top_lp"], [TOP_LOGPROBS], name="scoring/cast", to=TensorProto.FLOAT)
    )
    g.node.extend(nodes)
    g.output.extend(
        [
            helper.make_tensor_value_info(TOP_LOGPROBS, TensorProto.FLOAT, ["time", "batch", k]),
            helper.make_tensor_value_info(TOP_IDS, TensorProto.INT64, ["time", "batch", k]),
        ]
    )
    return m


def plan_batches(lengths: Sequence[int], chunk_len: int, batch_tokens: int, max_batch: int) -> list[list[int]]:
    """Group sequence indices into batches of similar length, longest first.

    A batch's padded width is its longest member's first chunk, ``min(len, chunk_len)``; it holds at most
    ``batch_tokens // width`` rows (at least 1) and at most ``max_batch``. Longest first, so that when several
    threads share the batches the long ones start early.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    cap = 0
    for i in order:
        if not cur:
            width = max(1, min(lengths[i], chunk_len))
            cap = max(1, min(max_batch, batch_tokens // width))
        cur.append(i)
        if len(cur) >= cap:
            batches.append(cur)
            cur = []
    if cur:
        batches.append(cur)
    return batches


class Scorer:
    """Scores token-id sequences with a model directory's ``sequence.onnx`` on onnxruntime (CPU).

    Args:
        model_dir: a directory written by ``seqpred export`` (loaded and checksum-verified).
        top_k: also compute the ``top_k`` most likely tokens at every position (0 = no).
        threads: worker threads running whole batches concurrently (0 = one per usable core).
        intra_op_threads: onnxruntime threads inside one batch (1: the parallelism is across batches).
        chunk_len, batch_tokens, max_batch: see :func:`plan_batches` and the module docstring.
        graph: a model with ``sequence.onnx``'s interface to run instead (benchmarks: the native LSTM op).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        top_k: int = 0,
        threads: int = 0,
        intra_op_threads: int = 1,
        chunk_len: int = CHUNK_LEN,
        batch_tokens: int = BATCH_TOKENS,
        max_batch: int = MAX_BATCH,
        graph: onnx.ModelProto | None = None,
    ) -> None:
        from model.export import load_model_dir, make_session

        try:
            md = load_model_dir(model_dir)
        except SeqpredError as e:
            raise ConfigError(f"model: {e}") from None
        if not md.config.token_input or md.tokenizer is None:
            raise ConfigError(f"model: {str(model_dir)!r} is a regression model; scoring needs a token model")
        V = md.config.vocab_size
        for name, value, low in (
            ("threads", threads, 0),
            ("intra-op-threads", intra_op_threads, 1),
            ("chunk-len", chunk_len, 1),
            ("batch-tokens", batch_tokens, 1),
            ("max-batch", max_batch, 1),
            ("top-k", top_k, 0),
        ):
            if value < low:
                raise ConfigError(f"--{name}: must be >= {low}, got {value}")
        if top_k > V:
            raise ConfigError(f"--top-k: must be at most the vocabulary size {V}, got {top_k}")
        self.model = md
        self.config = md.config
        self.tokenizer = md.tokenizer
        self.top_k = top_k
        self.threads = threads or usable_cores()
        self.chunk_len = chunk_len
        self.batch_tokens = batch_tokens
        self.max_batch = max_batch
        base = graph if graph is not None else onnx.load(md.sequence_path)
        if top_k:
            base = with_top_k(base, top_k)
        self.session = make_session(base.SerializeToString(), threads=intra_op_threads, spinning=False)
        self.state_names = md.state_names
        self.state_widths = [st.width for st in md.states]  # h: H; c: the cell's c_width
        self._outputs = ["token_logprobs", "next_logprobs"] + [f"{s}_out" for s in self.state_names]
        if top_k:
            self._outputs += [TOP_LOGPROBS, TOP_IDS]

    # --- one batch ------------------------------------------------------------------------------------------
    def score_batch(self, seqs: Sequence[IdArray]) -> list[SeqScore]:
        """Scores of ``seqs`` (1-D int64 id arrays, each id in ``[0, V)``), run as one padded batch per chunk."""
        n = len(seqs)
        K = self.top_k
        V = self.config.vocab_size
        for k, s in enumerate(seqs):
            if s.size and (int(s.min()) < 0 or int(s.max()) >= V):
                bad = int(s.min()) if int(s.min()) < 0 else int(s.max())
                raise DataError(f"sequence {k}: token id {bad} is out of range [0, {V})")
        lens = np.array([len(s) for s in seqs], dtype=np.int64)
        lps = [np.zeros(max(int(L) - 1, 0), dtype=np.float32) for L in lens]
        top_ids = [np.zeros((int(L), K), dtype=np.int64) for L in lens] if K else None
        top_lps = [np.zeros((int(L), K), dtype=np.float32) for L in lens] if K else None
        # a sequence of one token has nothing to score; it only needs the graph for its next-token top-k
        active = np.flatnonzero(lens >= (1 if K else 2))
        state = [np.zeros((active.size, w), dtype=np.float32) for w in self.state_widths]
        start = 0
        while active.size:
            rem = lens[active] - start
            clen = np.minimum(rem, self.chunk_len)
            T = int(clen.max())
            tokens = np.zeros((active.size, T), dtype=np.int64)
            for r, i in enumerate(active.tolist()):
                tokens[r, : clen[r]] = seqs[i][start : start + clen[r]]
            feeds: dict[str, NDArray[Any]] = {"tokens": tokens, "lengths": clen}
            feeds.update(zip(self.state_names, state, strict=True))
            outs = self.session.run(self._outputs, feeds)
            scores, nxt = outs[0], outs[1]
            more = rem > clen  # rows with tokens beyond this chunk
            for r, i in enumerate(active.tolist()):
                L = int(clen[r])
                lps[i][start : start + L - 1] = scores[r, : L - 1]
                if more[r]:  # the next chunk's first token, from the distribution after this chunk
                    lps[i][start + L - 1] = nxt[r, seqs[i][start + L]]
                if top_ids is not None and top_lps is not None:
                    top_lps[i][start : start + L] = outs[-2][:L, r]
                    top_ids[i][start : start + L] = outs[-1][:L, r]
            k = len(self.state_names)
            state = [o[more] for o in outs[2 : 2 + k]]
            active = active[more]
            start += self.chunk_len
        return [
            SeqScore(
                int(lens[i]),
                lps[i],
                None if top_ids is None else top_ids[i],
                None if top_lps is None else top_lps[i],
            )
            for i in range(n)
        ]

    def score(self, seqs: Sequence[IdArray]) -> list[SeqScore]:
        """Scores of ``seqs`` in order (bucketed by length and run on the worker threads)."""
        items = (Item(k, k, s) for k, s in enumerate(seqs))
        return [s for _, s in self.score_stream(items)]

    # --- a stream ---------------------------------------------------------------------------------------------
    def score_stream(
        self,
        items: Iterable[Item],
        window_tokens: int = WINDOW_TOKENS,
        window_seqs: int = WINDOW_SEQS,
    ) -> Iterator[tuple[Item, SeqScore]]:
        """``(item, score)`` for every item, in input order, with at most ``WINDOWS_AHEAD + 1`` windows in memory."""
        if window_tokens < 1 or window_seqs < 1:
            raise ConfigError(f"--window-tokens/--window-seqs: must be >= 1, got {window_tokens}/{window_seqs}")
        ex = ThreadPoolExecutor(self.threads, thread_name_prefix="seqpred-score")
        inflight: deque[tuple[list[Item], list[tuple[list[int], Future[list[SeqScore]]]]]] = deque()
        try:
            for window in _windows(items, window_tokens, window_seqs):
                lengths = [len(it.ids) for it in window]
                batches = plan_batches(lengths, self.chunk_len, self.batch_tokens, self.max_batch)
                futures = [(b, ex.submit(self.score_batch, [window[i].ids for i in b])) for b in batches]
                inflight.append((window, futures))
                if len(inflight) > WINDOWS_AHEAD:  # later windows are queued: hand back the oldest one
                    yield from _collect(*inflight.popleft())
            while inflight:
                yield from _collect(*inflight.popleft())
        finally:
            ex.shutdown(wait=True, cancel_futures=True)


def _windows(items: Iterable[Item], max_tokens: int, max_seqs: int) -> Iterator[list[Item]]:
    window: list[Item] = []
    tokens = 0
    for it in items:
        window.append(it)
        tokens += len(it.ids)
        if tokens >= max_tokens or len(window) >= max_seqs:
            yield window
            window, tokens = [], 0
    if window:
        yield window


def _collect(
    window: list[Item], futures: list[tuple[list[int], Future[list[SeqScore]]]]
) -> Iterator[tuple[Item, SeqScore]]:
    scores: list[SeqScore | None] = [None] * len(window)
    for idx, fut in futures:
        for i, score in zip(idx, fut.result(), strict=True):
            scores[i] = score
    for it, done in zip(window, scores, strict=True):
        assert done is not None
        yield it, done


# ----------------------------------------------------------------------------------------------------------------
# Records


class RecordFormatter:
    """Turns ``(item, score)`` into the output record (a dict; see docs/scoring.md for every field)."""

    def __init__(self, vocab_texts: Sequence[str], per_token: bool, top_k: int, unknown: bool) -> None:
        self.texts = list(vocab_texts)
        self.per_token = per_token
        self.top_k = top_k
        self.unknown = unknown

    def _preds(self, ids: NDArray[np.int64], lps: NDArray[np.float32]) -> list[dict[str, Any]]:
        return [
            {"id": i, "token": self.texts[i], "logprob": lp}
            for i, lp in zip(ids.tolist(), round_floats(lps), strict=True)
        ]

    def __call__(self, item: Item, s: SeqScore) -> dict[str, Any]:
        n = s.num_tokens
        scored = max(n - 1, 0)
        total = s.total_logprob
        nats = -total / scored if scored else None
        rec: dict[str, Any] = {
            "id": item.id,
            "num_tokens": n,
            "scored_tokens": scored,
            "total_logprob": total,
            "nats_per_token": nats,
            "perplexity": None if nats is None else math.exp(min(nats, 700.0)),
        }
        if self.unknown:
            rec["unknown_tokens"] = item.unknown
        if self.per_token:
            ids = item.ids.tolist()
            rec["token_ids"] = ids
            rec["token_texts"] = [self.texts[i] for i in ids]
            rec["token_logprobs"] = ([None] if n else []) + round_floats(s.token_logprobs)
        if self.top_k:
            assert s.top_ids is not None and s.top_logprobs is not None
            rows = [self._preds(s.top_ids[t], s.top_logprobs[t]) for t in range(n)]
            rec["top_k"] = ([None] if n else []) + rows[:-1]
            rec["next_top_k"] = rows[-1] if n else None
        return rec


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
    p.add_argument("--allow-unknown", action="store_true", help="score symbols outside the vocabulary as <unk>")
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
    encoder = Encoder(tok, args.allow_unknown)
    writer = RecordWriter(args.out, resume=args.resume, overwrite=args.overwrite, stdout=stdout)
    if writer.dropped_bytes:
        print(
            f"seqpred: warning: --out: dropped an incomplete last line ({writer.dropped_bytes} bytes) "
            "left by an interrupted run",
            file=sys.stderr,
        )
    skip = writer.done.__contains__ if writer.done else None  # (no id canonicalization unless resuming)
    reader = InputReader(args.input, args.format, encoder, skip=skip, stdin=stdin)
    fmt = RecordFormatter(
        [tok.token_text(i) for i in range(tok.vocab_size)], args.per_token, args.top_k, args.allow_unknown
    )
    summary = Summary()
    failure: list[BadInput] = []
    t0 = time.perf_counter()
    bar = _progress(not args.no_progress, reader.total)

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
    finally:
        bar.close()
        writer.close()
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
