"""Batch shards on worker processes: the thread-sharded result bit for bit, shared parameters, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from model import network as N
from model.cli import main
from model.config import ModelConfig
from model.errors import ConfigError
from model.train import loop as train_mod
from model.train import shard_pool
from model.train.checkpoint import load_run
from model.train.parallel import sharded_grads
from model.train.shard_pool import ShardPool, ShardWorkerError, shared_memory_fits


def _batch(cfg: ModelConfig, B: int, T: int, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    x, y = rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
    state = [
        (rng.standard_normal((B, cfg.hidden)), rng.standard_normal((B, cfg.hidden)) if cfg.has_c else None)
        for _ in range(cfg.layers)
    ]
    return x, y, state


@pytest.mark.parametrize(("cell", "shards"), [("lstm", 2), ("lstm", 3), ("gru-lbr", 2)])
def test_equals_thread_sharding_bit_for_bit(cell: str, shards: int, rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell=cell, layers=2, hidden=8, vocab_size=13, embed=4, dropout=0.25)
    p = N.init_params(cfg, rng, np.float64)
    x, y, s0 = _batch(cfg, 7, 5, rng)
    w = rng.random((7, 5))
    with ThreadPoolExecutor(shards) as ex:
        l1, g1, st1 = sharded_grads(cfg, p, x, y, s0, ex, shards, w, np.random.default_rng(4))
    with ShardPool(cfg, p, shards) as pool:
        l2, g2, st2 = pool.grads(x, y, s0, w, np.random.default_rng(4))
    assert l2 == l1
    assert list(g2) == list(p)
    for k in p:
        np.testing.assert_array_equal(g2[k], g1[k], err_msg=k)
    for (h1, c1), (h2, c2) in zip(st1, st2, strict=True):
        np.testing.assert_array_equal(h2, h1)
        if c1 is not None:
            np.testing.assert_array_equal(c2, c1)


def test_workers_see_in_place_updates_of_the_shared_parameters(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", layers=1, hidden=6, vocab_size=9, embed=3)
    p = N.init_params(cfg, rng)
    x, y, s0 = _batch(cfg, 4, 6, rng)
    with ShardPool(cfg, p, 2) as pool:
        before = pool.grads(x, y, s0)[0]
        for v in pool.params.values():  # what the optimiser does between steps
            v *= 0.5
        after = pool.grads(x, y, s0)
        halved = {k: v * np.float32(0.5) for k, v in p.items()}
        with ThreadPoolExecutor(2) as ex:
            expect = sharded_grads(cfg, halved, x, y, s0, ex, 2)
    assert after[0] != before
    assert after[0] == expect[0]
    for k in p:
        np.testing.assert_array_equal(after[1][k], expect[1][k], err_msg=k)


def test_a_failing_worker_reports_its_error_and_the_pool_goes_on(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", layers=1, hidden=4, vocab_size=5, embed=3)
    p = N.init_params(cfg, rng)
    x, y, s0 = _batch(cfg, 4, 3, rng)
    w = np.ones((4, 3))
    w[2:] = 0.0  # the worker's rows (the second half) carry no weight: its batch_grads refuses them
    with ShardPool(cfg, p, 2) as pool:
        with pytest.raises(ShardWorkerError, match=r"(?s)shard worker 1 failed.*weights: the batch has no position"):
            pool.grads(x, y, s0, w)
        loss, _, _ = pool.grads(x, y, s0)
        assert np.isfinite(loss)


def test_a_dead_worker_is_reported_with_its_exit_code(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", layers=1, hidden=4, vocab_size=5, embed=3)
    p = N.init_params(cfg, rng)
    x, y, s0 = _batch(cfg, 4, 3, rng)
    with ShardPool(cfg, p, 2) as pool:
        pool.grads(x, y, s0)
        pid = pool._procs[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        pool._procs[0].join(5)
        with pytest.raises(ShardWorkerError, match=f"shard worker 1 \\(pid {pid}\\) exited unexpectedly, exit code -9"):
            pool.grads(x, y, s0)


def test_close_frees_the_shared_memory_and_is_idempotent(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", layers=1, hidden=4, vocab_size=5, embed=3)
    pool = ShardPool(cfg, N.init_params(cfg, rng), 2)
    names = [shm.name for shm in pool._shms]
    procs = list(pool._procs)
    pool.close()
    pool.close()
    assert all(not p.is_alive() for p in procs)
    if Path(shard_pool.SHM_DIR).is_dir():
        assert not any((Path(shard_pool.SHM_DIR) / n.lstrip("/")).exists() for n in names)


def test_needs_two_shards(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", layers=1, hidden=4, vocab_size=5, embed=3)
    with pytest.raises(ValueError, match="shards: a pool needs at least 2, got 1"):
        ShardPool(cfg, N.init_params(cfg, rng), 1)


def test_shared_memory_fits_checks_the_tmpfs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    small = {"w": np.zeros(1000, np.float32)}
    monkeypatch.setattr(shard_pool, "SHM_DIR", str(tmp_path))
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert shared_memory_fits(small, 2)
    huge = {"w": np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(free // 4,), strides=(0,))}
    assert not shared_memory_fits(huge, 2)
    monkeypatch.setattr(shard_pool, "SHM_DIR", str(tmp_path / "missing"))
    assert shared_memory_fits(huge, 2)


def _train_run(tmp_path: Path, name: str, *extra: str) -> dict[str, np.ndarray]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / name
    args = ["train", "--corpus", str(corpus), "--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "8"]
    args += ["--steps", "4", "--threads", "2", "--dropout", "0.2", "--layers", "2", "--eval-tokens", "200"]
    assert main([*args, "--out", str(out), "--no-progress", *extra]) == 0
    return load_run(out).params


@pytest.fixture(scope="module")
def on_threads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The reference run: the same training with its shards on threads."""
    return _train_run(tmp_path_factory.mktemp("threads"), "threads", "--shards-on", "threads")


