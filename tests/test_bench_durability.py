"""bench/durability.py and its SQLite variant of the session store (bench/harness/durability): the damage probe
behind the decision in docs/reliability.md, the SQLite store surviving a crash image, and a short run."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from harness.durability import probe  # noqa: E402
from harness.durability.sqlite_log import SqliteLog  # noqa: E402
from service_helpers import tiny_model  # noqa: E402

from service.runtime.bundle import load_bundle  # noqa: E402
from service.runtime.onnx_runtime import Runtime  # noqa: E402
from service.store.memory import MemoryStore  # noqa: E402


def test_one_flipped_byte_stops_the_log_but_sqlite_silently_drops_acknowledged_commits(tmp_path: Path) -> None:
    """docs/reliability.md, "SQLite or the hand-written log": the same damage, three synced changes, the 2nd hit."""
    log = probe.probe_log(tmp_path / "log")
    assert log["starts"] is False and "is damaged at byte" in log["said"]
    lite = probe.probe_sqlite(tmp_path / "sqlite")
    assert lite == {"starts": True, "kept": 1, "said": "quick_check: ok"}  # the 2nd and 3rd are gone, no error


def test_the_sqlite_store_keeps_sessions_across_a_crash_image(tmp_path: Path) -> None:
    """The variant measured is a working store: records committed, a snapshot, more records, a crash image."""
    runtime = Runtime(load_bundle(tiny_model()), "cpu")
    d = tmp_path / "state"

    async def run() -> None:
        store = MemoryStore(runtime.new_state_memory(8), idle_timeout=0)
        log = SqliteLog(d, "sync")
        log.recover(store, runtime)
        log.start()
        _, slot = store.create("a", 0.0)
        log.on_start("", "a", False, 3)
        runtime.sequence(
            store.memory, np.array([slot]), np.array([[1, 2, 3]]), np.array([3]), want_tokens=False, want_next=False
        )
        store.advance(slot, 3)
        log.on_advance("", "a", np.array([1, 2, 3]), 3, lambda: [])
        await log.durable()  # type: ignore[misc]
        assert await log.snapshot()
        log.on_start("", "b", False, 2)
        log.on_advance("", "b", np.array([4, 5]), 2, lambda: [])
        await log.durable()  # type: ignore[misc]
        shutil.copytree(d, tmp_path / "image", ignore=shutil.ignore_patterns("lock"))
        await log.close()

    asyncio.run(run())
    store = MemoryStore(runtime.new_state_memory(8), idle_timeout=0)
    log = SqliteLog(tmp_path / "image", "sync")
    assert log.recover(store, runtime) == 2
    assert store.info("a", 0.0).position == 3 and store.info("b", 0.0).position == 2
    log._unlock_dir()


@pytest.mark.slow
def test_a_short_run_prints_its_table_and_json(tmp_path: Path) -> None:
    argv = [sys.executable, str(BENCH / "durability.py"), "--model", str(tiny_model()), "--sessions", "300",
            "--streams", "1,4", "--duration", "0.5", "--rounds", "1", "--replay-sessions", "5",
            "--replay-tokens", "3", "--json"]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.splitlines()[-1])
    assert out["throughput"]["log"]["1"]["ratio_to_log"] == 1.0
    assert out["throughput"]["sqlite"]["4"]["requests_per_s"] > 0
    assert out["log"]["damage"]["starts"] is False and out["sqlite"]["damage"]["kept"] == 1
    assert "refuses to start" in res.stdout
