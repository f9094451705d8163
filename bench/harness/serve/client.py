"""The serving benchmark's load: closed-loop token streams, prompt streams, and the offline prompt baseline.

Closed loop: each of N concurrent streams sends one token (``top_k=5``) and waits for its prediction before
sending the next; per level, aggregate tokens/s, p50/p99 per-token round trip, and server CPU per token. Prompt
load: streams each resetting a session and feeding a whole prompt per request, against onnxruntime scoring the same
prompts offline. The client runs in the benchmark's process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from harness.serve.procs import Proc
from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc

Worker = Callable[[int, pb_grpc.SeqPredStub], Coroutine[Any, Any, None]]


async def _drive(
    target: str, streams: int, worker: Worker, state: dict[str, bool], warmup: float, duration: float
) -> float:
    """Run ``worker(i, stub)`` for i < ``streams`` on one channel: ``state["measure"]`` is set for ``duration``
    seconds after ``warmup``, then ``state["stop"]``; returns the measured seconds once every worker is done."""
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
    return elapsed


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

    elapsed = await _drive(target, streams, worker, state, warmup, duration)
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

    elapsed = await _drive(target, streams, worker, state, 0.5, duration)
    return count[0] / elapsed  # read after the run: the workers count while it lasts


def offline_prompt_rate(model: Path, prompts: np.ndarray, batch: int, duration: float) -> float:
    """Tokens/s of onnxruntime scoring ``batch`` prompts per ``sequence.onnx`` call from the zero state."""
    import onnxruntime as ort

    from service.runtime.bundle import load_bundle

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
