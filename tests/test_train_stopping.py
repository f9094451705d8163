"""Stopping a run: Ctrl-C / SIGTERM checkpoint the step reached and resume exactly; metrics rows never repeat."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.cli import main
from model.train.checkpoint import load_run
from model.train.stopping import truncate_metrics

#: Deterministic steps whatever the bound: a constant learning rate after warm-up (min-lr-frac 1), so a run
#: stopped at step k under ``--steps 1000000`` and resumed to k + 30 equals a run of k + 30 steps in one go.
FLAGS = ["--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "8", "--layers", "2", "--dropout", "0.2"]
FLAGS += ["--min-lr-frac", "1", "--warmup", "5", "--eval-every", "1000000", "--eval-tokens", "300"]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    return path


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _deterministic(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each row without its timings: (step, loss, lr, grad norm) or (step, validation nats, tokens)."""
    out = []
    for r in rows:
        if "loss" in r:
            out.append(("train", r["step"], r["loss"], r["lr"], r["grad_norm"]))
        else:
            out.append(("val", r["step"], r["val_nats_per_token"], r["val_tokens"]))
    return out


def _assert_same_state(a: Path, b: Path) -> None:
    ra, rb = load_run(a, with_training_state=True), load_run(b, with_training_state=True)
    assert ra.meta["step"] == rb.meta["step"] and ra.meta["rng"] == rb.meta["rng"] and ra.meta["pos"] == rb.meta["pos"]
    for k in ra.params:
        np.testing.assert_array_equal(ra.params[k], rb.params[k], err_msg=k)
    for k in ra.opt_state:
        np.testing.assert_array_equal(ra.opt_state[k], rb.opt_state[k], err_msg=k)
    for k in ra.stream_state:
        np.testing.assert_array_equal(ra.stream_state[k], rb.stream_state[k], err_msg=k)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_the_step_reached_and_resume_is_exact(sig: int, corpus: Path, tmp_path: Path) -> None:
    """``seqpred train`` sent SIGINT/SIGTERM mid-run, long before its first periodic checkpoint: exit 130 with
    one line, a checkpoint of the step it reached; ``--resume`` to k + 30 steps then equals k + 30 steps in one
    go bit for bit (parameters, Adam moments, carried state, RNG), and metrics.jsonl holds each step once."""
    run = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "model.cli", "train", "--corpus", str(corpus), *FLAGS, "--threads", "2"]
    cmd += ["--steps", "1000000", "--checkpoint-every", "1000000", "--out", str(run), "--no-progress"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.startswith("seqpred:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    k = load_run(run).meta["step"]
    name = signal.Signals(sig).name
    assert lines[0] == (
        f"seqpred: interrupted ({name}) at step {k}; checkpoint {run / 'checkpoint.npz'} written, "
        "continue with --resume"
    )
    assert k >= 30 and not load_run(run).meta["finished"]
    assert all(r["step"] <= k for r in _rows(run))
    target = str(k + 30)
    base = ["train", "--corpus", str(corpus), *FLAGS, "--threads", "2", "--checkpoint-every", "1000000"]
    base += ["--no-progress"]
    assert main([*base, "--steps", target, "--out", str(run), "--resume"]) == 0
    ref = tmp_path / "ref"
    assert main([*base, "--steps", target, "--out", str(ref)]) == 0
    _assert_same_state(run, ref)
    got, want = _deterministic(_rows(run)), _deterministic(_rows(ref))
    assert got == want
    steps = [r[1] for r in got if r[0] == "train"]
    assert steps == sorted(set(steps))  # no step twice


def test_a_run_killed_after_its_checkpoint_resumes_without_repeating_rows(corpus: Path, tmp_path: Path) -> None:
    """kill -9 leaves metrics rows past the last checkpoint (and maybe half a row): resume drops them first."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    base = ["train", "--corpus", str(corpus), *FLAGS, "--threads", "1", "--no-progress"]
    assert main([*base, "--steps", "20", "--out", str(run)]) == 0
    saved = tmp_path / "checkpoint-at-20.npz"
    shutil.copy(run / "checkpoint.npz", saved)
    assert main([*base, "--steps", "45", "--out", str(run), "--resume"]) == 0
    shutil.copy(saved, run / "checkpoint.npz")  # as if killed at step 45 with the checkpoint of step 20 on disk
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 46, "loss": 1.')  # cut short by the kill
    assert main([*base, "--steps", "45", "--out", str(run), "--resume"]) == 0
    assert main([*base, "--steps", "20", "--out", str(ref)]) == 0
    assert main([*base, "--steps", "45", "--out", str(ref), "--resume"]) == 0
    assert _deterministic(_rows(run)) == _deterministic(_rows(ref))
    _assert_same_state(run, ref)


def test_truncate_metrics_keeps_rows_up_to_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0} for s in (10, 20, 20, 30, 40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 50, "lo')
    assert truncate_metrics(path, 20) == 3  # 30, 40 and the half row
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 20, 20]
    assert truncate_metrics(path, 20) == 0
    assert truncate_metrics(tmp_path / "absent.jsonl", 5) == 0
