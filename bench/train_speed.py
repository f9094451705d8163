"""Training speed: our NumPy trainer against PyTorch ``nn.LSTM`` on the same shapes and thread count.

One training step = forward over a [B, T] batch, softmax cross-entropy, full BPTT, global-norm clipping and an
Adam update; ours is exactly the step ``model.train`` runs (the batch sharded over one thread per core).
Configurations: V=65, E=64, H=256, L in {1, 2}, B=32, T=64. The two trainers are timed in
alternating rounds (median of rounds) so background load hits both alike.

    python bench/train_speed.py            # table
    python bench/train_speed.py --json     # ... and one JSON object on the last line

JSON keys: ``ratio`` (our step time / PyTorch's, worst case over the configurations; target <= 1.0), and per
configuration ``L{l}_ours_ms``, ``L{l}_torch_ms``, ``L{l}_ratio``, ``L{l}_ours_tok_s``, ``L{l}_shard_ms`` and
``L{l}_shard_ratio``: one shard's forward and BPTT alone on one thread (B/threads rows, no clipping or Adam), the
work each of our threads does side by side with the others, so a lower bound for ours on this machine.
Without torch installed (``pip install torch==2.13.0`` gives a CPU build) only our figures are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
from threadpoolctl import threadpool_limits

from model import network, optim
from model.config import ModelConfig
from model.parallel import batch_grads, sharded_grads

V, E, H, B, T = 65, 64, 256, 32, 64


def ours(layers: int, rng: np.random.Generator, pool: ThreadPoolExecutor | None, threads: int) -> Callable[[], None]:
    """The trainer's own step (model.train): batch sharded over ``threads`` threads, then clip and Adam."""
    cfg = ModelConfig(cell="lstm", layers=layers, hidden=H, vocab_size=V, embed=E)
    p = network.init_params(cfg, rng)
    oc = optim.OptimConfig()
    s = optim.init_state(oc, p)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = network.zero_state(cfg, B)

    def step() -> None:
        _, g, _ = sharded_grads(cfg, p, x, y, state, pool, threads)
        optim.clip_by_global_norm(g, 5.0)
        optim.step(oc, p, g, s, 1e-3)

    return step


def one_shard(layers: int, rng: np.random.Generator, threads: int) -> Callable[[], None]:
    """Forward and BPTT of one shard alone (the first B/threads rows), on one thread: a lower bound for ``ours``,
    whose shards run this same work side by side on the other cores."""
    cfg = ModelConfig(cell="lstm", layers=layers, hidden=H, vocab_size=V, embed=E)
    p = network.init_params(cfg, rng)
    n = B // max(threads, 1)
    x, y = rng.integers(0, V, (n, T)), rng.integers(0, V, (n, T))
    state = network.zero_state(cfg, n)

    def step() -> None:
        batch_grads(cfg, p, x, y, state)

    return step


def torch_step(layers: int, threads: int) -> Callable[[], None] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    emb = torch.nn.Embedding(V, E)
    lstm = torch.nn.LSTM(E, H, layers, batch_first=True)
    head = torch.nn.Linear(H, V)
    ps = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(ps, 1e-3)
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))

    def step() -> None:
        opt.zero_grad()
        out, _ = lstm(emb(x))
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, V), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ps, 5.0)
        opt.step()

    return step


def timed(step: Callable[[], None], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    a = ap.parse_args()
    threads = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    res: dict[str, float] = {}
    rows = []
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    for layers in (1, 2):
        mine, theirs = ours(layers, rng, pool, threads), torch_step(layers, threads)
        shard = one_shard(layers, rng, threads)
        tm, tt, ts = [], [], []
        for r in range(a.rounds + 1):  # round 0 warms up
            # our shards run single-threaded BLAS each, as in model.train; PyTorch keeps its own threads
            with threadpool_limits(1) if threads > 1 else nullcontext():
                t_ours = timed(mine, a.steps)
                t_shard = timed(shard, a.steps)
            t_torch = timed(theirs, a.steps) if theirs else None
            if r:
                tm.append(t_ours)
                ts.append(t_shard)
                if t_torch is not None:
                    tt.append(t_torch)
        m = statistics.median(tm)
        res[f"L{layers}_ours_ms"] = m * 1e3
        res[f"L{layers}_ours_tok_s"] = B * T / m
        shard_s = statistics.median(ts)
        res[f"L{layers}_shard_ms"] = shard_s * 1e3
        if tt:
            t = statistics.median(tt)
            res[f"L{layers}_torch_ms"] = t * 1e3
            res[f"L{layers}_ratio"] = m / t
            res[f"L{layers}_shard_ratio"] = shard_s / t
        rows.append(layers)
    print(f"training step, V={V} E={E} H={H} B={B} T={T}, Adam, {threads} threads (median of {a.rounds} rounds)")
    print(f"{'config':<8}{'ours ms':>10}{'ours tok/s':>12}{'torch ms':>10}{'ratio':>8}{'one shard ms':>14}{'ratio':>8}")
    for layers in rows:
        k = f"L{layers}"
        tms = f"{res[k + '_torch_ms']:.1f}" if k + "_torch_ms" in res else "n/a"
        ratio = f"{res[k + '_ratio']:.2f}" if k + "_ratio" in res else "n/a"
        sratio = f"{res[k + '_shard_ratio']:.2f}" if k + "_shard_ratio" in res else "n/a"
        print(
            f"{k:<8}{res[k + '_ours_ms']:>10.1f}{res[k + '_ours_tok_s']:>12,.0f}{tms:>10}{ratio:>8}"
            f"{res[k + '_shard_ms']:>14.1f}{sratio:>8}"
        )
    print(f"(one shard: forward and BPTT of {B // threads} rows alone on one thread, a lower bound for ours)")
    if "L1_ratio" in res:
        res["ratio"] = max(res["L1_ratio"], res["L2_ratio"])
        print(f"worst ratio (ours / torch): {res['ratio']:.2f}  (target <= 1.0)")
    if a.json:
        print(json.dumps({k: round(v, 4) for k, v in res.items()}))


if __name__ == "__main__":
    main()
