"""``seqpred experiment memory``: long-lag memory of every recurrent cell.

Each selected cell is trained from scratch on two synthetic long-lag tasks (see :mod:`model.data.tasks`) and scored
on a fixed held-out batch:

* **adding problem** at T ∈ {50, 100, 200, 400}: real-valued inputs ``[B, T, 2]``, MSE head, only the last
  step scored; metric = held-out MSE of the last-step prediction (baseline: always predicting 1 gives
  :data:`~model.data.tasks.ADDING_BASELINE_MSE` = 0.167).
* **remember-the-first-symbol** at lags {20, 50, 100}: tokens, softmax head, only the last position scored;
  metrics = accuracy of the argmax at the last position (chance 1/n_symbols) and its cross-entropy in nats.

One recurrent layer per cell, except the cells of :data:`DEEP_CELLS` (the Depth Gated LSTM, whose layer 0 is
exactly a plain LSTM), which get 2. Every run has a fixed budget: ``steps`` Adam updates, each on a fresh
random batch from the task generator, global-norm clipping, linear warmup then (optionally) cosine decay; it is
cut short if it exceeds ``max_seconds`` of wall time. Training randomness comes from
``np.random.default_rng([TRAIN_STREAM, seed])``; the held-out batch of a (task, length) from
``np.random.default_rng([EVAL_STREAM, task_id, length])``, disjoint from every training stream and identical
for every cell and seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from model import config as model_config
from model import network as N
from model.config import ModelConfig
from model.data.tasks import adding_problem, remember_first, remember_first_vocab
from model.errors import ConfigError
from model.experiments.runner import Key, Record, check_float, check_int, check_int_list, check_names
from model.train import optim

TASKS = ("adding", "remember_first")
TRAIN_STREAM, EVAL_STREAM = 0, 1
#: Held-out sequences scored per forward pass (bounds the memory of the forward caches).
EVAL_CHUNK = 250
#: The default cells of the memory experiment (those of them the library has; see :func:`default_cells`).
MEMORY_CELLS = ("rnn", "lstm", "peephole", "cifg", "gru", "gru-lbr", "depth-gated", "clockwork")
#: Cells that only differ from their base cell with more than one layer, and the layer count they get.
DEEP_CELLS = {"depth-gated": 2}

#: ``--quick`` settings: a smoke test of the whole pipeline in a few seconds, not a measurement.
QUICK = {"adding_lengths": (10, 20), "lags": (10, 20), "seeds": 1, "steps": 30, "eval_size": 200}
#: The fields that enumerate runs (a resumed experiment may change them; see :mod:`model.experiments.runner`).
ENUMERATING = ("cells", "adding_lengths", "lags", "seeds")


def layers_for(cell: str) -> int:
    """Recurrent layers a cell gets in the experiments: 2 for :data:`DEEP_CELLS`, else 1."""
    return DEEP_CELLS.get(cell, 1)


def _all_cells() -> tuple[str, ...]:
    return tuple(model_config.CELLS)  # read at call time: every cell the library has now


def default_cells() -> tuple[str, ...]:
    """:data:`MEMORY_CELLS` that the library has now (the Greff ablations are left to ``--cells``)."""
    return tuple(c for c in MEMORY_CELLS if c in model_config.CELLS)


@dataclass(frozen=True)
class MemoryConfig:
    """Everything that defines a memory experiment (stored in ``results.json``).

    Attributes:
        cells: the cells to compare, names from :data:`model.config.CELLS` (default: :func:`default_cells`).
        adding_lengths: sequence lengths T of the adding problem.
        lags: lags of remember-the-first-symbol (sequences are lag + 1 long).
        seeds: seeds 0 .. seeds-1 per (cell, task, length).
        steps: Adam updates per run.
        max_seconds: wall-time cap per run (0 = none); a run cut short records the steps it made.
        hidden, embed: hidden size of every recurrent layer; embedding width of the token task.
        batch: training sequences per step.
        lr, warmup, clip: peak learning rate, linear warmup steps, global-norm clip.
        min_lr_frac: cosine decay after warmup to ``lr * min_lr_frac`` at the last step (1 = constant lr; a
            decay that starts early stalls the plateau escape of the adding problem in short budgets).
        n_symbols: keys of remember-the-first-symbol (vocabulary 2 · n_symbols; chance accuracy 1/n_symbols).
        eval_size: held-out sequences per (task, length).
    """

    cells: tuple[str, ...] = field(default_factory=default_cells)
    adding_lengths: tuple[int, ...] = (50, 100, 200, 400)
    lags: tuple[int, ...] = (20, 50, 100)
    seeds: int = 3
    steps: int = 400
    max_seconds: float = 300.0
    hidden: int = 32
    embed: int = 16
    batch: int = 32
    lr: float = 1e-2
    warmup: int = 20
    clip: float = 1.0
    n_symbols: int = 4
    eval_size: int = 1000
    forget_bias: float = 1.0
    min_lr_frac: float = 1.0

    def __post_init__(self) -> None:
        check_names("--cells", self.cells, _all_cells())
        check_int_list("--adding-lengths", self.adding_lengths, minimum=2)
        check_int_list("--lags", self.lags, minimum=1)
        for flag, value in (
            ("--seeds", self.seeds),
            ("--steps", self.steps),
            ("--hidden", self.hidden),
            ("--embed", self.embed),
            ("--batch", self.batch),
            ("--n-symbols", self.n_symbols),
            ("--eval-size", self.eval_size),
        ):
            check_int(flag, value)
        check_int("--warmup", self.warmup, minimum=0)
        check_float("--lr", self.lr, allow_zero=False)
        check_float("--clip", self.clip, allow_zero=True)
        check_float("--max-seconds", self.max_seconds, allow_zero=True)
        if not math.isfinite(self.forget_bias):
            raise ConfigError(f"--forget-bias: must be finite, got {self.forget_bias!r}")
        if not 0.0 <= self.min_lr_frac <= 1.0:
            raise ConfigError(f"--min-lr-frac: must be in [0, 1], got {self.min_lr_frac!r}")
        if self.n_symbols < 2:
            raise ConfigError(f"--n-symbols: must be at least 2, got {self.n_symbols}")

    @property
    def n_runs(self) -> int:
        return len(self.cells) * (len(self.adding_lengths) + len(self.lags)) * self.seeds

    def model_config(self, cell: str, task: str) -> ModelConfig:
        common: dict[str, Any] = {
            "cell": cell,
            "layers": layers_for(cell),
            "hidden": self.hidden,
            "forget_bias": self.forget_bias,
        }
        if task == "adding":
            return ModelConfig(**common, head="mse", input_dim=2, output_dim=1)
        return ModelConfig(**common, vocab_size=remember_first_vocab(self.n_symbols), embed=self.embed)


@dataclass
class RunResult:
    """One training run: ``metric`` is the MSE (adding) or the accuracy (remember_first) on the held-out batch."""

    cell: str
    task: str
    length: int
    seed: int
    metric_name: str
    metric: float | None
    eval_loss: float | None
    accuracy: float | None
    steps: int
    train_seconds: float
    eval_seconds: float
    final_train_loss: float | None
    diverged: bool = False
    layers: int = 1

    @classmethod
    def from_record(cls, rec: Record) -> RunResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in rec.items() if k in names})


KEY_FIELDS = ("cell", "task", "length", "seed")


# --------------------------------------------------------------------------------------------- the math


def adding_batch(rng: np.random.Generator, batch: int, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An adding-problem batch in the network's layout: ``x [B, T, 2]``, targets ``[B, T, 1]``, weights
    ``[B, T]`` (1 only at the last step, where the target is the sum; elsewhere targets are 0 and unscored)."""
    x, y = adding_problem(rng, batch, T)
    tgt = np.zeros((batch, T, 1), dtype=np.float32)
    tgt[:, -1, :] = y
    w = np.zeros((batch, T), dtype=np.float32)
    w[:, -1] = 1.0
    return x, tgt, w


