"""The offline scorer: ``sequence.onnx`` run directly on onnxruntime (no server).

* :class:`Scorer` scores a batch of token-id sequences with one onnxruntime session. Sequences
  longer than ``chunk_len`` are cut into chunks and the recurrent state is carried from one chunk to the next
  (``h{l}_out``/``c{l}_out`` fed back as ``h{l}``/``c{l}``); the first token of a chunk is scored with the
  previous chunk's ``next_logprobs``, so chunking changes nothing but rounding. With ``top_k`` the graph is
  extended in memory by a ``TopK`` over its per-step logits (:mod:`service.scoring.topk`).
* :meth:`Scorer.score_stream` takes any iterable of :class:`~service.scoring.inputs.Item` and yields
  ``(item, score)`` in input order while keeping memory bounded: it reads a *window* of sequences (at most
  ``window_tokens`` tokens or ``window_seqs`` sequences), sorts it by length into batches of similar length
  (at most ``batch_tokens`` padded tokens, ``max_batch`` rows), runs the batches on ``threads`` worker threads
  sharing the session (``InferenceSession.run`` releases the GIL and is thread-safe), and, while the next window
  is being scored, hands the oldest one back in input order (``WINDOWS_AHEAD`` windows are queued ahead, so
  reading, formatting and writing in the main thread overlap the scoring).

Scores: ``token_logprobs[t] = log p(ids[t] | ids[:t])`` for ``t >= 1`` (the first token has no prediction, as in
the service). The command line around the scorer (``seqpred score``, its records) is :mod:`service.scoring.cli`; see
``docs/scoring.md``.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from model.errors import ConfigError, DataError, SeqpredError
from service.scoring.inputs import IdArray, Item
from service.scoring.topk import TOP_IDS, TOP_LOGPROBS, with_top_k

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
        try:  # the bytes verified against the manifest's sha256 are the bytes loaded (no swap in between)
            base = graph if graph is not None else onnx.load_from_string(md.graph_bytes(md.sequence_path.name))
        except SeqpredError as e:
            raise ConfigError(f"model: {e}") from None
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
