"""Evaluation (mean next-token loss over a token array, on a bounded sample) and sampling from a trained network.

An evaluation scores ``B`` stateful streams (the state carried from one window to the next). The whole split
is cut into ``B`` contiguous streams (:func:`model.data.streams.make_streams`); a sample of ``max_tokens``
takes the first ``max_tokens / B`` tokens of each of those streams, so it is spread evenly over the split (a
prefix of the validation text would be a few files of a corpus split by file) and a larger sample extends the
same streams. Every token of a stream but its first is scored once.

The standard error of the mean is estimated from the streams' own means, ``s / sqrt(B)`` with ``s`` their sample
standard deviation: tokens within a stream are correlated, streams far apart nearly independent.

Only the forward pass runs: the loss is ``logsumexp(z) - z[y]`` per position, without the softmax
gradient that training forms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model.config import ModelConfig
from model.data.streams import eval_windows, make_streams
from model.errors import ConfigError
from model.network import Params, State, forward, log_softmax, zero_state

#: ``progress(tokens_scored, tokens_total)`` after each window.
EvalProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation measured."""

    nats_per_token: float
    tokens: int  # positions scored
    total: int  # positions the sample holds (``tokens < total`` when ``stop`` cut it short)
    streams: int
    stderr: float | None  # standard error of ``nats_per_token`` over the streams (None for one stream)

    @property
    def complete(self) -> bool:
        return self.tokens == self.total


def eval_streams(ids: np.ndarray, batch: int, seq_len: int, max_tokens: int = 0) -> np.ndarray:
    """The ``[B, n]`` streams an evaluation scores: all of ``ids`` (``max_tokens`` 0 or at least ``len(ids)``),
    or the first ``max_tokens // B`` tokens of each of the ``B`` contiguous streams of all of it. ``B`` is
    ``batch``, fewer when the text (or sample) has less than ``seq_len + 1`` tokens per stream."""
    if max_tokens < 0:
        raise ConfigError(f"max_tokens: must be >= 0 (0 = all), got {max_tokens}")
    n_all = len(ids)
    size = n_all if max_tokens == 0 or max_tokens >= n_all else max(2, max_tokens)
    B = max(1, min(batch, size // (seq_len + 1)))
    S = make_streams(ids, B, 1, what="validation")
    return S if size == n_all else np.ascontiguousarray(S[:, : size // B])


def token_nll(out: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-position loss ``-log softmax(z)[y]`` ``[T, B]`` of head outputs ``out`` ``[V, T, B]`` and targets
    ``y`` ``[B, T]``, in float64 (forward only: no softmax array is kept)."""
    _, T, B = out.shape
    m = out.max(axis=0)  # [T, B]
    picked = out[y.T, np.arange(T)[:, None], np.arange(B)[None, :]] - m
    z = out - m[None]
    np.exp(z, out=z)
    return np.log(z.sum(axis=0)).astype(np.float64) - picked  # each term <= 1: a float32 sum loses nothing


def evaluate(
    cfg: ModelConfig,
    p: Params,
    ids: np.ndarray,
    batch: int = 32,
    seq_len: int = 128,
    max_tokens: int = 0,
    progress: EvalProgress | None = None,
    stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Mean nats per token of ``ids`` under the model (a token model), on :func:`eval_streams`.

    ``stop`` (asked after each window but the last) ends the evaluation early when it returns True; the result
    then covers the windows scored so far, the same number of positions in every stream.
    """
    if not cfg.token_input:
        raise ConfigError(f"evaluate: needs a token model, got head {cfg.head!r}")
    S = eval_streams(ids, batch, seq_len, max_tokens)
    B, n = S.shape
    total = B * (n - 1)
    state: State = zero_state(cfg, B)
    sums = np.zeros(B, dtype=np.float64)
    per_stream = 0
    for x, y in eval_windows(S, seq_len):
        fwd = forward(cfg, p, x, state)
        sums += token_nll(fwd.out, y).sum(axis=0)
        per_stream += y.shape[1]
        state = fwd.state
        if progress is not None:
            progress(B * per_stream, total)
        if per_stream < n - 1 and stop is not None and stop():
            break
    tokens = B * per_stream
    means = sums / max(per_stream, 1)
    stderr = float(means.std(ddof=1) / math.sqrt(B)) if B > 1 and per_stream else None
    return EvalResult(float(sums.sum() / max(tokens, 1)), tokens, total, B, stderr)


def summary(nats: float) -> dict[str, float]:
    """nats/token, bits/token and perplexity of a mean loss in nats."""
    return {"nats_per_token": nats, "bits_per_token": nats / math.log(2), "perplexity": math.exp(nats)}


def sample_next(
    logp: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> int:
    """Draw one token id from log-probabilities ``logp`` ``[V]``.

    ``temperature`` 0 is greedy (argmax); otherwise the distribution is softmax(logp / temperature), restricted
    to the ``top_k`` most likely ids (0 = all) and to the smallest set whose mass reaches ``top_p``.
    """
    if temperature <= 0:
        return int(np.argmax(logp))
    z = np.asarray(logp, dtype=np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    if top_k > 0:
        order = order[:top_k]
    probs = np.exp(log_softmax(z[order]))
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(order[rng.choice(len(order), p=probs)])


def generate(
    cfg: ModelConfig,
    p: Params,
    prompt: np.ndarray,
    length: int,
    rng: np.random.Generator,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    state: State | None = None,
) -> list[int]:
    """Feed ``prompt`` (1-D ids, at least one) then sample ``length`` tokens one at a time."""
    state = zero_state(cfg, 1) if state is None else state
    fwd = forward(cfg, p, np.asarray(prompt, dtype=np.int64)[None, :], state)
    out: list[int] = []
    for _ in range(length):
        logp = log_softmax(fwd.out[:, -1, 0])
        tok = sample_next(logp, rng, temperature, top_k, top_p)
        out.append(tok)
        fwd = forward(cfg, p, np.array([[tok]]), fwd.state)
    return out