def task_batch(
    task: str, rng: np.random.Generator, batch: int, length: int, n_symbols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(inputs, targets, weights)`` of one fresh training or held-out batch of ``task``."""
    if task == "adding":
        return adding_batch(rng, batch, length)
    if task == "remember_first":
        return remember_first(rng, batch, length, n_symbols)
    raise ConfigError(f"task: unknown task {task!r}; choose one of {', '.join(TASKS)}")


def evaluate_last(
    cfg: ModelConfig, p: N.Params, inputs: np.ndarray, targets: np.ndarray, chunk: int = EVAL_CHUNK
) -> tuple[float, float | None]:
    """Score the last position of a held-out batch: ``(mse, None)`` for the mse head,
    ``(cross-entropy nats, accuracy of the argmax)`` for the softmax head."""
    B = inputs.shape[0]
    total_loss = 0.0
    correct = 0
    for s in range(0, B, chunk):
        x = inputs[s : s + chunk]
        n = x.shape[0]
        out = N.forward(cfg, p, x, N.zero_state(cfg, n)).out[:, -1, :]  # [O, n]
        if cfg.token_input:
            key = np.asarray(targets[s : s + chunk, -1])
            logp = N.log_softmax(out.astype(np.float64), axis=0)
            total_loss -= float(logp[key, np.arange(n)].sum())
            correct += int((out.argmax(axis=0) == key).sum())
        else:
            y = np.asarray(targets[s : s + chunk, -1, :], dtype=np.float64).T  # [O, n]
            total_loss += float(((out - y) ** 2).mean(axis=0).sum())
    return total_loss / B, (correct / B if cfg.token_input else None)


def train_run(
    exp: MemoryConfig,
    cell: str,
    task: str,
    length: int,
    seed: int,
    held_out: tuple[np.ndarray, np.ndarray],
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[RunResult, N.Params]:
    """Train one fresh network of ``cell`` (:func:`layers_for` layers) on ``task`` at ``length`` and score it
    on ``held_out`` (``(inputs, targets)``); returns the result and the trained parameters."""
    cfg = exp.model_config(cell, task)
    rng = np.random.default_rng([TRAIN_STREAM, seed])
    p = N.init_params(cfg, rng)
    oc = optim.OptimConfig()
    st = optim.init_state(oc, p)
    warmup = min(exp.warmup, exp.steps // 10)
    loss = math.nan
    diverged = False
    t0 = clock()
    done = 0
    for i in range(exp.steps):
        x, y, w = task_batch(task, rng, exp.batch, length, exp.n_symbols)
        fwd = N.forward(cfg, p, x, N.zero_state(cfg, exp.batch))
        loss, dout = N.loss_and_dout(cfg, fwd.out, y, w)
        if not math.isfinite(loss):
            diverged = True
            break
        grads, _ = N.backward(cfg, p, fwd, dout)
        optim.clip_by_global_norm(grads, exp.clip)
        optim.step(oc, p, grads, st, optim.lr_at(i, exp.lr, warmup, exp.steps, exp.min_lr_frac))
        done = i + 1
        if exp.max_seconds > 0 and clock() - t0 > exp.max_seconds:
            break
    train_s = clock() - t0
    t1 = clock()
    ev_loss: float | None = None
    acc: float | None = None
    if not diverged:
        ev, acc = evaluate_last(cfg, p, *held_out)
        ev_loss = ev if math.isfinite(ev) else None
        diverged = ev_loss is None
    metric = ev_loss if task == "adding" else acc
    res = RunResult(
        cell=cell,
        task=task,
        length=length,
        seed=seed,
        metric_name="mse" if task == "adding" else "accuracy",
        metric=None if diverged else metric,
        eval_loss=ev_loss,
        accuracy=acc,
        steps=done,
        train_seconds=round(train_s, 3),
        eval_seconds=round(clock() - t1, 3),
        final_train_loss=loss if math.isfinite(loss) else None,
        diverged=diverged,
        layers=cfg.layers,
    )
    return res, p


def held_out_batch(exp: MemoryConfig, task: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed held-out ``(inputs, targets)`` of a (task, length): the same for every cell and seed."""
    rng = np.random.default_rng([EVAL_STREAM, TASKS.index(task), length])
    x, y, _ = task_batch(task, rng, exp.eval_size, length, exp.n_symbols)
    return x, y


def plan(exp: MemoryConfig) -> list[Key]:
    """Every run as ``(cell, task, length, seed)``, cheapest lengths first within each seed."""
    runs: list[Key] = []
    for seed in range(exp.seeds):
        for task, lengths in (("adding", exp.adding_lengths), ("remember_first", exp.lags)):
            for length in sorted(lengths):
                for cell in exp.cells:
                    runs.append((cell, task, length, seed))
    return runs


_HELD_OUT: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}


