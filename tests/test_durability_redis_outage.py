"""``--store redis`` through a Redis outage, end to end: a real server (port 0) on a real redis-server that is
stopped (SIGSTOP) while a request's write is on its way. The request fails with UNAVAILABLE; when Redis resumes it
runs the queued write past its deadline, which changes nothing; the client's retry advances the session once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from redis_helpers import RedisServer, redis_server
from service_helpers import running_server

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as s:
        yield s


def test_a_request_reported_failed_is_not_applied_when_redis_resumes(redis: RedisServer) -> None:
    with (
        running_server(store="redis", redis_url=redis.url, redis_timeout=1.0) as st,
        grpc.insecure_channel(st.target) as ch,
    ):
        stub = pb_grpc.SeqPredStub(ch)
        sid = stub.Predict(pb.StreamRequest(text="def"), timeout=30).session_id
        assert stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=30).position == 3

        sessions: Any = st.server.persistence.redis  # type: ignore[union-attr]
        put, stopped = sessions.put, []

        async def stop_redis_then_put(*args: Any, **kw: Any) -> int:
            """The request has been computed and its write is about to go out: stop Redis now."""
            if not stopped:
                os.kill(redis.proc.pid, signal.SIGSTOP)
                stopped.append(time.monotonic())
            return int(await put(*args, **kw))

        sessions.put = stop_redis_then_put
        tokens = list(range(1, 21)) * 20  # 400 tokens
        try:
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(pb.StreamRequest(session_id=sid, tokens=tokens), timeout=30)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "unreachable during write" in (e.value.details() or "")
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        assert stopped, "the request never reached its write"
        time.sleep(0.5)  # Redis runs the write that waited in its input buffer

        r = stub.Predict(pb.StreamRequest(session_id=sid, tokens=tokens), timeout=30)  # the client's retry
        assert r.position == 3 + 400  # once, not 3 + 800
        assert stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=30).position == 403
