"""Synthetic long-memory benchmarks: the adding problem, remember-the-first-symbol, and the copy task.

Pure functions of a ``np.random.Generator``: the same generator state gives the same batch. Token tasks
return ``(inputs, targets, weights)``, all ``[B, T]``: ``targets[b, t]`` is what the model should emit
after reading ``inputs[b, :t+1]``, and the loss is the cross-entropy weighted by ``weights`` (1 where the
answer is scored, 0 elsewhere), normalised by ``weights.sum()``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from model.errors import ConfigError

#: MSE of always predicting 1 on the adding problem: the target s = x₁ + x₂ with x₁, x₂ ~ U[0, 1]
#: independent has E[s] = 1 and Var[s] = 2 · 1/12, so E[(s - 1)²] = 1/6 ≈ 0.167. A model has learned
#: the task only when its MSE is well below this.
ADDING_BASELINE_MSE = 0.167

TaskBatch = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]


def adding_problem(rng: np.random.Generator, batch: int, T: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The adding problem (Hochreiter & Schmidhuber 1997; as defined by Arjovsky et al. 2016).

    Returns ``(x, y)``:

    * ``x`` ``[B, T, 2]`` float32: ``x[b, t, 0] ~ U[0, 1]``; ``x[b, :, 1]`` is 0 except for exactly two
      1s, one at ``i ~ U{0 .. T//2 - 1}`` and one at ``j ~ U{T//2 .. T-1}``.
    * ``y`` ``[B, 1]`` float32: ``y[b, 0] = x[b, i, 0] + x[b, j, 0]``.

    Predicting ``y = 1`` always scores :data:`ADDING_BASELINE_MSE` (1/6).
    """
    _check_rng(rng)
    _check_int("batch", batch, 1)
    _check_int("T", T, 2)
    half = T // 2
    values = rng.uniform(0.0, 1.0, size=(batch, T)).astype(np.float32)
    first = rng.integers(0, half, size=batch)
    second = rng.integers(half, T, size=batch)
    rows = np.arange(batch)
    markers = np.zeros((batch, T), dtype=np.float32)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1)
    y = (values[rows, first] + values[rows, second]).astype(np.float32)[:, None]
    return x, y


def remember_first_vocab(n_symbols: int) -> int:
    """Vocabulary size of :func:`remember_first`: ``n_symbols`` keys plus ``n_symbols`` distractors."""
    _check_int("n_symbols", n_symbols, 1)
    return 2 * n_symbols


def remember_first(rng: np.random.Generator, batch: int, lag: int, n_symbols: int = 4) -> TaskBatch:
    """Remember the first symbol across ``lag`` distractors (in the spirit of Hochreiter & Schmidhuber
    1997, experiment 2a).

    With K = ``n_symbols`` and T = ``lag + 1``, every sequence is

        inputs[b] = (k, d₁, …, d_lag),   k ~ U{0 .. K-1},   dₜ ~ U{K .. 2K-1}

    and the targets are next-token targets, except that the last one is the key:

        targets[b] = (d₁, …, d_lag, k),   weights[b] = (0, …, 0, 1)

    so only the prediction after the last distractor is scored. Returns int64 ``inputs`` and ``targets``
    and float32 ``weights``, all ``[B, lag+1]``; the vocabulary is :func:`remember_first_vocab` (2K) ids.
    A model that forgot the key scores at best ln K nats on the scored position.
    """
    _check_rng(rng)
    _check_int("batch", batch, 1)
    _check_int("lag", lag, 1)
    _check_int("n_symbols", n_symbols, 1)
    inputs = np.empty((batch, lag + 1), dtype=np.int64)
    inputs[:, 0] = rng.integers(0, n_symbols, size=batch)
    inputs[:, 1:] = rng.integers(n_symbols, 2 * n_symbols, size=(batch, lag))
    targets = np.empty_like(inputs)
    targets[:, :-1] = inputs[:, 1:]
    targets[:, -1] = inputs[:, 0]
    weights = np.zeros((batch, lag + 1), dtype=np.float32)
    weights[:, -1] = 1.0
    return inputs, targets, weights


def copy_task_vocab(n_symbols: int) -> int:
    """Vocabulary size of :func:`copy_task`: the symbols, the blank (id K) and the delimiter (id K+1)."""
    _check_int("n_symbols", n_symbols, 1)
    return n_symbols + 2


def copy_task(rng: np.random.Generator, batch: int, length: int, delay: int, n_symbols: int = 8) -> TaskBatch:
    """The copy task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016 use length 10, K = 8).

    With K = ``n_symbols``, blank ``_ = K``, delimiter ``| = K+1``, L = ``length``, D = ``delay``, every
    sequence has T = 2L + D + 1 positions:

        inputs[b]  = (s₁, …, s_L, _ × D, |, _ × L),   sᵢ ~ U{0 .. K-1}
        targets[b] = (_ × (L + D + 1), s₁, …, s_L)
        weights[b] = (0 × (L + D + 1), 1 × L)

    i.e. after reading the delimiter the model must emit the L symbols it saw at the start; only those
    last L outputs are scored. Returns int64 ``inputs`` and ``targets`` and float32 ``weights``, all
    ``[B, T]``; the vocabulary is :func:`copy_task_vocab` (K + 2) ids. Guessing scores ln K nats per
    scored position.
    """
    _check_rng(rng)
    _check_int("batch", batch, 1)
    _check_int("length", length, 1)
    _check_int("delay", delay, 0)
    _check_int("n_symbols", n_symbols, 1)
    blank, delim = n_symbols, n_symbols + 1
    total = 2 * length + delay + 1
    symbols = rng.integers(0, n_symbols, size=(batch, length))
    inputs = np.full((batch, total), blank, dtype=np.int64)
    inputs[:, :length] = symbols
    inputs[:, length + delay] = delim
    targets = np.full((batch, total), blank, dtype=np.int64)
    targets[:, -length:] = symbols
    weights = np.zeros((batch, total), dtype=np.float32)
    weights[:, -length:] = 1.0
    return inputs, targets, weights


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
