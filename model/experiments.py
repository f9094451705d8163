"""Benchmark experiments: ``seqpred experiment memory`` (long-lag memory of every recurrent cell).

The memory experiment trains each selected cell from scratch on two synthetic long-lag tasks (see
:mod:`model.tasks`) and scores it on a fixed held-out batch:

* **adding problem** at T ∈ {50, 100, 200, 400}: real-valued inputs ``[B, T, 2]``, MSE head, only the last
  step scored; metric = held-out MSE of the last-step prediction (baseline: always predicting 1 gives
  :data:`~model.tasks.ADDING_BASELINE_MSE` = 0.167).
* **remember-the-first-symbol** at lags {20, 50, 100}: tokens, softmax head, only the last position scored;
  metrics = accuracy of the argmax at the last position (chance 1/n_symbols) and its cross-entropy in nats.

Every run has a fixed budget: ``steps`` Adam updates (each on a fresh random batch from the task generator,
global-norm clipping, linear warmup then cosine decay), cut short if it exceeds ``max_seconds`` of wall time.
Training randomness comes from ``np.random.default_rng([TRAIN_STREAM, seed])``; the held-out batch of a
(task, length) from ``np.random.default_rng([EVAL_STREAM, task_id, length])``, so it is disjoint from every
training stream and identical for every cell and seed.

Outputs under ``--out``: ``results.json`` (config + one record per cell/task/length/seed), ``results.md``
(mean ± sample std over seeds) and, when matplotlib is importable, ``results.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from model import network as N
from model import optim
from model.config import CELLS, ModelConfig
from model.errors import EXIT_INTERRUPTED, ConfigError, SeqpredError, report_error
from model.tasks import ADDING_BASELINE_MSE, adding_problem, remember_first, remember_first_vocab

TASKS = ("adding", "remember_first")
TRAIN_STREAM, EVAL_STREAM = 0, 1
#: Held-out sequences scored per forward pass (bounds the memory of the forward caches).
EVAL_CHUNK = 250

#: ``--quick`` settings: a smoke test of the whole pipeline in a few seconds, not a measurement.
QUICK = {"adding_lengths": (10, 20), "lags": (10, 20), "seeds": 1, "steps": 30, "eval_size": 200}


@dataclass(frozen=True)
class MemoryConfig:
    """Everything that defines a memory experiment (stored in ``results.json``).

    Attributes:
        cells: the cells to compare, names from :data:`model.config.CELLS`.
        adding_lengths: sequence lengths T of the adding problem.
        lags: lags of remember-the-first-symbol (sequences are lag + 1 long).
        seeds: seeds 0 .. seeds-1 per (cell, task, length).
        steps: Adam updates per run.
        max_seconds: wall-time cap per run (0 = none); a run cut short records the steps it made.
        hidden, embed: hidden size of the single recurrent layer; embedding width of the token task.
        batch: training sequences per step.
        lr, warmup, clip: peak learning rate, linear warmup steps, global-norm clip.
        min_lr_frac: cosine decay after warmup to ``lr * min_lr_frac`` at the last step (1 = constant lr; a
            decay that starts early stalls the plateau escape of the adding problem in short budgets).
        n_symbols: keys of remember-the-first-symbol (vocabulary 2 · n_symbols; chance accuracy 1/n_symbols).
        eval_size: held-out sequences per (task, length).
    """

    cells: tuple[str, ...] = CELLS
    adding_lengths: tuple[int, ...] = (50, 100, 200, 400)
    lags: tuple[int, ...] = (20, 50, 100)
    seeds: int = 3
    steps: int = 400
    max_seconds: float = 90.0
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
        if not self.cells:
            raise ConfigError("--cells: the list is empty; choose from " + ",".join(CELLS))
        for c in self.cells:
            if c not in CELLS:
                raise ConfigError(f"--cells: unknown cell {c!r}; choose from {','.join(CELLS)}")
        if len(set(self.cells)) != len(self.cells):
            raise ConfigError(f"--cells: a cell is listed twice in {','.join(self.cells)!r}")
        _positive_list("--adding-lengths", self.adding_lengths, minimum=2)
        _positive_list("--lags", self.lags, minimum=1)
        for flag, value in (
            ("--seeds", self.seeds),
            ("--steps", self.steps),
            ("--hidden", self.hidden),
            ("--embed", self.embed),
            ("--batch", self.batch),
            ("--n-symbols", self.n_symbols),
            ("--eval-size", self.eval_size),
        ):
            _positive_int(flag, value)
        _positive_int("--warmup", self.warmup, minimum=0)
        for flag, x, allow_zero in (("--lr", self.lr, False), ("--clip", self.clip, True)):
            _positive_float(flag, x, allow_zero)
        _positive_float("--max-seconds", self.max_seconds, allow_zero=True)
        if not (math.isfinite(self.forget_bias)):
            raise ConfigError(f"--forget-bias: must be finite, got {self.forget_bias!r}")
        if not 0.0 <= self.min_lr_frac <= 1.0:
            raise ConfigError(f"--min-lr-frac: must be in [0, 1], got {self.min_lr_frac!r}")
        if self.n_symbols < 2:
            raise ConfigError(f"--n-symbols: must be at least 2, got {self.n_symbols}")

    @property
    def n_runs(self) -> int:
        return len(self.cells) * (len(self.adding_lengths) + len(self.lags)) * self.seeds

    def model_config(self, cell: str, task: str) -> ModelConfig:
        if task == "adding":
            return ModelConfig(
                cell=cell, hidden=self.hidden, head="mse", input_dim=2, output_dim=1, forget_bias=self.forget_bias
            )
        vocab = remember_first_vocab(self.n_symbols)
        return ModelConfig(
            cell=cell,
            hidden=self.hidden,
            vocab_size=vocab,
            embed=self.embed,
            head="softmax",
            forget_bias=self.forget_bias,
        )


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
    """Train one fresh single-layer network of ``cell`` on ``task`` at ``length`` and score it on ``held_out``
    (``(inputs, targets)``); returns the result and the trained parameters."""
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
    eval_s = clock() - t1
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
        eval_seconds=round(eval_s, 3),
        final_train_loss=loss if math.isfinite(loss) else None,
        diverged=diverged,
    )
    return res, p


def held_out_batch(exp: MemoryConfig, task: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed held-out ``(inputs, targets)`` of a (task, length): the same for every cell and seed."""
    rng = np.random.default_rng([EVAL_STREAM, TASKS.index(task), length])
    x, y, _ = task_batch(task, rng, exp.eval_size, length, exp.n_symbols)
    return x, y