def _assert_same_run(got: dict[str, np.ndarray], expect: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expect)
    for k in expect:
        np.testing.assert_array_equal(got[k], expect[k], err_msg=k)


def test_the_trainer_on_processes_equals_it_on_threads(tmp_path: Path, on_threads: dict[str, np.ndarray]) -> None:
    _assert_same_run(_train_run(tmp_path, "procs", "--shards-on", "processes"), on_threads)


def test_the_trainer_falls_back_to_threads_without_room_in_shared_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_threads: dict[str, np.ndarray]
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("no pool should start")

    monkeypatch.setattr(shard_pool, "shared_memory_fits", lambda params, shards: False)
    monkeypatch.setattr(shard_pool, "ShardPool", refuse)
    with pytest.warns(RuntimeWarning, match=r"shards_on: .* has no room for 2 shard processes .*; the shards run on"):
        _assert_same_run(_train_run(tmp_path, "fallback"), on_threads)


def test_the_trainer_falls_back_to_threads_when_processes_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_threads: dict[str, np.ndarray]
) -> None:
    def no_shm(*args: object) -> None:
        raise OSError("no shared memory here")

    monkeypatch.setattr(shard_pool, "ShardPool", no_shm)
    with pytest.warns(RuntimeWarning, match=r"cannot start shard processes \(no shared memory here\); the shards run"):
        _assert_same_run(_train_run(tmp_path, "fallback"), on_threads)


def test_an_unknown_shard_mode_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="shards_on: must be one of processes, threads, got 'gpu'"):
        train_mod.TrainConfig(steps=1, shards_on="gpu")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_stops_cleanly_with_its_workers(sig: int, tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM mid-run: exit 130 with one line, no traceback, no worker left, no shared memory left."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    out = tmp_path / "run"
    shm = Path(shard_pool.SHM_DIR)
    cmd = [sys.executable, "-m", "model.cli", "train", "--corpus", str(corpus), "--hidden", "16", "--embed", "8"]
    cmd += ["--batch", "4", "--seq-len", "8", "--steps", "1000000", "--threads", "2"]
    proc = subprocess.Popen([*cmd, "--out", str(out), "--no-progress"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)
        children = _children(proc.pid)
        assert children, "no shard worker"
        maps = Path(f"/proc/{proc.pid}/maps").read_text().splitlines()
        mine = {Path(line.split()[-1]) for line in maps if f"{shm}/" in line}  # other runs on the machine have theirs
        assert mine, "the pool's shared memory is not mapped"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "seqpred: interrupted" in err and "Traceback" not in err, err
    deadline = time.monotonic() + 10  # the resource tracker leaves once it sees its parent gone
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)]
    assert not [p for p in mine if p.exists()]


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_a_failure_in_the_callers_own_shard_leaves_no_stale_reply(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", layers=1, hidden=4, vocab_size=5, embed=3)
    p = N.init_params(cfg, rng)
    x, y, s0 = _batch(cfg, 4, 3, rng)
    w = np.ones((4, 3))
    w[:2] = 0.0  # the caller's rows (the first half) carry no weight: its own shard fails
    with ShardPool(cfg, p, 2) as pool:
        with pytest.raises(ValueError, match="weights: the batch has no position"):
            pool.grads(x, y, s0, w)
        x2, y2, s2 = _batch(cfg, 4, 3, rng)
        got = pool.grads(x2, y2, s2)
        with ThreadPoolExecutor(2) as ex:
            expect = sharded_grads(cfg, p, x2, y2, s2, ex, 2)
    assert got[0] == expect[0]
    for k in p:
        np.testing.assert_array_equal(got[1][k], expect[1][k], err_msg=k)
