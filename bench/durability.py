"""Costs of durable sessions that do not depend on the request path: snapshots, recovery, replay.

    python bench/durability.py [--model DIR] [--sessions 100000] [--replay-sessions 1000] [--replay-tokens 200]

* snapshot: N live sessions (random states) in a fresh state directory; the time the event loop is held (batches
  paused, states copied) and the total time (written, fsynced, renamed, older files deleted), and the file size;
* recovery from that snapshot alone: a new server's ``recover`` (read, check, write N states);
* replay: ``--replay-sessions`` sessions, each with ``--replay-tokens`` single-token records in the log after the
  snapshot, so recovery runs them through ``sequence.onnx``: seconds and tokens/s.

The request-path cost (``sync`` vs ``none``) is measured by ``bench/serve_load.py --durability sync|periodic``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.durability import wal
from service.durability.local import LocalLog
from service.durability.recovery import write_rows
from service.runtime.bundle import load_bundle
from service.runtime.onnx_runtime import Runtime
from service.settings import DEFAULT_MODEL_DIR
from service.store.memory import MemoryStore


def snapshot_cost(runtime: Runtime, directory: Path, n: int) -> dict[str, Any]:
    store = MemoryStore(runtime.new_state_memory(n), idle_timeout=0)
    log = LocalLog(directory, "sync")
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
        await log.snapshot()
        took = time.perf_counter() - t0
        await log.writer.stop()
        return took

    total = asyncio.run(run())
    log._unlock_dir()
    size = wal.numbered(directory, wal.SNAPSHOT_RE)[-1][1].stat().st_size
    return {"sessions": n, "loop_held_s": held[0], "snapshot_s": total, "snapshot_mb": size / 2**20}


def recovery_cost(runtime: Runtime, directory: Path, n: int) -> float:
    store = MemoryStore(runtime.new_state_memory(n), idle_timeout=0)
    log = LocalLog(directory, "sync")
    t0 = time.perf_counter()
    assert log.recover(store, runtime) == n
    took = time.perf_counter() - t0
    log._unlock_dir()
    return took


def replay_cost(runtime: Runtime, directory: Path, sessions: int, tokens: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    V = runtime.config.vocab_size
    recs = [wal.encode_create(time.time(), "", f"r{i}") for i in range(sessions)]
    for t in range(tokens):
        recs += [wal.encode_advance(time.time(), "", f"r{i}", int(rng.integers(V)), t + 1) for i in range(sessions)]
    directory.mkdir(parents=True)
    wal.segment_path(directory, 0).write_bytes(b"".join(recs))
    store = MemoryStore(runtime.new_state_memory(sessions), idle_timeout=0)
    log = LocalLog(directory, "sync")
    t0 = time.perf_counter()
    assert log.recover(store, runtime) == sessions
    took = time.perf_counter() - t0
    log._unlock_dir()
    n = sessions * tokens
    return {"sessions": sessions, "tokens": n, "replay_s": took, "tokens_per_s": n / took}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--sessions", type=int, default=100_000)
    p.add_argument("--replay-sessions", type=int, default=1000)
    p.add_argument("--replay-tokens", type=int, default=200)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    runtime = Runtime(load_bundle(a.model), "cpu")
    cfg = runtime.config
    out: dict[str, Any] = {"model": {"cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden}}
    with tempfile.TemporaryDirectory(prefix="seqpred-bench-durability-") as tmp:
        d = Path(tmp) / "snap"
        out["snapshot"] = snapshot_cost(runtime, d, a.sessions)
        out["snapshot"]["recovery_s"] = recovery_cost(runtime, d, a.sessions)
        out["replay"] = replay_cost(runtime, Path(tmp) / "replay", a.replay_sessions, a.replay_tokens)
    s, r = out["snapshot"], out["replay"]
    print(f"model: {out['model']}")
    print(
        f"snapshot of {s['sessions']} sessions: {s['snapshot_mb']:.1f} MiB, loop held {s['loop_held_s']:.3f} s, "
        f"total {s['snapshot_s']:.2f} s; recovery from it {s['recovery_s']:.2f} s"
    )
    print(
        f"replay of {r['tokens']} logged tokens ({r['sessions']} sessions): {r['replay_s']:.2f} s "
        f"({r['tokens_per_s']:.0f} tokens/s, record decoding included)"
    )
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