def plan(exp: MemoryConfig) -> list[tuple[str, str, int, int]]:
    """Every run as ``(cell, task, length, seed)``, cheapest lengths first within each seed."""
    runs = []
    for seed in range(exp.seeds):
        for task, lengths in (("adding", exp.adding_lengths), ("remember_first", exp.lags)):
            for length in sorted(lengths):
                for cell in exp.cells:
                    runs.append((cell, task, length, seed))
    return runs


def run_memory(
    exp: MemoryConfig, log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.perf_counter
) -> list[RunResult]:
    """Run every (cell, task, length, seed) of ``exp``; ``log`` gets one line per finished run."""
    results: list[RunResult] = []
    cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    runs = plan(exp)
    start = clock()
    for k, (cell, task, length, seed) in enumerate(runs, 1):
        if (task, length) not in cache:
            cache[(task, length)] = held_out_batch(exp, task, length)
        res, _ = train_run(exp, cell, task, length, seed, cache[(task, length)], clock=clock)
        results.append(res)
        if log is not None:
            log(_progress_line(k, len(runs), res, exp.steps, clock() - start))
    return results


def _progress_line(k: int, n: int, r: RunResult, steps: int, elapsed: float) -> str:
    name = "T" if r.task == "adding" else "lag"
    if r.metric is None:
        m = "DIVERGED"
    elif r.task == "adding":
        m = f"mse {r.metric:.4f}"
    else:
        m = f"acc {r.metric:.3f} loss {r.eval_loss:.3f}"
    cut = " (cut by --max-seconds)" if r.steps < steps and not r.diverged else ""
    return (
        f"[{k}/{n}] {r.cell} {r.task} {name}={r.length} seed={r.seed}: {m}; "
        f"{r.steps} steps{cut} {r.train_seconds:.1f}s (elapsed {elapsed:.0f}s)"
    )


# --------------------------------------------------------------------------------------------- reports


def summarize(values: Sequence[float | None]) -> tuple[float, float, int, int]:
    """``(mean, sample std, n finite, n runs)``; std is 0 for one value, NaN mean when none is finite."""
    good = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not good:
        return math.nan, math.nan, 0, len(values)
    std = float(np.std(good, ddof=1)) if len(good) > 1 else 0.0
    return float(np.mean(good)), std, len(good), len(values)


