"""``seqpred experiment``: both experiments' quick modes end to end, resume/overwrite, and user errors
(one line, exit 2, nothing written)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.experiments import variants as V
from model.experiments.cli import main_experiment
from model.experiments.memory import default_cells, layers_for

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A small generated text: sentences of a few words (a char model learns its spelling quickly)."""
    import random

    r = random.Random(0)
    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "and", "ran", "to", "house", "big", "small", "red", "blue"]
    lines = (" ".join(r.choice(words) for _ in range(r.randint(3, 9))) + "." for _ in range(1500))
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines))
    return path


def _progress(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("[")]


def test_memory_quick_mode_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exp"
    assert main_experiment(["memory", "--quick", "--jobs", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    recs = doc["records"]
    cells = default_cells()
    assert {"rnn", "lstm", "peephole", "cifg", "gru", "gru-lbr"} <= set(cells)
    keys = {(r["cell"], r["task"], r["length"], r["seed"]) for r in recs}
    want = {(c, t, n, 0) for c in cells for t in ("adding", "remember_first") for n in (10, 20)}
    assert keys == want and len(recs) == len(want)  # one record per (cell, task, length, seed)
    for r in recs:
        assert r["steps"] == 30 and r["train_seconds"] >= 0 and not r["diverged"]
        assert r["layers"] == layers_for(r["cell"])
        if r["task"] == "adding":
            assert r["metric_name"] == "mse" and 0 <= r["metric"] < 2
        else:
            assert r["metric_name"] == "accuracy" and 0 <= r["accuracy"] <= 1 and r["eval_loss"] > 0
    assert doc["baselines"] == {"adding_mse": 0.167, "remember_first_accuracy": 0.25}
    md = (out / "results.md").read_text()
    assert "| T=10 | T=20 |" in md and "| lag=10 | lag=20 |" in md and "0.167" in md and "chance: 0.250" in md
    for cell in cells:
        assert f"| {cell} |" in md or f"| {cell} ({layers_for(cell)} layers) |" in md
    assert (out / "results.png").exists() == HAS_MPL
    err = capsys.readouterr().err
    assert len(_progress(err)) == len(recs) and "lstm adding T=10 seed=0: mse" in err
    assert len((out / "records.jsonl").read_text().splitlines()) == len(recs)
    # results already there: refused without --resume/--overwrite, before any training
    assert main_experiment(["memory", "--quick", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_variants_quick_end_to_end_then_resume_with_more(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "var"
    base = ["variants", "--quick", "--jobs", "1", "--corpus", str(corpus), "--out", str(out)]
    assert main_experiment([*base, "--variants", "rnn,lstm,lstm-fb0"]) == 0
    doc = json.loads((out / "results.json").read_text())
    recs = doc["records"]
    assert [(r["variant"], r["lr"]) for r in recs] == [
        (v, lr) for v in ("rnn", "lstm", "lstm-fb0") for lr in V.QUICK["lrs"]
    ]
    fb = {r["variant"]: r["forget_bias"] for r in recs}
    assert fb == {"rnn": 1.0, "lstm": 1.0, "lstm-fb0": 0.0}
    for r in recs:
        assert r["steps"] == 15 and not r["diverged"] and 0 < r["val_nats"] < 5
    assert set(doc["best_lr"]) == {"rnn", "lstm", "lstm-fb0"} and doc["corpus"]["vocab_size"] > 10
    md = (out / "results.md").read_text()
    assert "| lstm-fb0 | NP, forget bias 0 |" in md and "| lstm |" in md and "**" in md
    assert (out / "results.png").exists() == HAS_MPL
    assert len(_progress(capsys.readouterr().err)) == len(recs)
    # resume with one more variant: only its runs are trained, the others are kept as they were
    assert main_experiment([*base, "--variants", "rnn,lstm,lstm-fb0,gru", "--resume"]) == 0
    err = capsys.readouterr().err
    assert len(_progress(err)) == 2 and all(" gru " in line for line in _progress(err))
    doc2 = json.loads((out / "results.json").read_text())
    assert doc2["records"][: len(recs)] == recs and len(doc2["records"]) == 8
    # a different budget cannot resume; --overwrite starts again
    assert main_experiment([*base, "--variants", "rnn", "--steps", "9", "--resume"]) == 2
    assert "--resume:" in (err := capsys.readouterr().err) and "was run with steps=15, not 9" in err, err
    assert main_experiment([*base, "--variants", "rnn", "--steps", "3", "--overwrite"]) == 0
    assert [r["steps"] for r in json.loads((out / "results.json").read_text())["records"]] == [3, 3]


def test_variants_readme_command_runs_outside_the_repository(tmp_path: Path) -> None:
    """``seqpred experiment variants --out runs/variants`` (the README's line) from a directory that is not the
    checkout: the default corpus ships with the package (tiny budget flags added)."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "model.cli", "experiment", "variants", "--out", "runs/variants"]
    cmd += ["--quick", "--jobs", "1", "--variants", "lstm", "--lrs", "0.01", "--steps", "2", "--eval-chars", "300"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((cwd / "runs" / "variants" / "results.json").read_text())
    assert doc["config"]["corpus"] == "tinyshakespeare" and doc["corpus"]["vocab_size"] > 30
    assert [r["variant"] for r in doc["records"]] == ["lstm"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["memory", "--cells", "lstm,nope"], "--cells: unknown name 'nope'"),
        (["memory", "--cells", ","], "--cells: the list is empty"),
        (["memory", "--adding-lengths", ""], "--adding-lengths: the list is empty"),
        (["memory", "--lags", "20,0"], "--lags: every value must be an integer >= 1, got 0"),
        (["memory", "--lags", "20,x"], "--lags: expected comma-separated integers, got '20,x'"),
        (["memory", "--seeds", "0"], "--seeds: must be an integer >= 1, got 0"),
        (["memory", "--steps", "-5"], "--steps: must be an integer >= 1, got -5"),
        (["memory", "--lr", "0"], "--lr: must be > 0, got 0.0"),
        (["memory", "--hidden", "abc"], "--hidden: invalid int value: 'abc'"),
        (["memory", "--jobs", "0"], "--jobs: must be an integer >= 1, got 0"),
        (["memory", "--resume", "--overwrite"], "not allowed with argument"),
        (["variants", "--variants", "lstm,depth-gated"], "--variants: unknown name 'depth-gated'"),
        (["variants", "--lrs", "0.01,abc"], "--lrs: expected comma-separated numbers, got '0.01,abc'"),
        (["variants", "--lrs", "0.01,-1"], "--lrs: must be > 0, got -1.0"),
        (["variants", "--lrs", "0.01,0.01"], "--lrs: a value is listed twice"),
        (["variants", "--seq-len", "0"], "--seq-len: must be an integer >= 1, got 0"),
        (["variants", "--eval-chars", "-1"], "--eval-chars: must be an integer >= 0, got -1"),
        (["variants", "--min-lr-frac", "2"], "--min-lr-frac: must be in [0, 1], got 2.0"),
        (["variants", "--jobs", "-1"], "--jobs: must be an integer >= 1, got -1"),
        (["variants", "--corpus", "/nonexistent/x.txt"], "corpus '/nonexistent/x.txt': no such file"),
    ],
)
def test_bad_input_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], corpus: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "never"
    extra = ["--corpus", str(corpus)] if args[0] == "variants" and "--corpus" not in args else []
    assert main_experiment([args[0], "--quick", "--out", str(out), *extra, *args[1:]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("seqpred: error: ") and needle in err, err
    assert not out.exists()


def test_out_is_a_file_and_unknown_experiment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert main_experiment(["memory", "--quick", "--out", str(f)]) == 2
    assert main_experiment(["nope"]) == 2
    assert main_experiment(["memory", "--quick"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("seqpred: error: ") for line in err)
    assert "is not a directory" in err[0] and "--out" in err[2]
