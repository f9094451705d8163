"""What the batcher runs: :class:`Job` (one unit of work for one session, or one stateless scoring request), the
job kinds, how a scoring request is cut into chunks, and the batched top-k selection."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from service.errors import ServiceError

STEP, SEQ, HEAD, SCORE = 0, 1, 2, 3
EMPTY_SCORES = np.zeros(0, dtype=np.float32)
#: A prompt batch, and a chunk of a scoring request, holds at most this many padded tokens (rows x longest
#: sequence), whatever max_batch says.
MAX_BATCH_TOKENS = 65_536


class Job:
    """One unit of work for one session (or, for SCORE, one stateless request).

    Inputs are set by the engine; outputs (``logprobs``: the next-token distribution after the job, ``scores``:
    log-probabilities of the supplied tokens, ``topk_ids``/``topk_lp``, ``position``) by the batcher.
    """

    __slots__ = (
        "chunk",
        "chunks",
        "error",
        "future",
        "held",
        "kind",
        "lengths",
        "logprobs",
        "position",
        "score",
        "scores",
        "slot",
        "t_submit",
        "tokens",
        "top_k",
        "topk_ids",
        "topk_lp",
        "want_next",
    )

    def __init__(
        self,
        kind: int,
        slot: int,
        tokens: Any,
        score: bool = False,
        top_k: int = 0,
        want_next: bool = False,
        lengths: Any = None,
        held: bool = False,
    ) -> None:
        self.kind = kind
        self.slot = slot
        self.tokens = tokens  # STEP: int; SEQ: int64 array [n]; SCORE: list of int64 arrays; HEAD: None
        self.lengths = lengths
        self.held = held  # part of a unary request whose changes count only together (Persistence.atomic)
        self.score = score
        self.top_k = top_k
        self.want_next = want_next or top_k > 0
        self.future: asyncio.Future[Job] | None = None
        self.logprobs: np.ndarray | None = None
        self.scores: np.ndarray | None = None
        self.topk_ids: list[int] | None = None
        self.topk_lp: list[float] | None = None
        self.position = 0
        self.error: ServiceError | None = None
        self.t_submit = 0.0
        #: SCORE: the sequences of each chunk (indices into ``tokens``, see :func:`score_chunks`) and the next one
        self.chunks: list[list[int]] = []
        self.chunk = 0


def padded_tokens(jobs: list[Job]) -> int:
    """The tokens one batch of ``jobs`` runs (rows x longest sequence; a SCORE job: its next chunk's), the unit of
    the batcher's cost estimate."""
    first = jobs[0]
    if first.kind == SEQ:
        return len(jobs) * max(len(j.tokens) for j in jobs)
    if first.kind == SCORE:
        group = first.chunks[first.chunk]
        return len(group) * max(len(first.tokens[i]) for i in group)
    return len(jobs)


def score_chunks(lengths: list[int], max_rows: int, max_tokens: int = MAX_BATCH_TOKENS) -> list[list[int]]:
    """Cut a scoring request into chunks, each one runtime call: sequences sorted by length (so rows of similar
    length are padded together), then cut greedily so that a chunk holds at most ``max_rows`` sequences and
    ``max_tokens`` padded tokens (rows x its longest sequence; a longer single sequence is a chunk alone).
    Returns the sequences' indices per chunk, shortest first."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    i = 0
    while i < len(order):
        n = 1
        while i + n < len(order) and n < max_rows and lengths[order[i + n]] * (n + 1) <= max_tokens:
            n += 1
        chunks.append(order[i : i + n])
        i += n
    return chunks


def top_k_row(row: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """The ``k`` largest entries of one distribution ``row`` ``[V]``, largest first, ties lowest id first (a stable
    sort for vocabularies up to 1024, :func:`top_k_rows` beyond): ``(ids, values)`` as Python lists."""
    ids = np.argsort(-row, kind="stable")[:k] if len(row) <= 1024 else top_k_rows(row[None], [k])[0][0]
    return ids.tolist(), row[ids].tolist()


def top_k_rows(lp: np.ndarray, ks: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``lp`` ``[R, V]``, the ``max(ks)`` largest entries, largest first, ties lowest id first:
    ``(ids, values)``, both ``[R, K]``."""
    R, V = lp.shape
    K = min(max(ks), V)
    rows = np.arange(R)[:, None]
    if 4 * K >= V:
        ids = np.argsort(-lp, axis=1, kind="stable")[:, :K]
    else:
        part = np.argpartition(lp, V - K, axis=1)[:, V - K :]
        part.sort(axis=1)
        ids = part[rows, np.argsort(-lp[rows, part], axis=1, kind="stable")]
    return ids, lp[rows, ids]