def _cell(values: Sequence[float | None], fmt: str) -> str:
    mean, std, n, total = summarize(values)
    if n == 0:
        return "diverged"
    s = f"{mean:{fmt}} ± {std:{fmt}}" if total > 1 else f"{mean:{fmt}}"
    return s + (f" ({total - n} diverged)" if n < total else "")


def markdown_table(exp: MemoryConfig, results: Sequence[RunResult]) -> str:
    """Tables of mean ± sample std over seeds per cell and length, with the baselines."""
    by: dict[tuple[str, str, int], list[RunResult]] = {}
    for r in results:
        by.setdefault((r.cell, r.task, r.length), []).append(r)
    seeds = f"{exp.seeds} seed{'s' if exp.seeds > 1 else ''}"
    budget = (
        f"{exp.steps} steps (cap {exp.max_seconds:g} s) per run, batch {exp.batch}, hidden {exp.hidden}, "
        f"Adam lr {exp.lr:g} (warmup {exp.warmup}, final x{exp.min_lr_frac:g}), clip {exp.clip:g}, "
        f"forget bias {exp.forget_bias:g}; held-out {exp.eval_size} sequences"
    )
    lines = [f"Budget: {budget}. Mean ± sample std over {seeds}.", ""]

    def table(title: str, task: str, lengths: Sequence[int], key: str, label: str, fmt: str, base: str) -> None:
        lengths = sorted(lengths)
        lines.append(f"### {title}")
        lines.append("")
        lines.append("| cell | " + " | ".join(f"{label}={n}" for n in lengths) + " |")
        lines.append("|---|" + "---|" * len(lengths))
        for cell in exp.cells:
            row = [_cell([getattr(r, key) for r in by.get((cell, task, n), [])], fmt) for n in lengths]
            lines.append(f"| {cell} | " + " | ".join(row) + " |")
        lines.append(f"| *{base}* | " + " | ".join("" for _ in lengths) + " |")
        lines.append("")

    table(
        "Adding problem: held-out MSE (lower is better)",
        "adding",
        exp.adding_lengths,
        "metric",
        "T",
        ".4f",
        f"baseline (always predict 1): {ADDING_BASELINE_MSE}",
    )
    chance = 1.0 / exp.n_symbols
    table(
        f"Remember the first symbol: held-out accuracy at the last position ({exp.n_symbols} symbols)",
        "remember_first",
        exp.lags,
        "accuracy",
        "lag",
        ".3f",
        f"chance: {chance:.3f}",
    )
    table(
        "Remember the first symbol: held-out cross-entropy at the last position (nats)",
        "remember_first",
        exp.lags,
        "eval_loss",
        "lag",
        ".3f",
        f"chance: ln {exp.n_symbols} = {math.log(exp.n_symbols):.3f}",
    )
    secs = sum(r.train_seconds + r.eval_seconds for r in results)
    cut = sum(1 for r in results if r.steps < exp.steps and not r.diverged)
    lines.append(f"{len(results)} runs, {secs:.1f} s of training and evaluation; {cut} cut short by the cap.")
    return "\n".join(lines) + "\n"