def run_one(exp: MemoryConfig, key: Key) -> Record:
    """The record of run ``key = (cell, task, length, seed)`` (a top-level function, for the process pool);
    held-out batches are cached per process."""
    cell, task, length, seed = key
    ck = (exp.eval_size, exp.n_symbols, task, length)
    if ck not in _HELD_OUT:
        _HELD_OUT.clear()  # plans run lengths in order: one batch cached at a time is enough
        _HELD_OUT[ck] = held_out_batch(exp, task, length)
    res, _ = train_run(exp, cell, task, length, seed, _HELD_OUT[ck])
    return asdict(res)


def progress_text(r: RunResult, steps: int) -> str:
    """``lstm adding T=100 seed=0: mse 0.1632; 400 steps 7.3s`` (the part of a progress line after ``[k/n]``)."""
    name = "T" if r.task == "adding" else "lag"
    if r.metric is None:
        m = "DIVERGED"
    elif r.task == "adding":
        m = f"mse {r.metric:.4f}"
    else:
        m = f"acc {r.metric:.3f} loss {r.eval_loss:.3f}"
    cut = " (cut by --max-seconds)" if r.steps < steps and not r.diverged else ""
    return f"{r.cell} {r.task} {name}={r.length} seed={r.seed}: {m}; {r.steps} steps{cut} {r.train_seconds:.1f}s"
