"""The serving benchmark's stub server: the service's real gRPC layer, answering from a constant-reply engine."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from serve_echo import StubEngine, echo_response  # noqa: E402

from service._proto.seqpred.v1 import seqpred_pb2 as pb  # noqa: E402
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc  # noqa: E402
from service.servicer import SeqPredServicer, add_to_server  # noqa: E402


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
