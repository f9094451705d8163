"""The memory experiment's pieces: a learning check, the fixed held-out batch and its scoring, the plan."""

from __future__ import annotations

import time

import numpy as np
import pytest

from model import network as N
from model.config import CELLS
from model.data.tasks import ADDING_BASELINE_MSE
from model.experiments.memory import (
    MEMORY_CELLS,
    MemoryConfig,
    default_cells,
    evaluate_last,
    held_out_batch,
    layers_for,
    plan,
    run_one,
    train_run,
)


def test_lstm_learns_adding_T10_well_below_baseline() -> None:
    exp = MemoryConfig(cells=("lstm",), hidden=16, steps=300, eval_size=500, max_seconds=0)
    t0 = time.perf_counter()
    res, _ = train_run(exp, "lstm", "adding", 10, 0, held_out_batch(exp, "adding", 10))
    assert time.perf_counter() - t0 < 10
    assert res.steps == 300 and res.metric is not None
    assert res.metric < 0.05 < ADDING_BASELINE_MSE, res.metric


def test_held_out_batch_is_fixed_and_scored_at_the_last_position() -> None:
    exp = MemoryConfig(eval_size=64)
    a, b = held_out_batch(exp, "adding", 12), held_out_batch(exp, "adding", 12)
    assert np.array_equal(a[0], b[0]) and a[0].shape == (64, 12, 2)
    # an untrained network on the adding problem is scored by MSE only; remember-first by argmax accuracy
    cfg = exp.model_config("gru", "remember_first")
    p = N.init_params(cfg, np.random.default_rng(0))
    x, y = held_out_batch(exp, "remember_first", 5)
    loss, acc = evaluate_last(cfg, p, x, y, chunk=10)
    logits = N.forward(cfg, p, x, N.zero_state(cfg, 64)).out[:, -1, :]
    assert acc == pytest.approx(float((logits.argmax(0) == y[:, -1]).mean()))
    assert loss == pytest.approx(-float(N.log_softmax(logits.astype(np.float64))[y[:, -1], np.arange(64)].mean()))


def test_plan_covers_every_cell_task_length_seed() -> None:
    exp = MemoryConfig(cells=("rnn", "gru"), adding_lengths=(5,), lags=(3, 4), seeds=2)
    runs = plan(exp)
    assert len(runs) == exp.n_runs == 2 * 3 * 2 and len(set(runs)) == len(runs)
    assert [r[3] for r in runs] == sorted(r[3] for r in runs)  # seed-major: an interrupted run has whole seeds


def test_default_cells_are_the_issue_cells_the_library_has() -> None:
    cells = default_cells()
    assert cells == tuple(c for c in MEMORY_CELLS if c in CELLS) and MemoryConfig().cells == cells
    assert layers_for("lstm") == 1 and layers_for("depth-gated") == 2


def test_run_one_record_matches_train_run() -> None:
    exp = MemoryConfig(cells=("rnn",), hidden=8, steps=5, eval_size=20)
    rec = run_one(exp, ("rnn", "remember_first", 4, 1))
    res, _ = train_run(exp, "rnn", "remember_first", 4, 1, held_out_batch(exp, "remember_first", 4))
    assert (rec["cell"], rec["task"], rec["length"], rec["seed"], rec["layers"]) == ("rnn", "remember_first", 4, 1, 1)
    assert rec["accuracy"] == res.accuracy and rec["eval_loss"] == res.eval_loss  # seeded by the key alone
