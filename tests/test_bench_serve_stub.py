"""The serving benchmark's stub server: the service's real gRPC layer, answering from a constant-reply engine."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import numpy as np

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from harness.serve.echo import StubEngine, echo_response  # noqa: E402

from service._proto.seqpred.v1 import seqpred_pb2 as pb  # noqa: E402
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc  # noqa: E402
from service.api.servicer import SeqPredServicer, add_to_server  # noqa: E402


async def _exchange() -> tuple[list[pb.StreamResponse], int]:
    engine = StubEngine()
    server = grpc.aio.server()
    add_to_server(SeqPredServicer(engine), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("localhost:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"localhost:{port}") as ch:
            call = pb_grpc.SeqPredStub(ch).Stream()
            got = []
            for sid in ("", "mine"):
                await call.write(pb.StreamRequest(session_id=sid, tokens=[3], top_k=5, request_id=7))
                got.append(await call.read())
            open_during = engine.batcher.open_rpcs
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
    finally:
        await server.stop(None)
    return got, open_during


def test_stub_answers_like_the_echo_through_the_services_own_handlers() -> None:
    (first, second), open_during = asyncio.run(_exchange())
    echo = echo_response()
    for r in (first, second):
        assert not r.HasField("error")
        assert r.position == echo.position and r.request_id == 7
        assert [t.id for t in r.predictions] == [t.id for t in echo.predictions]
        assert [round(t.logprob, 3) for t in r.predictions] == [round(t.logprob, 3) for t in echo.predictions]
    assert first.session_id == "s" * 22 and second.session_id == "mine"
    assert open_during == 1  # the servicer counted the open stream on the stub's batcher


def test_floor_engine_answers_with_the_models_own_top_k() -> None:
    from harness.serve.echo import FloorEngine
    from service_helpers import tiny_model

    from service.engine.requests import Request
    from service.runtime.bundle import load_bundle
    from service.runtime.onnx_runtime import Runtime

    model = tiny_model()
    engine = FloorEngine(str(model))
    reply = asyncio.run(engine.request(Request("", [3], "", False, False, 4)))
    rt = Runtime(load_bundle(model), "cpu", 1)
    want = rt.step(rt.new_state_memory(1), np.zeros(1, np.int64), np.array([3])).logprobs[0]
    ids = np.argsort(-want, kind="stable")[:4]
    assert reply.top_ids == ids.tolist()
    np.testing.assert_allclose(reply.top_logprobs, want[ids], rtol=1e-6)
    # a request without tokens (the benchmark's closing one) leaves the state alone
    before = engine.memory.read(0)
    asyncio.run(engine.request(Request("x", [], "", False, True, 0)))
    np.testing.assert_array_equal(engine.memory.read(0)[0], before[0])


def test_the_load_clients_count_what_they_measure_against_the_stub() -> None:
    from harness.serve.client import closed_loop, prompt_load

    async def main() -> tuple[dict[str, float], float]:
        server = grpc.aio.server()
        add_to_server(SeqPredServicer(StubEngine()), server)  # type: ignore[arg-type]
        port = server.add_insecure_port("localhost:0")
        await server.start()
        try:
            target = f"localhost:{port}"
            loop = await closed_loop(target, 2, 0.3, 0.1, 100)
            rate = await prompt_load(target, 2, np.arange(1, 33).reshape(4, 8), 0.3)
        finally:
            await server.stop(None)
        return loop, rate

    loop, rate = asyncio.run(main())
    assert loop["tokens"] > 0 and loop["tokens_per_s"] > 0 and 0 < loop["p50_ms"] <= loop["p99_ms"]
    assert rate >= 8 / 0.6  # at least one 8-token prompt answered within the ~0.3 s measured
