"""Serving load benchmark: the seqpred service against a bare grpc.aio echo server, same client, same run.

    python bench/serve_load.py [--model DIR] [--duration 3] [--streams 1,16,64,256] [--json]

Closed loop: each of N concurrent streams sends one token (top_k=5) and waits for its prediction before sending the
next. The echo server answers every request with a fixed response of the same shape (session id, position, five
predictions), so the ratio isolates what the service adds to the Python gRPC stack on this machine. Reported per
level: aggregate tokens/s, p50/p99 per-token round trip, and server CPU per token (from /proc).

Also measured:
* ``prompt_ratio``: tokens/s ingesting 256-token prompts through the service (``--prompt-streams`` concurrent
  streams, one reset + prompt + top-5 per request) / offline ``sequence.onnx`` scoring of the same tokens (batches
  of the same size, same thread settings) in this process.
* ``bytes_per_idle_session``: RSS growth of a fresh server after creating ``--idle-sessions`` sessions (each fed
  one token) divided by their number, against the raw state bytes per session.

Both servers run as subprocesses; the client runs in this process. Without ``--model`` the default model is used
when installed, else a 1-layer H=256 LSTM is trained for 2 steps and exported to a temporary directory (the
timings depend on the graph's shape, not on its weights).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from service._proto.seqpred.v1 import seqpred_pb2 as pb  # noqa: E402
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------------------
# the echo server (runs as `serve_load.py --role echo`)


def echo_response() -> pb.StreamResponse:
    r = pb.StreamResponse(session_id="e" * 22, position=1234, final=True)
    for i, ch in enumerate("etaoi"):
        r.predictions.add(id=i + 40, text=ch, logprob=-1.5 - i, prob=0.2 - 0.01 * i)
    return r


class EchoServicer(pb_grpc.SeqPredServicer):
    def __init__(self) -> None:
        self.resp = echo_response()

    async def Stream(self, request_iterator: Any, context: Any) -> None:
        # the same read/write style as the service's handler (the faster of the two grpc.aio styles here)
        resp, read, write, EOF = self.resp, context.read, context.write, grpc.aio.EOF
        while (await read()) is not EOF:
            await write(resp)


async def run_echo() -> None:
    server = grpc.aio.server()
    pb_grpc.add_SeqPredServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("localhost:0")
    await server.start()
    print(f"seqpred: serving echo on port {port}", file=sys.stderr, flush=True)
    await server.wait_for_termination()


# ---------------------------------------------------------------------------------------------------------------
# subprocess servers


class Proc:
    """A server subprocess; its port is read from the 'seqpred: serving ... on port N' line on stderr."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.p = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        assert self.p.stderr is not None
        self.tail: list[str] = []
        port = None
        t0 = time.monotonic()
        while port is None:
            line = self.p.stderr.readline()
            if not line:
                raise RuntimeError(f"server exited: {' '.join(argv)}\n{''.join(self.tail)}")
            self.tail.append(line)
            if line.startswith("seqpred: serving"):
                port = int(line.rsplit(" ", 1)[1])
            if time.monotonic() - t0 > 120:
                raise RuntimeError("server did not start")
        self.port = port
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.tail = ([*self.tail, line])[-50:]

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def start_service(model: Path, *extra: str) -> Proc:
    code = "import sys; from service.cli import main_serve; sys.exit(main_serve(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "--model", str(model), "--host", "localhost", "--port", "0"]
    return Proc([*argv, "--metrics-port", "-1", "--log-level", "WARNING", *extra])


def start_echo() -> Proc:
    return Proc([sys.executable, str(Path(__file__).resolve()), "--role", "echo"])


# ---------------------------------------------------------------------------------------------------------------
# the client


async def closed_loop(target: str, streams: int, duration: float, warmup: float, vocab: int) -> dict[str, Any]:
    """N streams, each: send one token with top_k=5, wait for the answer, repeat. Latencies in seconds."""
    lat: list[list[float]] = [[] for _ in range(streams)]
    state = {"measure": False, "stop": False}
    perf = time.perf_counter

    async def worker(i: int, stub: pb_grpc.SeqPredStub) -> None:
        call = stub.Stream()
        sid = ""
        tok = 1 + i % (vocab - 1)
        mine = lat[i]
        while not state["stop"]:
            req = pb.StreamRequest(session_id=sid, tokens=[tok], top_k=5)
            t0 = perf()
            await call.write(req)
            resp = await call.read()
            dt = perf() - t0
            if resp.HasField("error"):
                raise RuntimeError(resp.error.message)
            sid = resp.session_id
            if state["measure"]:
                mine.append(dt)
            tok = 1 + (tok * 7 + 3) % (vocab - 1)
        if sid and not sid.startswith("e"):
            await call.write(pb.StreamRequest(session_id=sid, end=True))
            await call.read()
        await call.done_writing()

    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.SeqPredStub(ch)
        tasks = [asyncio.create_task(worker(i, stub)) for i in range(streams)]
        await asyncio.sleep(warmup)
        state["measure"] = True
        t0 = time.perf_counter()
        await asyncio.sleep(duration)
        state["measure"] = False
        elapsed = time.perf_counter() - t0
        state["stop"] = True
        await asyncio.gather(*tasks)
    all_lat = np.concatenate([np.array(x) for x in lat]) if any(lat) else np.zeros(1)
    return {
        "tokens": int(all_lat.size),
        "tokens_per_s": all_lat.size / elapsed,
        "p50_ms": float(np.percentile(all_lat, 50) * 1e3),
        "p99_ms": float(np.percentile(all_lat, 99) * 1e3),
    }


