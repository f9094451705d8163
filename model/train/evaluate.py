"""Evaluation (mean next-token loss over a token array) and sampling from a trained network."""

from __future__ import annotations

import math

import numpy as np

from model.config import ModelConfig
from model.data.streams import eval_windows, make_streams
from model.network import Params, State, forward, log_softmax, loss_and_dout, zero_state


def evaluate(
    cfg: ModelConfig, p: Params, ids: np.ndarray, batch: int = 32, seq_len: int = 128, max_tokens: int = 0
) -> tuple[float, int]:
    """Mean nats per token of ``ids`` under the model, scored as ``batch`` stateful streams.

    Every token of every stream except its first is scored once, with the state carried across windows.
    ``max_tokens`` > 0 scores only a prefix of that many tokens (for quick periodic checks).
    Returns ``(nats_per_token, tokens_scored)``.
    """
    if max_tokens > 0:
        ids = ids[:max_tokens]
    batch = max(1, min(batch, len(ids) // (seq_len + 1)))
    S = make_streams(ids, batch, 1, what="validation")
    state = zero_state(cfg, batch)
    total, count = 0.0, 0
    for x, y in eval_windows(S, seq_len):
        fwd = forward(cfg, p, x, state)
        loss, _ = loss_and_dout(cfg, fwd.out, y, None)
        total += loss * y.size
        count += y.size
        state = fwd.state
    return total / max(count, 1), count


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
