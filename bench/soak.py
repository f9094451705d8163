"""Soak benchmark: many streams for minutes, random disconnects, every response checked offline.

    python bench/soak.py [--model DIR] [--streams 32] [--minutes 5] [--json]
    python bench/soak.py --address HOST:PORT [--server-pid PID] --model DIR   # a server started elsewhere

Starts a real server process on a free port (the shipped default model unless ``--model``), then runs ``--streams``
concurrent client streams for ``--minutes``, each keeping ``--sessions-per-stream`` sessions that end and are
replaced at random lengths (a steady number of live sessions), with random disconnects and reconnects that carry
on with the same session ids (``bench/harness/soak/client.py``). Every finished session segment goes to a checker in a
worker process, which recomputes its whole acknowledged history offline and checks every response: top-k ids and
log-probabilities, scores, generated tokens, positions (``bench/harness/soak/check.py``; ``sequence.onnx`` on
onnxruntime, or with ``--run`` the NumPy network of the training run). Segments are checked in batches while the
soak runs, so the checker is not what limits the load; its CPU time is reported.

The server's RSS (``/proc/PID/status`` VmRSS) is sampled every second; ``rss_growth_mb`` is the final sample minus
the one at the end of the warm-up (``--warmup`` seconds, default a fifth of the run, at most 30).

Output: a table, and with ``--json`` one JSON object on the last line: ``errors`` (target 0), ``mismatches``
(target 0), ``rss_growth_mb`` (target < 50), ``tokens`` (tokens checked), and ``sessions``, ``reconnects``,
``duration_s``, ``tokens_per_s`` and more. Exit status 1 when there were errors or mismatches.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

import grpc  # noqa: E402
from harness.soak.check import Verdict  # noqa: E402
from harness.soak.client import DISCONNECTS, Driver  # noqa: E402
from harness.soak.procs import Checker, Server, cpu_seconds, rss_mb  # noqa: E402
from harness.soak.types import Outage, Plan, Stats  # noqa: E402

from service._proto.seqpred.v1 import seqpred_pb2 as pb  # noqa: E402
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc  # noqa: E402

RSS_TARGET_MB = 50.0


async def run_soak(
    target: str, a: argparse.Namespace, plan: Plan, checker: Checker, server: Server | None, pid: int | None
) -> dict[str, Any]:
    """Run the drivers for ``--minutes``; meanwhile sample the server, feed the checker, and (``--kill-every``)
    SIGKILL and restart the server. RSS figures are of the last server process, from its own warm-up."""
    stats = Stats()
    stop = asyncio.Event()
    outage = Outage(lossy=a.durability == "periodic")
    drivers = [
        Driver(i, target, plan, np.random.default_rng([a.seed, i]), stats, checker.add, outage)
        for i in range(a.streams)
    ]
    duration = a.minutes * 60
    warmup = a.warmup if a.warmup is not None else min(30.0, duration / 5)
    rng = np.random.default_rng(a.seed)
    rss: list[tuple[float, float]] = []
    born, cpu, restarts = 0.0, 0.0, []
    cpu0 = cpu_seconds(pid) if pid else None
    t0 = time.monotonic()
    end = t0 + duration
    next_kill = t0 + a.kill_every * rng.uniform(0.5, 1.5) if a.kill_every and server else math.inf
    tasks = [asyncio.create_task(d.run(stop)) for d in drivers]
    next_flush = t0 + 1.0
    while (now := time.monotonic()) < end:
        if now >= next_kill and server is not None:
            if pid and cpu0 is not None:
                cpu += (cpu_seconds(pid) or cpu0) - cpu0
            outage.down, outage.gen = True, outage.gen + 1
            server.kill()
            t1 = time.monotonic()
            await asyncio.to_thread(server.start)
            restarts.append(time.monotonic() - t1)
            outage.down = False
            pid, rss, born = server.pid, [], time.monotonic() - t0
            cpu0 = cpu_seconds(pid)
            next_kill = time.monotonic() + a.kill_every * rng.uniform(0.5, 1.5)
        if pid and (m := rss_mb(pid)) is not None:
            rss.append((now - t0, m))
        if now >= next_flush:
            checker.flush()
            next_flush = now + 1.0
        checker.collect()
        await asyncio.sleep(max(min(1.0, next_kill - now, end - now), 0.01))
    if pid and (m := rss_mb(pid)) is not None:
        rss.append((time.monotonic() - t0, m))
    stop.set()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    if pid and cpu0 is not None:
        cpu += (cpu_seconds(pid) or cpu0) - cpu0
    out: dict[str, Any] = {"stats": stats, "elapsed": elapsed, "warmup": warmup, "restarts": restarts}
    if rss:
        after = [m for t, m in rss if t >= born + warmup] or [m for _, m in rss]
        out.update(rss_warm_mb=after[0], rss_final_mb=rss[-1][1], rss_max_mb=max(after), rss_start_mb=rss[0][1])
    if cpu0 is not None:
        out["server_cpu_s"] = cpu
    return out


def model_info(target: str) -> pb.ModelInfo:
    with grpc.insecure_channel(target) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        return pb_grpc.SeqPredStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)


def report(res: dict[str, Any], verdict: Verdict, checker: Checker, a: argparse.Namespace, info: Any) -> dict[str, Any]:
    st: Stats = res["stats"]
    errors = st.errors
    samples = list(st.error_samples)
    if verdict.tokens != st.tokens:  # every acknowledged token must have been in a checked segment
        errors += 1
        samples.append(f"checked {verdict.tokens} tokens, but {st.tokens} were acknowledged")
    el = res["elapsed"]
    summary: dict[str, Any] = {
        "errors": errors,
        "mismatches": verdict.mismatches,
        "rss_growth_mb": round(res["rss_final_mb"] - res["rss_warm_mb"], 1) if "rss_final_mb" in res else None,
        "tokens": verdict.tokens,
        "checks": verdict.checks,
        "sessions": st.sessions,
        "segments": verdict.segments,
        "reconnects": sum(st.reconnects.values()),
        "duration_s": round(el, 1),
        "tokens_per_s": round(st.tokens / el, 1),
        "requests": st.requests,
        "max_logprob_err": float(f"{verdict.max_err:.3g}"),
        "streams": a.streams,
        "live_sessions": a.streams * a.sessions_per_stream,
        "checker_cpu_s": round(checker.cpu, 1),
    }
    if a.durability:
        summary.update(durability=a.durability, kills=len(res["restarts"]), interrupted=st.interrupted)
        summary.update(lost_tokens=st.lost_tokens, lost_sessions=st.lost_sessions, ambiguous=st.ambiguous)
        if res["restarts"]:
            summary["restart_s_max"] = round(max(res["restarts"]), 2)
    for k in ("rss_warm_mb", "rss_final_mb", "rss_max_mb", "server_cpu_s"):
        if k in res:
            summary[k] = round(res[k], 1)
    print(
        f"soak: {a.streams} streams x {a.sessions_per_stream} sessions for {el:.0f} s against {a.target} "
        f"({info.cell} {info.layers}x{info.hidden}, V={info.vocab_size}); load average {os.getloadavg()[0]:.1f}"
    )
    rc = st.reconnects
    rows = [
        ("requests / responses", f"{st.requests} / {st.responses}"),
        ("tokens acknowledged", f"{st.tokens} ({summary['tokens_per_s']:.0f}/s)"),
        ("sessions started / ended / resets", f"{st.sessions} / {st.ended} / {st.resets}"),
        ("reconnects " + "/".join(DISCONNECTS), "/".join(str(rc[k]) for k in DISCONNECTS)),
        ("reconnects after a server restart", str(rc["restart"])),
        ("in-flight requests found applied", str(st.inflight_applied)),
        ("checked segments / checks / tokens", f"{verdict.segments} / {verdict.checks} / {verdict.tokens}"),
        ("max |logprob - offline|", f"{verdict.max_err:.2e} (tolerance {a.tol:g})"),
        (
            "checker CPU",
            f"{checker.cpu:.1f} s ({100 * checker.cpu / el:.0f}% of a core), backlog <= {checker.backlog_max}",
        ),
        ("errors", str(errors)),
        ("mismatches", str(verdict.mismatches)),
    ]
    if a.durability:
        r = res["restarts"]
        rows.append(
            (
                f"kills (--durability {a.durability})",
                f"{len(r)}, restart {np.mean(r) if r else 0:.1f} s mean / {max(r, default=0):.1f} s max; "
                f"{st.interrupted} requests cut; lost {st.lost_tokens} tokens, {st.lost_sessions} sessions; "
                f"{st.ambiguous} states ambiguous",
            )
        )
    if "rss_final_mb" in res:
        growth = summary["rss_growth_mb"]
        ok = "ok" if growth < RSS_TARGET_MB else "OVER"
        rows.append(
            (
                "server RSS MB start/warm/final/max",
                f"{res['rss_start_mb']:.0f} / {res['rss_warm_mb']:.0f} / {res['rss_final_mb']:.0f} / "
                f"{res['rss_max_mb']:.0f}; growth after {res['warmup']:.0f} s warm-up {growth:+.1f} "
                f"(target < {RSS_TARGET_MB:.0f}: {ok})",
            )
        )
    if "server_cpu_s" in res:
        rows.append(("server CPU per token", f"{1e6 * res['server_cpu_s'] / max(st.tokens, 1):.0f} us"))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}} | {v}")
    for s in samples[:10]:
        print(f"  error: {s}")
    for s in verdict.samples[:10]:
        print(f"  mismatch: {s}")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", default=None, help="model directory (default: the shipped default model)")
    p.add_argument("--run", default=None, help="check with the NumPy network of this training run instead")
    p.add_argument("--address", default=None, help="soak a running server at HOST:PORT instead of starting one")
    p.add_argument("--server-pid", type=int, default=None, help="with --address: the server's pid, for its RSS")
    p.add_argument("--streams", type=int, default=32, help="concurrent streams (default 32)")
    p.add_argument("--sessions-per-stream", type=int, default=2, help="live sessions per stream (default 2)")
    p.add_argument("--minutes", type=float, default=5.0, help="duration (default 5; 0.2 for a quick run)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the RSS baseline (default: 1/5, <= 30)")
    p.add_argument("--disconnect-every", type=float, default=40.0, help="mean requests between disconnects")
    p.add_argument("--min-len", type=int, default=20, help="shortest session target length (tokens)")
    p.add_argument("--max-len", type=int, default=400, help="longest session target length (tokens)")
    p.add_argument("--tol", type=float, default=1e-4, help="log-probability tolerance (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--durability",
        default=None,
        choices=("none", "periodic", "sync"),
        help="start the server with this --durability (and a temporary --state-dir)",
    )
    p.add_argument(
        "--kill-every",
        type=float,
        default=0.0,
        help="SIGKILL and restart the server every ~S seconds (0.5-1.5 x S; needs --durability periodic or sync)",
    )
    p.add_argument("--server-args", default="", help="extra flags for the server, e.g. '--batch-threads 1'")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    a = p.parse_args(argv)
    from service.settings import DEFAULT_MODEL_DIR

    model = Path(a.model) if a.model else DEFAULT_MODEL_DIR
    if not (model / "model.json").is_file():
        p.error(f"--model: {str(model)!r} is not a model directory (no model.json)")
    if a.kill_every and (a.address or a.durability not in ("periodic", "sync")):
        p.error("--kill-every: needs a server started here with --durability periodic or sync")
    server = None
    pid = a.server_pid
    state_dir = tempfile.mkdtemp(prefix="seqpred-soak-state-") if a.durability else None
    checker = Checker(model, a.run, a.tol)
    try:
        if a.address:
            a.target = a.address
        else:
            extra = a.server_args.split()
            if a.durability:
                extra += ["--durability", a.durability, "--state-dir", str(state_dir)]
            server = Server(model, extra)
            server.start()
            a.target, pid = f"localhost:{server.port}", server.pid
        info = model_info(a.target)
        digest = hashlib.sha256((model / "model.json").read_bytes()).hexdigest()
        if info.model_sha256 != digest:
            p.error(f"--model: the server at {a.target} serves another model (sha256 {info.model_sha256[:12]}...)")
        plan = Plan(
            vocab=int(info.vocab_size),
            sessions_per_stream=a.sessions_per_stream,
            min_len=a.min_len,
            max_len=a.max_len,
            max_top_k=min(8, int(info.max_top_k)),
            disconnect_every=a.disconnect_every,
        )
        res = asyncio.run(run_soak(a.target, a, plan, checker, server, pid))
        verdict = checker.finish()
    finally:
        if server is not None:
            server.stop()
        checker.pool.shutdown(cancel_futures=True)
        if state_dir:
            shutil.rmtree(state_dir, ignore_errors=True)
    summary = report(res, verdict, checker, a, info)
    if a.json:
        print(json.dumps(summary))
    return 1 if summary["errors"] or summary["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