def write_outputs(exp: MemoryConfig, results: Sequence[RunResult], out: Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and (when matplotlib is importable) ``results.png``."""
    from model.checkpoint import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "experiment": "memory",
        "config": _jsonable(asdict(exp)),
        "baselines": {"adding_mse": ADDING_BASELINE_MSE, "remember_first_accuracy": 1.0 / exp.n_symbols},
        "records": [_jsonable(asdict(r)) for r in results],
    }
    paths = {"json": out / "results.json", "md": out / "results.md"}
    write_json_atomic(paths["json"], doc)
    paths["md"].write_text("# Memory experiment\n\n" + markdown_table(exp, results))
    from model.experiment_plots import memory_plot

    png = memory_plot(exp, results, out / "results.png")
    if png is not None:
        paths["png"] = png
    return paths


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become a one-line :class:`ConfigError` (exit 2) instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts:
        raise ConfigError(f"{flag}: the list is empty (got {text!r}); give comma-separated positive integers")
    try:
        return tuple(int(s) for s in parts)
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seqpred experiment", description="Benchmark experiments.")
    sub = parser.add_subparsers(dest="experiment", required=True, parser_class=_Parser)
    d = MemoryConfig()
    p = sub.add_parser(
        "memory",
        help="long-lag memory of every cell: adding problem and remember-the-first-symbol",
        description="Train every selected cell on the adding problem and remember-the-first-symbol at several "
        "lengths and seeds; write results.json, results.md and results.png under --out.",
    )
    p.add_argument("--out", required=True, help="directory for results.json, results.md, results.png")
    p.add_argument("--cells", default=None, help=f"comma-separated cells (default: all of {','.join(CELLS)})")
    p.add_argument("--adding-lengths", default=None, help="comma-separated T (default 50,100,200,400)")
    p.add_argument("--lags", default=None, help="comma-separated remember-first lags (default 20,50,100)")
    p.add_argument("--seeds", type=int, default=None, help=f"seeds per setting (default {d.seeds})")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {d.steps})")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds, help="wall-time cap per run (0 = none)")
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--embed", type=int, default=d.embed, help="embedding width (remember-first)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--clip", type=float, default=d.clip, help="global gradient-norm clip (0 = off)")
    p.add_argument("--forget-bias", type=float, default=d.forget_bias, help="initial forget-gate bias")
    p.add_argument("--min-lr-frac", type=float, default=d.min_lr_frac, help="cosine decay to lr*this (1 = constant)")
    p.add_argument("--n-symbols", type=int, default=d.n_symbols, help="remember-first keys (chance 1/N)")
    p.add_argument("--eval-size", type=int, default=None, help=f"held-out sequences (default {d.eval_size})")
    p.add_argument("--quick", action="store_true", help="smoke test: lengths 10,20, 1 seed, 30 steps")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    return parser


def memory_config_from_args(a: argparse.Namespace) -> MemoryConfig:
    base: dict[str, Any] = dict(QUICK) if a.quick else {}
    if a.cells is not None:
        parts = [s.strip() for s in a.cells.split(",") if s.strip()]
        if not parts:
            raise ConfigError(f"--cells: the list is empty (got {a.cells!r}); choose from {','.join(CELLS)}")
        base["cells"] = tuple(parts)
    if a.adding_lengths is not None:
        base["adding_lengths"] = _int_list("--adding-lengths", a.adding_lengths)
    if a.lags is not None:
        base["lags"] = _int_list("--lags", a.lags)
    for key in ("seeds", "steps", "eval_size"):
        if getattr(a, key) is not None:
            base[key] = getattr(a, key)
    exp = MemoryConfig(**base)
    return replace(
        exp,
        max_seconds=a.max_seconds,
        hidden=a.hidden,
        embed=a.embed,
        batch=a.batch,
        lr=a.lr,
        warmup=a.warmup,
        clip=a.clip,
        n_symbols=a.n_symbols,
        forget_bias=a.forget_bias,
        min_lr_frac=a.min_lr_frac,
    )


def cmd_memory(a: argparse.Namespace) -> int:
    exp = memory_config_from_args(a)
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {str(out)!r} exists and is not a directory")
    if (out / "results.json").exists() and not a.overwrite:
        raise ConfigError(f"--out: {str(out)!r} already holds results.json; pass --overwrite to replace it")
    print(
        f"memory experiment: {len(exp.cells)} cells x ({len(exp.adding_lengths)} adding + {len(exp.lags)} "
        f"remember-first lengths) x {exp.seeds} seeds = {exp.n_runs} runs of {exp.steps} steps"
        + (" [quick smoke test]" if a.quick else ""),
        file=sys.stderr,
        flush=True,
    )
    results = run_memory(exp, log=lambda s: print(s, file=sys.stderr, flush=True))
    paths = write_outputs(exp, results, out)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


EXPERIMENTS = {"memory": cmd_memory}


def main_experiment(argv: list[str] | None = None) -> int:
    """``seqpred experiment NAME ...``; ``argv`` excludes ``experiment``. User errors: one line, exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        ns = build_parser().parse_args(args)
        return EXPERIMENTS[ns.experiment](ns)
    except SeqpredError as e:
        return report_error(e)
    except KeyboardInterrupt:
        print("seqpred: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# --------------------------------------------------------------------------------------------- validation


def _positive_list(flag: str, values: tuple[int, ...], minimum: int) -> None:
    if not values:
        raise ConfigError(f"{flag}: the list is empty")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{flag}: every value must be an integer >= {minimum}, got {v!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{flag}: a value is listed twice in {json.dumps(list(values))}")


def _positive_int(flag: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{flag}: must be an integer >= {minimum}, got {value!r}")


def _positive_float(flag: str, value: float, allow_zero: bool) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{flag}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


if __name__ == "__main__":
    sys.exit(main_experiment())
