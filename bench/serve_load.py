"""Serving load benchmark: the seqpred service against a bare grpc.aio echo server, same client, same run.

    python bench/serve_load.py [--model DIR] [--duration 3] [--streams 1,16,64,256] [--json]

Closed loop: each of N concurrent streams sends one token (top_k=5) and waits for its prediction before sending the
next. The echo server answers every request with a fixed response of the same shape (session id, position, five
predictions), so the ratio isolates what the service adds to the Python gRPC stack on this machine. Reported per
level: aggregate tokens/s, p50/p99 per-token round trip, and server CPU per token (from /proc). With
``--rounds R`` every level runs R alternating rounds over all servers; each figure is the median over rounds and
each ratio the median of the per-round ratios (the machine drifts; ``--rounds 3`` gives steadier ratios).

Also measured:
* ``prompt_ratio``: tokens/s ingesting 256-token prompts through the service (``--prompt-streams`` concurrent
  streams, one reset + prompt + top-5 per request) / offline ``sequence.onnx`` scoring of the same tokens (batches
  of the same size, same thread settings) in this process.
* two reference servers (skip both with ``--no-stub``), measured like the others at every level:
  - stub: the service's own gRPC layer (servicer, handler wiring, request and reply conversion) over an engine
    that answers at once. Against the echo it prices the gRPC layer.
  - floor (one stream only): the same over an engine whose only work per request is one ``step.onnx`` call of
    the model and its top-k (``harness.serve.echo.FloorEngine``). With one stream nothing can be batched, so this is the
    fastest any engine over this model can answer here: ``floor_p50_ratio_1`` bounds ``p50_ratio_1`` from below,
    and the service against the floor prices sessions, validation and batching.
  JSON keys ``stub_throughput_ratio_64``, ``stub_p50_ratio_1`` and ``floor_p50_ratio_1``, defined like the
  headline ratios.
* ``bytes_per_idle_session``: RSS growth of a fresh server after creating ``--idle-sessions`` sessions (each fed
  one token) divided by their number, against the raw state bytes per session.

All servers run as subprocesses; the client runs in this process. Without ``--model`` the default model is used
when installed, else a 1-layer H=256 LSTM is trained for 2 steps and exported to a temporary directory (the
timings depend on the graph's shape, not on its weights).

The parts, one module each: the echo server (``bench/harness/serve/echo.py``), the server subprocesses
(``bench/harness/serve/procs.py``), the load-generating client and the offline baseline
(``bench/harness/serve/client.py``), the idle-session memory check (``bench/harness/serve/memory.py``), and the table
and JSON line (``bench/harness/serve/report.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from harness.serve.client import measure, offline_prompt_rate, prompt_load  # noqa: E402
from harness.serve.echo import run_echo, run_stub  # noqa: E402
from harness.serve.memory import idle_memory  # noqa: E402
from harness.serve.procs import start_echo, start_service, start_stub  # noqa: E402
from harness.serve.report import level_summary, print_table, summarize  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# model


@contextlib.contextmanager
def bench_model(arg: str | None) -> Iterator[Path]:
    from service.settings import DEFAULT_MODEL_DIR

    if arg:
        yield Path(arg)
        return
    if (DEFAULT_MODEL_DIR / "model.json").is_file():
        yield DEFAULT_MODEL_DIR
        return
    with tempfile.TemporaryDirectory(prefix="seqpred-bench-") as tmp:
        import inspect
        import io
        import typing

        from model.cli import main as cli_main
        from model.export import export_run

        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(inspect.getsource(inspect) + inspect.getsource(typing))
        argv = ["train", "--corpus", str(corpus), "--steps", "2", "--hidden", "256", "--embed", "64", "--batch", "4",
                "--seq-len", "32", "--out", f"{tmp}/run", "--no-progress", "--eval-tokens", "1000"]  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert cli_main(argv) == 0
        yield export_run(f"{tmp}/run", f"{tmp}/model")


# ---------------------------------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--role", default="bench", choices=("bench", "echo", "stub", "floor"), help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="model directory (default: the shipped model, else a temporary one)")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per level and round (default 3)")
    p.add_argument(
        "--rounds", type=int, default=1, help="alternating rounds per level; figures are medians (default 1)"
    )
    p.add_argument("--streams", default="1,16,64,256", help="concurrency levels (default 1,16,64,256)")
    p.add_argument("--prompt-streams", type=int, default=16, help="concurrent prompt streams (default 16)")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--idle-sessions", type=int, default=100_000, help="sessions for the memory check (0 = skip)")
    p.add_argument("--server-args", default="", help="extra flags for the service, e.g. '--batch-wait-us 200'")
    p.add_argument(
        "--durability", default="none", choices=("none", "periodic", "sync"), help="the service's --durability"
    )
    p.add_argument("--state-dir", default=None, help="its --state-dir (default: a fresh temporary directory)")
    p.add_argument("--no-stub", action="store_true", help="skip the stub and floor servers (see above)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    a = p.parse_args()
    if a.role != "bench":
        asyncio.run(run_echo() if a.role == "echo" else run_stub(a.model if a.role == "floor" else None))
        return 0
    levels = [int(x) for x in a.streams.split(",")]
    out: dict[str, Any] = {"levels": {}}
    with bench_model(a.model) as model:
        from service.runtime.bundle import load_bundle

        bundle = load_bundle(model)
        cfg = bundle.config
        V = cfg.vocab_size
        out["model"] = {"path": str(model), "cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden, "vocab": V}
        echo = start_echo()
        server_args = a.server_args.split()
        if a.durability != "none":
            state_dir = a.state_dir or tempfile.mkdtemp(prefix="seqpred-bench-state-")
            server_args += ["--durability", a.durability, "--state-dir", state_dir]
            out["durability"] = {"mode": a.durability, "state_dir": state_dir}
        svc = start_service(model, *server_args)
        refs = {} if a.no_stub else {"stub": start_stub(), "floor": start_stub(model)}
        try:
            for n in levels:
                # the floor engine does not batch: it bounds the service only at one stream
                procs = {"echo": echo, "service": svc, **{k: r for k, r in refs.items() if k == "stub" or n == 1}}
                runs: dict[str, list[dict[str, Any]]] = {k: [] for k in procs}
                for _ in range(a.rounds):  # alternating rounds: drift hits every server alike
                    for name, proc in procs.items():
                        runs[name].append(measure(proc, n, a.duration, V))
                out["levels"][n] = level_summary(runs)
            rng = np.random.default_rng(0)
            prompts = rng.integers(1, V, (64, a.prompt_len))
            svc_rate = asyncio.run(prompt_load(f"localhost:{svc.port}", a.prompt_streams, prompts, a.duration))
        finally:
            echo.stop()
            svc.stop()
            for proc in refs.values():
                proc.stop()
        off_rate = offline_prompt_rate(model, prompts, a.prompt_streams, a.duration)
        out["prompt"] = {"service_tokens_per_s": svc_rate, "offline_tokens_per_s": off_rate}
        if a.idle_sessions:
            out["memory"] = idle_memory(model, a.idle_sessions, V)

    print_table(out, a.prompt_streams, a.prompt_len)
    summary = summarize(out)
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
