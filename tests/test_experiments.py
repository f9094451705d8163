"""``seqpred experiment memory``: the quick mode end to end, a learning check, and user errors (one line, exit 2)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

from model.config import CELLS
from model.experiments import (
    MemoryConfig,
    evaluate_last,
    held_out_batch,
    main_experiment,
    markdown_table,
    plan,
    train_run,
)
from model.tasks import ADDING_BASELINE_MSE

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def test_quick_mode_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exp"
    assert main_experiment(["memory", "--quick", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    recs = doc["records"]
    keys = {(r["cell"], r["task"], r["length"], r["seed"]) for r in recs}
    want = {(c, t, n, 0) for c in CELLS for t in ("adding", "remember_first") for n in (10, 20)}
    assert keys == want and len(recs) == len(want)  # one record per (cell, task, length, seed)
    for r in recs:
        assert r["steps"] == 30 and r["train_seconds"] >= 0 and not r["diverged"]
        if r["task"] == "adding":
            assert r["metric_name"] == "mse" and 0 <= r["metric"] < 2
        else:
            assert r["metric_name"] == "accuracy" and 0 <= r["accuracy"] <= 1 and r["eval_loss"] > 0
    assert doc["baselines"] == {"adding_mse": 0.167, "remember_first_accuracy": 0.25}
    md = (out / "results.md").read_text()
    assert "| T=10 | T=20 |" in md and "| lag=10 | lag=20 |" in md and "0.167" in md and "chance: 0.250" in md
    for cell in CELLS:
        assert f"| {cell} |" in md
    assert (out / "results.png").exists() == HAS_MPL
    err = capsys.readouterr().err
    progress = [line for line in err.splitlines() if line.startswith("[")]
    assert len(progress) == len(recs) and "lstm adding T=10 seed=0: mse" in err
    # results already there: refused without --overwrite, before any training
    assert main_experiment(["memory", "--quick", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


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
    from model import network as N

    p = N.init_params(cfg, np.random.default_rng(0))
    x, y = held_out_batch(exp, "remember_first", 5)
    loss, acc = evaluate_last(cfg, p, x, y, chunk=10)
    logits = N.forward(cfg, p, x, N.zero_state(cfg, 64)).out[:, -1, :]
    assert acc == pytest.approx(float((logits.argmax(0) == y[:, -1]).mean()))
    assert loss == pytest.approx(-float(N.log_softmax(logits.astype(np.float64))[y[:, -1], np.arange(64)].mean()))


def test_plan_covers_every_cell_task_length_seed_and_table_has_std() -> None:
    exp = MemoryConfig(cells=("rnn", "gru"), adding_lengths=(5,), lags=(3, 4), seeds=2)
    runs = plan(exp)
    assert len(runs) == exp.n_runs == 2 * 3 * 2 and len(set(runs)) == len(runs)
    from model.experiments import RunResult

    def fake(c: str, t: str, n: int, s: int) -> RunResult:
        acc = None if t == "adding" else 0.5 + s / 4
        return RunResult(c, t, n, s, "mse" if t == "adding" else "accuracy", 0.1 + s, 1.0, acc, 1, 0.1, 0.0, 0.1)

    md = markdown_table(exp, [fake(*r) for r in runs])
    assert "| rnn | 0.6000 ± 0.7071 |" in md  # mean ± sample std of 0.1 and 1.1
    assert "0.625 ± 0.177" in md


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cells", "lstm,nope"], "--cells: unknown cell 'nope'"),
        (["--cells", ","], "--cells: the list is empty"),
        (["--adding-lengths", ""], "--adding-lengths: the list is empty"),
        (["--lags", "20,0"], "--lags: every value must be an integer >= 1, got 0"),
        (["--lags", "20,x"], "--lags: expected comma-separated integers, got '20,x'"),
        (["--seeds", "0"], "--seeds: must be an integer >= 1, got 0"),
        (["--steps", "-5"], "--steps: must be an integer >= 1, got -5"),
        (["--lr", "0"], "--lr: must be > 0, got 0.0"),
        (["--hidden", "abc"], "--hidden: invalid int value: 'abc'"),
    ],
)
def test_bad_input_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    out = tmp_path / "never"
    assert main_experiment(["memory", "--quick", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("seqpred: error: ") and needle in err, err
    assert not out.exists()


def test_unknown_experiment_and_missing_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_experiment(["nope"]) == 2
    assert main_experiment(["memory", "--quick"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("seqpred: error: ") for line in err)
    assert "--out" in err[1]
