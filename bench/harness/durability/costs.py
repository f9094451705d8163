"""Costs of a durable session store that do not depend on the request path: snapshots, recovery, replay, bytes.

Each function takes the store's class (``LocalLog``, the product's hand-written log, or ``SqliteLog``, the
variant of ``harness.durability.sqlite_log``) so that both are measured by the same code in the same run.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.durability.sqlite_log import DB_NAME, SqliteLog, connect
from service.durability import wal
from service.durability.local import LocalLog
from service.durability.recovery import write_rows
from service.runtime.onnx_runtime import Runtime
from service.store.memory import MemoryStore


def disk_bytes(directory: Path) -> int:
    """Bytes of every file in ``directory`` (the SQLite database's -wal and -shm files included)."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def snapshot_cost(cls: type[LocalLog], runtime: Runtime, directory: Path, n: int) -> dict[str, Any]:
    """``n`` live sessions with random states in a fresh directory: the time the loop is held (batches paused,
    states copied), the whole snapshot (written, synced, older data let go), and the bytes on disk after it."""
    store = MemoryStore(runtime.new_state_memory(n), idle_timeout=0)
    log = cls(directory, "sync")
    log.recover(store, runtime)
    rng = np.random.default_rng(0)
    widths = [int(v.shape[-1]) for v in store.memory.read(0)]
    for i in range(n):
        _, slot = store.create(f"s{i}", 0.0)
        store.advance(slot, 10)
    write_rows(store.memory, np.arange(n), rng.standard_normal((n, sum(widths))).astype(np.float32), widths)
    held: list[float] = []

    class Timed:
        async def __aenter__(self) -> None:
            self.t0 = time.perf_counter()

        async def __aexit__(self, *exc: object) -> None:
            held.append(time.perf_counter() - self.t0)

    log.pause = Timed

    async def run() -> float:
        log.start()
        t0 = time.perf_counter()
        assert await log.snapshot()
        took = time.perf_counter() - t0
        await log.writer.stop()
        return took

    total = asyncio.run(run())
    log._unlock_dir()
    return {"sessions": n, "loop_held_s": held[0], "snapshot_s": total, "disk_mb": disk_bytes(directory) / 2**20}


def recovery_cost(cls: type[LocalLog], runtime: Runtime, directory: Path, n: int) -> float:
    """Seconds of a new server's ``recover`` from what :func:`snapshot_cost` left (``n`` sessions)."""
    store = MemoryStore(runtime.new_state_memory(n), idle_timeout=0)
    log = cls(directory, "sync")
    t0 = time.perf_counter()
    assert log.recover(store, runtime) == n
    took = time.perf_counter() - t0
    log._unlock_dir()
    return took


def replay_cost(cls: type[LocalLog], runtime: Runtime, directory: Path, sessions: int, tokens: int) -> dict[str, Any]:
    """``sessions`` sessions of ``tokens`` single-token records each, logged with no snapshot: recovery's time
    (records read and decoded, tokens run through ``sequence.onnx``) and the bytes the records take."""
    rng = np.random.default_rng(1)
    V = runtime.config.vocab_size
    recs = [wal.encode_create(time.time(), "", f"r{i}") for i in range(sessions)]
    for t in range(tokens):
        recs += [wal.encode_advance(time.time(), "", f"r{i}", int(rng.integers(V)), t + 1) for i in range(sessions)]
    directory.mkdir(parents=True)
    if cls is SqliteLog:
        db = connect(directory / DB_NAME)
        db.execute("BEGIN")
        db.executemany("INSERT INTO log (seq, rec) VALUES (?, ?)", ((i, r[8:]) for i, r in enumerate(recs)))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
    else:
        wal.segment_path(directory, 0).write_bytes(b"".join(recs))
    nbytes = disk_bytes(directory)
    store = MemoryStore(runtime.new_state_memory(sessions), idle_timeout=0)
    log = cls(directory, "sync")
    t0 = time.perf_counter()
    assert log.recover(store, runtime) == sessions
    took = time.perf_counter() - t0
    log._unlock_dir()
    n = sessions * tokens
    return {"tokens": n, "replay_s": took, "tokens_per_s": n / took, "bytes_per_record": nbytes / len(recs)}
