"""Training speed: our NumPy trainer against PyTorch ``nn.LSTM`` on the same shapes and thread count.

One training step = forward over a [B, T] batch, softmax cross-entropy, full BPTT, global-norm clipping and an
Adam update; ours is exactly the step ``model.train.loop`` runs: the batch sharded over one core each, shard 0 in
this process and the others in worker processes (:mod:`model.train.shard_pool`), each on the LSTM's batch-major
path (:mod:`model.train.fast_lstm`). Configurations: V=65, E=64, H=256, L in {1, 2}, B=32, T=64. All variants are
timed in alternating rounds (median of rounds) so background load hits them alike.

    python bench/train_speed.py            # table
    python bench/train_speed.py --json     # ... and one JSON object on the last line

JSON keys: ``ratio`` (our step time / PyTorch's, worst case over the configurations; target <= 1.0), and per
configuration ``L{l}_ours_ms``, ``L{l}_torch_ms``, ``L{l}_ratio``, ``L{l}_ours_tok_s``; ``L{l}_pair_ms`` and
``L{l}_pair_ratio``: our step without clipping and Adam (the shards side by side and their combination);
``L{l}_threads_ms`` and ``L{l}_threads_ratio``: the step with the shards on threads (``--shards-on threads``);
``L{l}_shard_ms`` and ``L{l}_shard_ratio``: one shard's forward and BPTT alone on one thread (B/threads rows, no
clipping or Adam), the work each core does side by side with the others, so a lower bound for ours here.
Without torch installed (``pip install torch==2.13.0`` gives a CPU build) only our figures are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext

import numpy as np
from threadpoolctl import threadpool_limits

from model import network
from model.config import ModelConfig
from model.network import Params
from model.train import optim
from model.train.parallel import batch_grads
from model.train.shard_pool import open_shards

V, E, H, B, T = 65, 64, 256, 32, 64


def ours(
    layers: int, rng: np.random.Generator, stack: ExitStack, threads: int, on: str
) -> tuple[Callable[[], None], Callable[[], object]]:
    """The trainer's own step (model.train.loop): the batch sharded over ``threads`` cores, the shards ``on``
    "processes" (a :class:`ShardPool`, the trainer's default) or "threads", then clip and Adam; and the
    gradient part of it alone (the shards side by side and their combination)."""
    cfg = ModelConfig(cell="lstm", layers=layers, hidden=H, vocab_size=V, embed=E)
    p = network.init_params(cfg, rng)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = network.zero_state(cfg, B)
    p, grads_of = open_shards(stack, cfg, p, threads, on)  # as model.train.loop sets them up

    def grads() -> Params:
        return grads_of(x, y, state, None)[1]

    oc = optim.OptimConfig()
    s = optim.init_state(oc, p)

    def step() -> None:
        g = grads()
        optim.clip_by_global_norm(g, 5.0)
        optim.step(oc, p, g, s, 1e-3)

    return step, grads


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
    #: variant -> its ratio key (ours: the trainer's step; pair: its two shards side by side, no optimiser;
    #: threads: the step with the shards on threads; shard: one shard alone on one core)
    keys = {"ours": "ratio", "pair": "pair_ratio", "threads": "threads_ratio", "shard": "shard_ratio"}
    for layers in (1, 2):
        with ExitStack() as stack:
            mine, pair = ours(layers, rng, stack, threads, "processes")
            variants = {"ours": mine, "pair": pair, "threads": ours(layers, rng, stack, threads, "threads")[0]}
            variants["shard"] = one_shard(layers, rng, threads)
            theirs = torch_step(layers, threads)
            times: dict[str, list[float]] = {k: [] for k in variants}
            tt: list[float] = []
            for r in range(a.rounds + 1):  # round 0 warms up
                # our shards run single-threaded BLAS each, as in model.train.loop; PyTorch keeps its own threads
                with threadpool_limits(1) if threads > 1 else nullcontext():
                    got = {k: timed(f, a.steps) for k, f in variants.items()}
                t_torch = timed(theirs, a.steps) if theirs else None
                if r:
                    for k, v in got.items():
                        times[k].append(v)
                    if t_torch is not None:
                        tt.append(t_torch)
        for k, v in times.items():
            res[f"L{layers}_{k}_ms"] = statistics.median(v) * 1e3
        res[f"L{layers}_ours_tok_s"] = B * T / statistics.median(times["ours"])
        if tt:  # each ratio: the median of its per-round ratios (a round's drift hits both sides alike)
            res[f"L{layers}_torch_ms"] = statistics.median(tt) * 1e3
            for k, key in keys.items():
                res[f"L{layers}_{key}"] = statistics.median(o / t for o, t in zip(times[k], tt, strict=True))
        rows.append(layers)
    print(f"training step, V={V} E={E} H={H} B={B} T={T}, Adam, {threads} threads (median of {a.rounds} rounds)")
    print(
        f"{'config':<8}{'ours ms':>9}{'ours tok/s':>12}{'torch ms':>10}{'ratio':>8}"
        f"{'pair ms':>9}{'ratio':>8}{'on threads ms':>15}{'ratio':>8}{'one shard ms':>14}{'ratio':>8}"
    )

    def fmt(key: str, spec: str) -> str:
        return format(res[key], spec) if key in res else "n/a"

    for layers in rows:
        k = f"L{layers}_"
        print(
            f"{k[:-1]:<8}{fmt(k + 'ours_ms', '.1f'):>9}{fmt(k + 'ours_tok_s', ',.0f'):>12}"
            f"{fmt(k + 'torch_ms', '.1f'):>10}"
            f"{fmt(k + 'ratio', '.3f'):>8}{fmt(k + 'pair_ms', '.1f'):>9}{fmt(k + 'pair_ratio', '.3f'):>8}"
            f"{fmt(k + 'threads_ms', '.1f'):>15}{fmt(k + 'threads_ratio', '.3f'):>8}"
            f"{fmt(k + 'shard_ms', '.1f'):>14}{fmt(k + 'shard_ratio', '.3f'):>8}"
        )
    print("ours: shards on processes, as `seqpred train` runs them; on threads: `seqpred train --shards-on threads`")
    print("pair: ours without clipping and Adam (the two shards side by side and their combination)")
    print(f"one shard: forward and BPTT of {B // threads} rows alone on one core, a lower bound for ours")
    if "L1_ratio" in res:
        res["ratio"] = max(res["L1_ratio"], res["L2_ratio"])
        print(f"worst ratio (ours / torch): {res['ratio']:.3f}  (target <= 1.0)")
    if a.json:
        print(json.dumps({k: round(v, 4) for k, v in res.items()}))


if __name__ == "__main__":
    main()