def measure(proc: Proc, streams: int, duration: float, vocab: int) -> dict[str, Any]:
    c0 = proc.cpu_seconds()
    res = asyncio.run(closed_loop(f"localhost:{proc.port}", streams, duration, min(1.0, duration / 3), vocab))
    res["server_cpu_us_per_token"] = (proc.cpu_seconds() - c0) / max(res["tokens"], 1) * 1e6  # includes warm-up
    return res


async def prompt_load(target: str, streams: int, prompts: np.ndarray, duration: float) -> float:
    """Tokens/s of ``streams`` concurrent streams each resetting its session and feeding one prompt per request."""
    count = [0]
    state = {"measure": False, "stop": False}

    async def worker(i: int, stub: pb_grpc.SeqPredStub) -> None:
        call = stub.Stream()
        sid = f"prompt-{i}"
        k = i
        while not state["stop"]:
            req = pb.StreamRequest(session_id=sid, start=True, tokens=prompts[k % len(prompts)].tolist(), top_k=5)
            await call.write(req)
            resp = await call.read()
            if resp.HasField("error"):
                raise RuntimeError(resp.error.message)
            if state["measure"]:
                count[0] += prompts.shape[1]
            k += streams
        await call.write(pb.StreamRequest(session_id=sid, end=True))
        await call.read()
        await call.done_writing()

    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.SeqPredStub(ch)
        tasks = [asyncio.create_task(worker(i, stub)) for i in range(streams)]
        await asyncio.sleep(0.5)
        state["measure"] = True
        t0 = time.perf_counter()
        await asyncio.sleep(duration)
        state["measure"] = False
        elapsed = time.perf_counter() - t0
        state["stop"] = True
        await asyncio.gather(*tasks)
    return count[0] / elapsed


def offline_prompt_rate(model: Path, prompts: np.ndarray, batch: int, duration: float) -> float:
    """Tokens/s of onnxruntime scoring ``batch`` prompts per ``sequence.onnx`` call from the zero state."""
    import onnxruntime as ort

    from service.bundle import load_bundle

    bundle = load_bundle(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(bundle.sequence_path), opts, providers=["CPUExecutionProvider"])
    widths = {i.name: int(i.shape[1]) for i in sess.get_inputs() if i.name not in ("tokens", "lengths")}
    n = done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration or n == 0:
        x = np.stack([prompts[(n * batch + b) % len(prompts)] for b in range(batch)])
        feeds: dict[str, Any] = {k: np.zeros((batch, w), np.float32) for k, w in widths.items()}  # c: c_width
        feeds["tokens"], feeds["lengths"] = x, np.full(batch, x.shape[1], np.int64)
        sess.run(["token_logprobs", "next_logprobs"], feeds)
        done += x.size
        n += 1
    return done / (time.perf_counter() - t0)


