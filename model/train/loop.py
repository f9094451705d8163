"""The training loop: stateful truncated BPTT over B parallel streams, checkpoints, exact resume.

Each step takes the next ``[B, T]`` window of every stream (see :mod:`model.data.streams`), runs the network from
the state the previous window left (detached: gradients stop at the window boundary), backpropagates, clips the
global gradient norm and applies the optimiser. The learning rate warms up linearly, then decays on a cosine
over the run (by steps, or by the training time when ``minutes`` bounds it).

``minutes`` bounds the whole run, final evaluation and checkpoint included (:mod:`model.train.budget`). The final
evaluation scores a sample of ``eval_tokens`` validation tokens spread over the split (0 = all of it), each
periodic check ``check_tokens`` of the same streams (:mod:`model.train.evaluate`).

A loss or gradient that is not finite stops the run with :class:`TrainingDiverged`; the checkpoint on disk is
the last good one. Ctrl-C or SIGTERM stops it at the next step boundary with a checkpoint of the step reached
(:mod:`model.train.stopping`). Resuming restores parameters, optimiser moments, stream position, carried state
and the RNG, so ``N`` steps in one go equal ``k`` steps plus a resumed ``N - k`` bit for bit, and drops the
metrics rows logged after the checkpoint it resumes from.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
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
from model.train.budget import TimePlan
from model.train.checkpoint import METRICS, Run, save_checkpoint
from model.train.evaluate import EvalResult, eval_streams, evaluate, summary
from model.train.shard_pool import open_shards
from model.train.stopping import Interrupted, stop_on_signals, truncate_metrics

#: Streams and window length of every evaluation. More streams sample more places of the split: on the default
#: corpus a 200k-token sample on 128 streams came within 0.007 nats/token of the whole split (± 0.033), on 32 streams
#: 0.075 off (± 0.058), docs/model.md. The window only sets how often an evaluation may stop (the state is carried).
EVAL_STREAMS, EVAL_SEQ_LEN = 128, 128


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
    check_tokens: int = 50_000  # validation tokens of each periodic check
    eval_tokens: int = 200_000  # validation tokens of the final evaluation (0 = the whole split)
    log_every: int = 10
    checkpoint_every: int = 500
    threads: int = 0  # the batch is sharded over this many cores (0 = one per CPU core)
    shards_on: str = SHARDS_ON[0]  # where the shards run: "processes" (model.train.shard_pool) or "threads"

    def __post_init__(self) -> None:
        for name in ("batch", "seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name}: must be a positive integer, got {v!r}")
        counts = ("steps", "max_chars", "warmup", "eval_tokens", "check_tokens", "max_words", "max_vocab", "threads")
        for name in counts:
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


def already_finished(meta: dict[str, Any], tc: TrainConfig) -> bool:
    """Whether a checkpoint's run ended normally (final evaluation done) and ``tc`` asks for nothing more: no
    step bound beyond the step reached, no longer ``minutes`` than it ran with."""
    if not meta.get("finished"):
        return False
    more_steps = bool(tc.steps) and tc.steps > meta["step"]
    more_time = bool(tc.minutes) and tc.minutes > float(meta.get("minutes") or 0.0)
    return not (more_steps or more_time)


@dataclass
class TrainResult:
    step: int
    tokens: int
    train_loss: float
    val_nats_per_token: float | None
    minutes: float
    val: EvalResult | None = None  # the final evaluation


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
    deadline: float | None = None,
) -> TrainResult:
    """Train in ``run_dir`` (config and vocabulary already written there) and checkpoint it.

    ``progress`` (if given) is called after every logged step with the metrics dict, and during the final
    evaluation with ``{"phase": "eval", "step", "tokens", "total"}``. ``deadline`` (a :func:`time.perf_counter`
    time) is when a ``minutes``-bounded run must be done; default: ``minutes`` from now, less the time the
    resumed run already spent. Raises :class:`~model.train.stopping.Interrupted` after checkpointing when a
    signal stops the run.
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
    if resume is not None:
        truncate_metrics(metrics_path, step)
    t0 = time.perf_counter() - elapsed0
    if tc.minutes and deadline is None:
        deadline = time.perf_counter() + tc.minutes * 60.0 - elapsed0
    final_sample = eval_streams(val_ids, EVAL_STREAMS, EVAL_SEQ_LEN, tc.eval_tokens)
    plan = TimePlan(deadline if tc.minutes else None, final_sample.shape[0] * (final_sample.shape[1] - 1))
    val_nats: float | None = resume.meta.get("val_nats_per_token") if resume else None
    train_loss = float("nan")
    finished = False
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
            "finished": finished,
            "steps": tc.steps,
            "minutes": tc.minutes,
        }

    def checkpoint() -> None:
        t = time.perf_counter()
        save_checkpoint(run_dir, params, opt_state, _state_arrays(state), meta())
        plan.measured(checkpoint_s=time.perf_counter() - t)

    def log(record: dict[str, Any]) -> None:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if progress is not None:
            progress(record)

    def done() -> bool:
        return bool(tc.steps and step >= tc.steps) or plan.training_over()

    def run_eval(max_tokens: int, final: bool = False) -> EvalResult:
        last = [time.perf_counter(), 0.0]  # when the last window ended, how long it took

        def window_done(n: int, total: int) -> None:
            now = time.perf_counter()
            last[:] = [now, now - last[0]]
            if final and progress is not None:
                progress({"phase": "eval", "step": step, "tokens": n, "total": total})

        def stop_early() -> bool:
            return stop.requested or (final and not plan.eval_may_go_on(last[1]))

        t = time.perf_counter()
        with threadpool_limits(threads):  # no shard runs meanwhile: BLAS may use every core the run has
            res = evaluate(cfg, params, val_ids, EVAL_STREAMS, EVAL_SEQ_LEN, max_tokens, window_done, stop_early)
        plan.measured(res.tokens, time.perf_counter() - t)
        if res.complete or (final and not stop.requested):  # a check cut short by a signal is not logged
            row = {"step": step, "tokens": tokens, "elapsed_s": time.perf_counter() - t0, "val_tokens": res.tokens}
            row.update({f"val_{k}": v for k, v in summary(res.nats_per_token).items()})
            log({**row, "val_stderr": res.stderr, "val_sample_tokens": res.total})
        return res

    threads = min(tc.threads or os.cpu_count() or 1, tc.batch)
    with ExitStack() as stack:
        stop = stack.enter_context(stop_on_signals())
        if threads > 1:  # each shard runs single-threaded BLAS on its own core
            stack.enter_context(threadpool_limits(1))
        params, grads_of = open_shards(stack, cfg, params, threads, tc.shards_on)
        checkpoint()  # the step the run starts from: an interrupt before the first periodic one resumes too
        if plan.bounded:  # time one evaluation window for the reserve of the final evaluation
            t = time.perf_counter()
            with threadpool_limits(threads):
                probe = evaluate(cfg, params, val_ids, EVAL_STREAMS, EVAL_SEQ_LEN, tc.eval_tokens, stop=lambda: True)
            plan.measured(probe.tokens, time.perf_counter() - t)
        while not done() and not stop.requested:
            total = tc.steps
            if plan.train_end is not None:  # schedule by whichever bound is nearer: steps, or training time
                horizon = max(plan.train_end - t0, 1e-9)
                frac = max(step / tc.steps if tc.steps else 0.0, (time.perf_counter() - t0) / horizon)
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
            if step % tc.eval_every == 0 and not done() and not stop.requested:
                check = run_eval(tc.check_tokens)
                if check.complete:
                    val_nats = check.nats_per_token
            if step % tc.checkpoint_every == 0:
                checkpoint()
        final: EvalResult | None = None
        if not stop.requested:
            final = run_eval(tc.eval_tokens, final=True)
            finished = not stop.requested  # a final evaluation cut short by a signal is done again on resume
            if finished:
                val_nats = final.nats_per_token
        checkpoint()
        if stop.requested:
            raise Interrupted(step, stop.signame)
    return TrainResult(step, tokens, train_loss, val_nats, (time.perf_counter() - t0) / 60.0, final)
