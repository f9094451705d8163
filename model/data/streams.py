"""Token streams for stateful truncated BPTT and for evaluation.

A 1-D token array of length N is cut into B contiguous streams of length n = N // B (the tail is dropped)::

    S = ids[: B*n].reshape(B, n)          stream b continues where window k left off in window k+1
    x = S[:, pos : pos+T]                 inputs   [B, T]
    y = S[:, pos+1 : pos+T+1]             targets  [B, T] (the next token of each input)

so the recurrent state at the end of one window is the right initial state for the next one. When a window
would run past the end, the epoch ends: position and state go back to zero.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from model.errors import DataError


def make_streams(ids: np.ndarray, batch: int, seq_len: int, what: str = "training") -> np.ndarray:
    """Cut ``ids`` into ``[batch, n]`` streams; a corpus too small for one window raises :class:`DataError`."""
    need = batch * (seq_len + 1)
    if len(ids) < need:
        raise DataError(
            f"corpus: the {what} text has {len(ids)} tokens, fewer than batch * (seq_len + 1) = {need}; "
            "use a larger corpus or smaller --batch/--seq-len"
        )
    n = len(ids) // batch
    return np.ascontiguousarray(ids[: batch * n].reshape(batch, n))


def window(S: np.ndarray, pos: int, seq_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The window at ``pos``: ``(x, y, next_pos)``; ``next_pos == 0`` means the next window starts an epoch."""
    x = S[:, pos : pos + seq_len]
    y = S[:, pos + 1 : pos + seq_len + 1]
    nxt = pos + seq_len
    if nxt + seq_len + 1 > S.shape[1]:
        nxt = 0
    return x, y, nxt


def eval_windows(S: np.ndarray, seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every ``(x, y)`` window over ``S``, covering each stream to its end (the last window may be short)."""
    n = S.shape[1]
    for pos in range(0, n - 1, seq_len):
        end = min(pos + seq_len, n - 1)
        yield S[:, pos:end], S[:, pos + 1 : end + 1]
