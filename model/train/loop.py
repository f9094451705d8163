"""The training loop: stateful truncated BPTT over B parallel streams, checkpoints, exact resume.

Each step takes the next ``[B, T]`` window of every stream (see :mod:`model.data.streams`), runs the network from
the state the previous window left (detached: gradients stop at the window boundary), backpropagates, clips the
global gradient norm and applies the optimiser. The learning rate warms up linearly, then decays on a cosine
over the run (by steps, or by wall time when only ``minutes`` bounds it).

A loss or gradient that is not finite stops the run with :class:`TrainingDiverged`; the checkpoint on disk is
the last good one. Resuming restores parameters, optimiser moments, stream position, carried state and the
RNG, so ``N`` steps in one go equal ``k`` steps plus a resumed ``N - k`` bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from model import network
from model.config import SHARDS_ON, ModelConfig, from_dict
from model.data.streams import make_streams, window
from model.errors import ConfigError, TrainingDiverged
from model.network import State
from model.train import optim
from model.train.checkpoint import METRICS, Run, save_checkpoint
from model.train.evaluate import evaluate, summary
from model.train.shard_pool import open_shards


@dataclass(frozen=True)
class TrainConfig:
    """How to train (the model's shape is in :class:`~model.config.ModelConfig`)."""

    corpus: str = "stdlib"
    tokenizer: str = "char"
    max_words: int = 10000
    max_vocab: int = 0  # char tokenizer: 0 = every character of the training text
    max_chars: int = 0  # 0 = the whole corpus
    batch: int = 32
    seq_len: int = 64
    steps: int = 0  # 0 = bounded by minutes only
    minutes: float = 0.0  # 0 = bounded by steps only
    lr: float = 2e-3
    min_lr_frac: float = 0.1
    warmup: int = 50
    optimizer: str = "adam"
    clip: float = 5.0
    seed: int = 0
    eval_every: int = 250
    eval_tokens: int = 50_000
    log_every: int = 10
    checkpoint_every: int = 500
    threads: int = 0  # the batch is sharded over this many cores (0 = one per CPU core)
    shards_on: str = SHARDS_ON[0]  # where the shards run: "processes" (model.train.shard_pool) or "threads"

    def __post_init__(self) -> None:
        for name in ("batch", "seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name}: must be a positive integer, got {v!r}")
        for name in ("steps", "max_chars", "warmup", "eval_tokens", "max_words", "max_vocab", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name}: must be a non-negative integer, got {v!r}")
        for name in ("eval_every", "log_every", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name}: must be a positive integer, got {v!r}")
        if not (self.minutes >= 0 and math.isfinite(self.minutes)):
            raise ConfigError(f"minutes: must be a non-negative number, got {self.minutes!r}")
        if self.steps == 0 and self.minutes == 0:
            raise ConfigError("steps/minutes: give --steps or --minutes (or both) to bound the run")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr: must be a positive number, got {self.lr!r}")
        if self.shards_on not in SHARDS_ON:
            raise ConfigError(f"shards_on: must be one of {', '.join(SHARDS_ON)}, got {self.shards_on!r}")
        if self.clip < 0:
            raise ConfigError(f"clip: must be >= 0 (0 = no clipping), got {self.clip!r}")
        optim.OptimConfig(name=self.optimizer)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, data)


def _state_arrays(state: State) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for l, (h, c) in enumerate(state):
        out[f"{l}/h"] = h
        if c is not None:
            out[f"{l}/c"] = c
    return out


def _state_from_arrays(cfg: ModelConfig, arrays: dict[str, np.ndarray], batch: int) -> State:
    if not arrays:
        return network.zero_state(cfg, batch)
    return [(arrays[f"{l}/h"], arrays.get(f"{l}/c")) for l in range(cfg.layers)]


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``docker stop``, ``kill``) stops a run as Ctrl-C does, so the shard workers and their shared
    memory are released on the way out. Only the main thread can set a handler; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class TrainResult:
    step: int
    tokens: int
    train_loss: float
    val_nats_per_token: float | None
    minutes: float


Progress = Callable[[dict[str, Any]], None]