async def fill_sessions(target: str, total: int, streams: int, vocab: int) -> None:
    """Create ``total`` sessions, each fed one token, over ``streams`` concurrent streams."""
    per = [total // streams + (1 if i < total % streams else 0) for i in range(streams)]

    async def worker(i: int, stub: pb_grpc.SeqPredStub) -> None:
        call = stub.Stream()
        for k in range(per[i]):
            await call.write(pb.StreamRequest(tokens=[1 + (i + k) % (vocab - 1)]))
            resp = await call.read()
            if resp.HasField("error"):
                raise RuntimeError(resp.error.message)
        await call.done_writing()

    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.SeqPredStub(ch)
        await asyncio.gather(*(worker(i, stub) for i in range(streams)))


def idle_memory(model: Path, sessions: int, vocab: int) -> dict[str, Any]:
    proc = start_service(model, "--max-sessions", str(max(sessions, 1)))
    try:
        asyncio.run(fill_sessions(f"localhost:{proc.port}", 2000, 16, vocab))  # warm the process up
        time.sleep(0.5)
        before = proc.rss_bytes()
        t0 = time.perf_counter()
        asyncio.run(fill_sessions(f"localhost:{proc.port}", sessions - 2000, 64, vocab))
        took = time.perf_counter() - t0
        time.sleep(0.5)
        after = proc.rss_bytes()
        with grpc.insecure_channel(f"localhost:{proc.port}") as ch:
            info = pb_grpc.SeqPredStub(ch).GetModelInfo(pb.GetModelInfoRequest())
    finally:
        proc.stop()
    per = (after - before) / (sessions - 2000)
    return {
        "sessions": sessions,
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "bytes_per_idle_session": per,
        "state_bytes": int(info.state_bytes),
        "target_bytes": 1.3 * int(info.state_bytes) + 300,
        "fill_seconds": took,
    }


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
    p.add_argument("--role", default="bench", choices=("bench", "echo"), help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="model directory (default: the shipped model, else a temporary one)")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per level (default 3)")
    p.add_argument("--streams", default="1,16,64,256", help="concurrency levels (default 1,16,64,256)")
    p.add_argument("--prompt-streams", type=int, default=16, help="concurrent prompt streams (default 16)")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--idle-sessions", type=int, default=100_000, help="sessions for the memory check (0 = skip)")
    p.add_argument("--server-args", default="", help="extra flags for the service, e.g. '--batch-wait-us 200'")
    p.add_argument(
        "--durability", default="none", choices=("none", "periodic", "sync"), help="the service's --durability"
    )
    p.add_argument("--state-dir", default=None, help="its --state-dir (default: a fresh temporary directory)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    a = p.parse_args()
    if a.role == "echo":
        asyncio.run(run_echo())
        return 0
    levels = [int(x) for x in a.streams.split(",")]
    out: dict[str, Any] = {"levels": {}}
    with bench_model(a.model) as model:
        from service.bundle import load_bundle

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
        try:
            for n in levels:
                e = measure(echo, n, a.duration, V)
                s = measure(svc, n, a.duration, V)
                out["levels"][n] = {"echo": e, "service": s, "ratio": s["tokens_per_s"] / e["tokens_per_s"]}
            rng = np.random.default_rng(0)
            prompts = rng.integers(1, V, (64, a.prompt_len))
            svc_rate = asyncio.run(prompt_load(f"localhost:{svc.port}", a.prompt_streams, prompts, a.duration))
        finally:
            echo.stop()
            svc.stop()
        off_rate = offline_prompt_rate(model, prompts, a.prompt_streams, a.duration)
        out["prompt"] = {"service_tokens_per_s": svc_rate, "offline_tokens_per_s": off_rate}
        if a.idle_sessions:
            out["memory"] = idle_memory(model, a.idle_sessions, V)

    print(f"model: {out['model']}" + (f", durability: {out['durability']}" if "durability" in out else ""))
    print(
        f"{'streams':>7} | {'echo tok/s':>10} | {'svc tok/s':>10} | {'ratio':>5} | {'echo p50/p99 ms':>15} | "
        f"{'svc p50/p99 ms':>15} | {'server CPU us/tok echo/svc':>26}"
    )
    for n, lv in out["levels"].items():
        e, s = lv["echo"], lv["service"]
        print(
            f"{n:>7} | {e['tokens_per_s']:>10.0f} | {s['tokens_per_s']:>10.0f} | {lv['ratio']:>5.2f} | "
            f"{e['p50_ms']:>6.3f}/{e['p99_ms']:<8.3f} | {s['p50_ms']:>6.3f}/{s['p99_ms']:<8.3f} | "
            f"{e['server_cpu_us_per_token']:>12.0f}/{s['server_cpu_us_per_token']:<13.0f}"
        )
    pr = out["prompt"]
    print(
        f"prompts ({a.prompt_streams} streams x {a.prompt_len} tokens): service {pr['service_tokens_per_s']:.0f} "
        f"tok/s, offline sequence.onnx {pr['offline_tokens_per_s']:.0f} tok/s"
    )
    if "memory" in out:
        m = out["memory"]
        print(
            f"idle sessions: {m['sessions']}: RSS {m['rss_before_mb']:.0f} -> {m['rss_after_mb']:.0f} MiB, "
            f"{m['bytes_per_idle_session']:.0f} bytes/session (state {m['state_bytes']} bytes; target "
            f"<= {m['target_bytes']:.0f})"
        )
    summary: dict[str, Any] = {}
    if 64 in out["levels"]:
        summary["throughput_ratio_64"] = round(out["levels"][64]["ratio"], 3)
    if 1 in out["levels"]:
        lv = out["levels"][1]
        summary["p50_ratio_1"] = round(lv["service"]["p50_ms"] / lv["echo"]["p50_ms"], 3)
    summary["prompt_ratio"] = round(pr["service_tokens_per_s"] / pr["offline_tokens_per_s"], 3)
    if "memory" in out:
        summary["bytes_per_idle_session"] = round(out["memory"]["bytes_per_idle_session"], 1)
        summary["state_bytes"] = out["memory"]["state_bytes"]
    for n, lv in out["levels"].items():
        summary[f"tokens_per_s_{n}"] = round(lv["service"]["tokens_per_s"])
        summary[f"echo_tokens_per_s_{n}"] = round(lv["echo"]["tokens_per_s"])
        summary[f"p99_ms_{n}"] = round(lv["service"]["p99_ms"], 3)
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
