"""The loss and gradient of one batch, optionally sharded over threads along the batch axis.

NumPy releases the GIL inside its ufunc loops and BLAS calls, so S threads, each running the full forward and
backward pass on B/S of the batch rows with single-threaded BLAS, use S cores for the elementwise gate math as
well as for the GEMMs (multi-threaded BLAS alone leaves the elementwise kernels, about half of a step at
H=256, on one core). The result is the unsharded one up to float summation order::

    L = Σ_s (n_s / N) L_s          ∇L = Σ_s (n_s / N) ∇L_s        (n_s = Σ of shard s's weights)

Dropout masks come from one generator per shard, seeded from the caller's generator, so a run is
reproducible regardless of thread timing.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import numpy as np

from model import network
from model.config import ModelConfig
from model.network import Params, State
from model.train import fast_lstm


def batch_grads(
    cfg: ModelConfig,
    p: Params,
    x: np.ndarray,
    y: np.ndarray,
    state: State,
    weights: np.ndarray | None = None,
    dropout_rng: np.random.Generator | None = None,
) -> tuple[float, float, Params, State]:
    """Forward, loss and BPTT for one batch: ``(loss, weight_sum, grads, final_state)``.

    A token LSTM stack takes the batch-major fast path (:mod:`model.train.fast_lstm`); the result is the same.
    """
    if fast_lstm.supports(cfg):
        return fast_lstm.batch_grads(cfg, p, x, y, state, weights, dropout_rng)
    fwd = network.forward(cfg, p, x, state, dropout_rng=dropout_rng)
    loss, dout = network.loss_and_dout(cfg, fwd.out, y, weights)
    grads, _ = network.backward(cfg, p, fwd, dout)
    wsum = float(np.prod(y.shape[:2])) if weights is None else float(np.sum(weights))
    return loss, wsum, grads, fwd.state


#: One shard's arguments to :func:`batch_grads` after ``cfg`` and ``p``: rows of x, y, state, weights; its rng.
ShardArgs = tuple[np.ndarray, np.ndarray, State, np.ndarray | None, np.random.Generator | None]
#: What :func:`batch_grads` returns for one shard.
ShardResult = tuple[float, float, Params, State]


def split(
    x: np.ndarray,
    y: np.ndarray,
    state: State,
    weights: np.ndarray | None,
    rng: np.random.Generator | None,
    shards: int,
) -> list[ShardArgs]:
    """Cut a batch into ``shards`` contiguous row blocks (at most one per row); ``rng`` (given only when
    training with dropout) seeds one generator per shard, so the masks do not depend on thread timing."""
    B = x.shape[0]
    shards = max(1, min(shards, B))
    bounds = np.linspace(0, B, shards + 1).astype(int)
    rngs: list[Any] = [None] * shards
    if rng is not None:
        rngs = [np.random.default_rng(s) for s in rng.integers(0, 2**63 - 1, size=shards)]
    out: list[ShardArgs] = []
    for s in range(shards):
        a, b = bounds[s], bounds[s + 1]
        sub_state = [(h[a:b], None if c is None else c[a:b]) for h, c in state]
        out.append((x[a:b], y[a:b], sub_state, None if weights is None else weights[a:b], rngs[s]))
    return out


def combine(cfg: ModelConfig, p: Params, results: list[ShardResult]) -> tuple[float, Params, State]:
    """The batch's ``(loss, grads, state)`` from its shards' results, in row order (weighted by Σ w)."""
    total = sum(r[1] for r in results)
    loss = sum(r[0] * r[1] for r in results) / total
    grads: Params = {}
    for _, wsum, g, _ in results:
        scale = wsum / total
        for k, v in g.items():
            if k in grads:
                grads[k] += v * v.dtype.type(scale)
            else:
                grads[k] = v * v.dtype.type(scale)
    new_state: State = []
    for l in range(cfg.layers):
        hs = [r[3][l][0] for r in results]
        cs = [r[3][l][1] for r in results]
        new_state.append((np.concatenate(hs), None if cs[0] is None else np.concatenate(cs)))  # type: ignore[arg-type]
    return loss, grads, new_state


def sharded_grads(
    cfg: ModelConfig,
    p: Params,
    x: np.ndarray,
    y: np.ndarray,
    state: State,
    pool: Executor | None,
    shards: int,
    weights: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[float, Params, State]:
    """:func:`batch_grads` over ``shards`` contiguous row blocks run on ``pool``; ``(loss, grads, state)``.

    ``rng`` (given only when training with dropout) seeds one generator per shard.
    """
    if min(shards, x.shape[0]) <= 1 or pool is None:
        loss, _, grads, final = batch_grads(cfg, p, x, y, state, weights, rng)
        return loss, grads, final
    futures = [pool.submit(batch_grads, cfg, p, *args) for args in split(x, y, state, weights, rng, shards)]
    return combine(cfg, p, [f.result() for f in futures])
