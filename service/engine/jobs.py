"""What the batcher runs: :class:`Job` (one unit of work for one session, or one stateless scoring request), the
job kinds, and the batched top-k selection."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from service.errors import ServiceError

STEP, SEQ, HEAD, SCORE = 0, 1, 2, 3
EMPTY_SCORES = np.zeros(0, dtype=np.float32)
#: A prompt batch holds at most this many padded tokens (rows x longest prompt), whatever max_batch says.
MAX_BATCH_TOKENS = 65_536


class Job:
    """One unit of work for one session (or, for SCORE, one stateless request).

    Inputs are set by the engine; outputs (``logprobs``: the next-token distribution after the job, ``scores``:
    log-probabilities of the supplied tokens, ``topk_ids``/``topk_lp``, ``position``) by the batcher.
    """

    __slots__ = (
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
        self.tokens = tokens  # STEP: int; SEQ: int64 array [n]; SCORE: padded [B, T]; HEAD: None
        self.lengths = lengths  # SCORE only
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
