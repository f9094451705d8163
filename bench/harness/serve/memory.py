"""The serving benchmark's memory check: RSS growth of a fresh service per idle session (each fed one token)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc

from harness.serve.procs import start_service
from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc


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
