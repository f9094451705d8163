"""Durable sessions: the hand-written session log against the same store on SQLite, measured in the same run.

    python bench/durability.py [--model DIR] [--sessions 100000] [--streams 1,64] [--duration 3] [--rounds 3]
                               [--replay-sessions 1000] [--replay-tokens 200] [--stores log,sqlite] [--json]

For each store (``log``: ``service.durability.local.LocalLog``; ``sqlite``: ``harness.durability.sqlite_log``,
one database in WAL mode with ``synchronous=FULL``, one writer thread committing each group of requests as one
transaction, snapshots in a table):

* throughput: a real server (``--durability sync``) driven closed-loop by ``--streams`` concurrent streams, one
  token per request (``bench/serve_load.py``'s client): acknowledged requests/s and p50; ``--rounds`` alternate
  the stores (each figure is the median over rounds, each ratio the median of per-round ratios); the bytes on
  disk per acknowledged request are read while the last server still runs;
* snapshot of ``--sessions`` sessions (random states): event-loop hold, total time, bytes on disk after it;
* recovery from that snapshot alone (a new server's ``recover``), and replay of ``--replay-sessions`` x
  ``--replay-tokens`` single-token records logged after no snapshot (records read, decoded, run through
  ``sequence.onnx``);
* the damage probe of issue 14: one byte flipped inside the 2nd of three synced changes, then a recovery
  (``harness.durability.probe``).

The decision this measurement made, and its figures: docs/reliability.md ("SQLite or the hand-written log").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from harness.durability import costs, probe  # noqa: E402
from harness.durability.sqlite_log import SqliteLog  # noqa: E402
from harness.serve.client import measure  # noqa: E402
from harness.serve.procs import Proc  # noqa: E402

from service.durability.local import LocalLog  # noqa: E402
from service.runtime.bundle import load_bundle  # noqa: E402
from service.runtime.onnx_runtime import Runtime  # noqa: E402
from service.settings import DEFAULT_MODEL_DIR  # noqa: E402

STORES: dict[str, type[LocalLog]] = {"log": LocalLog, "sqlite": SqliteLog}
SQLITE_SERVE = Path(__file__).resolve().parent / "harness" / "durability" / "serve.py"


def start_server(store: str, model: str, state_dir: Path) -> Proc:
    if store == "log":
        code = "import sys; from service.cli import main_serve; sys.exit(main_serve(sys.argv[1:]))"
        argv = [sys.executable, "-c", code]
    else:
        argv = [sys.executable, str(SQLITE_SERVE)]
    flags = ["--model", model, "--host", "localhost", "--port", "0", "--metrics-port", "-1", "--log-level", "WARNING"]
    return Proc([*argv, *flags, "--durability", "sync", "--state-dir", str(state_dir)])


def throughput(
    stores: list[str], model: str, levels: list[int], duration: float, rounds: int, V: int, tmp: Path
) -> dict[str, Any]:
    """Per store and level: requests/s and p50 ms (medians over rounds), bytes on disk per request; ratios to log."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {s: {n: [] for n in levels} for s in stores}
    disk: dict[str, float] = {}
    for r in range(rounds):
        for s in stores:
            d = tmp / f"tp-{s}-{r}"
            proc = start_server(s, model, d)
            try:
                done = 0
                for n in levels:
                    res = measure(proc, n, duration, V)
                    runs[s][n].append(res)
                    done += res["tokens"]
                disk[s] = costs.disk_bytes(d) / max(done, 1)  # still running: no shutdown snapshot yet
            finally:
                proc.stop()
    out: dict[str, Any] = {}
    for s in stores:
        out[s] = {
            n: {
                "requests_per_s": statistics.median(x["tokens_per_s"] for x in runs[s][n]),
                "p50_ms": statistics.median(x["p50_ms"] for x in runs[s][n]),
            }
            for n in levels
        }
        out[s]["disk_bytes_per_request"] = disk[s]
    if "log" in stores:
        for s in stores:
            for n in levels:
                ratios = [
                    a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs[s][n], runs["log"][n], strict=True)
                ]
                out[s][n]["ratio_to_log"] = statistics.median(ratios)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--sessions", type=int, default=100_000, help="sessions in the snapshot and recovery measure")
    p.add_argument("--streams", default="1,64", help="concurrency levels of the throughput measure (default 1,64)")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per level and round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of the throughput measure (default 3)")
    p.add_argument("--replay-sessions", type=int, default=1000)
    p.add_argument("--replay-tokens", type=int, default=200)
    p.add_argument("--stores", default="log,sqlite", help="which stores (default log,sqlite)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    a = p.parse_args()
    stores = a.stores.split(",")
    runtime = Runtime(load_bundle(a.model), "cpu")
    cfg = runtime.config
    levels = [int(x) for x in a.streams.split(",")]
    out: dict[str, Any] = {"model": {"cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden}}
    with tempfile.TemporaryDirectory(prefix="seqpred-bench-durability-") as name:
        tmp = Path(name)
        out["throughput"] = throughput(stores, a.model, levels, a.duration, a.rounds, cfg.vocab_size, tmp)
        for s in stores:
            cls = STORES[s]
            snap = costs.snapshot_cost(cls, runtime, tmp / f"snap-{s}", a.sessions)
            snap["recovery_s"] = costs.recovery_cost(cls, runtime, tmp / f"snap-{s}", a.sessions)
            out[s] = {
                "snapshot": snap,
                "replay": costs.replay_cost(cls, runtime, tmp / f"replay-{s}", a.replay_sessions, a.replay_tokens),
                "damage": (probe.probe_log if s == "log" else probe.probe_sqlite)(tmp / f"probe-{s}"),
            }
    print_table(out, stores, levels, a.sessions)
    if a.json:
        print(json.dumps(out))
    return 0


def print_table(out: dict[str, Any], stores: list[str], levels: list[int], sessions: int) -> None:
    print(f"model: {out['model']}")
    tp = out["throughput"]
    head = ["store"] + [f"{n} stream{'s' * (n > 1)}: req/s (p50 ms)" for n in levels] + ["x log"] * len(levels)
    print(" | ".join(head))
    for s in stores:
        cells = [f"{tp[s][n]['requests_per_s']:.0f} ({tp[s][n]['p50_ms']:.2f})" for n in levels]
        cells += [f"{tp[s][n].get('ratio_to_log', float('nan')):.2f}" for n in levels]
        print(" | ".join([s, *cells]))
    print(
        "store | bytes/request | snapshot of "
        f"{sessions}: MiB on disk, loop held s, total s | recovery s | replay tokens/s, bytes/record | damage probe"
    )
    for s in stores:
        sn, rp, dm = out[s]["snapshot"], out[s]["replay"], out[s]["damage"]
        probe_txt = "refuses to start" if not dm["starts"] else f"starts, {dm['kept']} of 3 changes kept ({dm['said']})"
        print(
            f"{s} | {tp[s]['disk_bytes_per_request']:.0f} | {sn['disk_mb']:.1f}, {sn['loop_held_s']:.3f}, "
            f"{sn['snapshot_s']:.2f} | {sn['recovery_s']:.2f} | {rp['tokens_per_s']:.0f}, "
            f"{rp['bytes_per_record']:.0f} | {probe_txt}"
        )


if __name__ == "__main__":
    sys.exit(main())