def train(
    run_dir: Path,
    cfg: ModelConfig,
    tc: TrainConfig,
    train_ids: np.ndarray,
    val_ids: np.ndarray,
    meta_base: dict[str, Any],
    resume: Run | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train in ``run_dir`` (config and vocabulary already written there) and checkpoint it.

    ``progress`` (if given) is called after every logged step with the metrics dict.
    """
    S = make_streams(train_ids, tc.batch, tc.seq_len)
    oc = optim.OptimConfig(name=tc.optimizer)
    rng = np.random.default_rng(tc.seed)
    if resume is None:
        params = network.init_params(cfg, rng)
        opt_state = optim.init_state(oc, params)
        state = network.zero_state(cfg, tc.batch)
        step, pos, tokens, elapsed0 = 0, 0, 0, 0.0
    else:
        params, opt_state = resume.params, resume.opt_state
        state = _state_from_arrays(cfg, resume.stream_state, tc.batch)
        m = resume.meta
        step, pos, tokens, elapsed0 = m["step"], m["pos"], m["tokens"], m["elapsed_s"]
        rng.bit_generator.state = m["rng"]
    metrics_path = run_dir / METRICS
    t0 = time.perf_counter() - elapsed0
    budget = tc.minutes * 60.0
    val_nats: float | None = resume.meta.get("val_nats_per_token") if resume else None
    train_loss = float("nan")
    win_t, win_tokens = time.perf_counter(), 0

    def meta() -> dict[str, Any]:
        return {
            **meta_base,
            "step": step,
            "pos": pos,
            "tokens": tokens,
            "elapsed_s": time.perf_counter() - t0,
            "rng": rng.bit_generator.state,
            "train_loss": train_loss,
            "val_nats_per_token": val_nats,
        }

    def checkpoint() -> None:
        save_checkpoint(run_dir, params, opt_state, _state_arrays(state), meta())

    def log(record: dict[str, Any]) -> None:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if progress is not None:
            progress(record)

    def done() -> bool:
        if tc.steps and step >= tc.steps:
            return True
        return bool(budget and time.perf_counter() - t0 >= budget)

    def run_eval(max_tokens: int) -> float:
        with threadpool_limits(threads):  # no shard runs meanwhile: BLAS may use every core the run has
            nats, n = evaluate(cfg, params, val_ids, batch=tc.batch, seq_len=256, max_tokens=max_tokens)
        log(
            {
                "step": step,
                "tokens": tokens,
                "elapsed_s": time.perf_counter() - t0,
                "val_tokens": n,
                **{f"val_{k}": v for k, v in summary(nats).items()},
            }
        )
        return nats

    threads = min(tc.threads or os.cpu_count() or 1, tc.batch)
    with ExitStack() as stack:
        stack.enter_context(_sigterm_as_interrupt())
        if threads > 1:  # each shard runs single-threaded BLAS on its own core
            stack.enter_context(threadpool_limits(1))
        params, grads_of = open_shards(stack, cfg, params, threads, tc.shards_on)
        while not done():
            total = tc.steps
            if budget:  # schedule by whichever bound is nearer: steps, or wall time spent
                frac = max(step / tc.steps if tc.steps else 0.0, (time.perf_counter() - t0) / budget)
                total = round(step / frac) if frac > 0 else tc.warmup + 1
            lr = optim.lr_at(step, tc.lr, tc.warmup, total, tc.min_lr_frac)
            x, y, nxt = window(S, pos, tc.seq_len)
            drop_rng = rng if cfg.dropout > 0 else None
            loss, grads, new_state = grads_of(x, y, state, drop_rng)
            norm = optim.clip_by_global_norm(grads, tc.clip)
            if not (math.isfinite(loss) and math.isfinite(norm)):
                raise TrainingDiverged(
                    f"step {step}: loss {loss} / gradient norm {norm} is not finite; the last good checkpoint "
                    f"is kept in {run_dir}; try a lower --lr or --clip"
                )
            optim.step(oc, params, grads, opt_state, lr)
            state = network.zero_state(cfg, tc.batch) if nxt == 0 else new_state
            pos, step, tokens = nxt, step + 1, tokens + x.size
            train_loss = loss
            win_tokens += x.size
            if step % tc.log_every == 0 or done():
                now = time.perf_counter()
                log(
                    {
                        "step": step,
                        "tokens": tokens,
                        "elapsed_s": now - t0,
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": norm,
                        "tokens_per_s": win_tokens / max(now - win_t, 1e-9),
                    }
                )
                win_t, win_tokens = now, 0
            if step % tc.eval_every == 0 and not done():
                val_nats = run_eval(tc.eval_tokens)
            if step % tc.checkpoint_every == 0:
                checkpoint()
        val_nats = run_eval(0)
        checkpoint()
    return TrainResult(step, tokens, train_loss, val_nats, (time.perf_counter() - t0) / 60.0)
