"""Concurrency limits by kind of traffic (service/security/limits.py), over real gRPC: tokenless health watches and
reflection streams have their own bounded pool, so authenticated calls always find room."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_helpers import running_server, status_message

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.security.limits import peer_address

TOKEN = "alice-token-0123456789abcdef"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
WATCH = health_pb2.HealthCheckRequest(service="")


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("limits") / "tokens.txt"
    p.write_text(f"alice:{TOKEN}\n")
    return p


class Watches:
    """Tokenless health Watch streams held open over a few channels; each is SERVING or refused."""

    def __init__(self, target: str, channels: int = 4) -> None:
        self.channels = [grpc.insecure_channel(target) for _ in range(channels)]
        self.open: list[Any] = []
        self.refused: list[grpc.RpcError] = []

    def add(self, n: int) -> None:
        for i in range(n):
            call = health_pb2_grpc.HealthStub(self.channels[i % len(self.channels)]).Watch(WATCH, timeout=60)
            try:
                assert next(call).status == health_pb2.HealthCheckResponse.SERVING
                self.open.append(call)
            except grpc.RpcError as e:
                self.refused.append(e)

    def close(self) -> None:
        for c in self.open:
            c.cancel()
        for ch in self.channels:
            ch.close()


@contextlib.contextmanager
def watches(target: str) -> Iterator[Watches]:
    w = Watches(target)
    try:
        yield w
    finally:
        w.close()


def _predict(target: str, metadata: Any = AUTH) -> pb.StreamResponse:
    with grpc.insecure_channel(target) as ch:
        return pb_grpc.SeqPredStub(ch).Predict(pb.StreamRequest(text="def add"), metadata=metadata, timeout=30)


def test_tokenless_watches_never_take_the_room_of_an_authenticated_call(token_file: Path) -> None:
    """The issue's attack at a small scale: as many tokenless Watch streams as --max-concurrent-rpcs and more."""
    with running_server(auth_tokens=str(token_file), max_concurrent_rpcs=40) as st, watches(st.target) as w:
        w.add(60)
        assert _predict(st.target).position == 7  # before: RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!"
        assert len(w.open) == 16  # the default --max-public-streams-per-peer; every client here is 127.0.0.1
        assert {e.code() for e in w.refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert re.fullmatch(
            r"server: 16 health watches and reflection streams open from (ipv4:127\.0\.0\.1|ipv6:\[::1\]), the "
            r"limit of --max-public-streams-per-peer \(16\); close some first",
            w.refused[0].details(),
        )
        with grpc.insecure_channel(st.target) as ch:  # a probe's Check is never limited
            assert (
                health_pb2_grpc.HealthStub(ch).Check(WATCH, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
            )


def test_the_total_cap_and_a_freed_stream_makes_room(token_file: Path) -> None:
    kw = {"auth_tokens": str(token_file), "max_public_streams": 5, "max_public_streams_per_peer": 0}
    with running_server(**kw) as st, watches(st.target) as w:
        w.add(7)
        assert (len(w.open), len(w.refused)) == (5, 2)
        assert w.refused[0].details() == (
            "server: 5 health watches and reflection streams open, the limit of --max-public-streams (5); retry later"
        )
        with grpc.insecure_channel(st.target) as ch:  # reflection streams share the pool
            refl = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
            with pytest.raises(grpc.RpcError) as e:
                list(refl)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        w.open.pop().cancel()  # its slot is freed when the server sees the cancellation
        deadline = time.monotonic() + 10
        while len(w.open) < 5 and time.monotonic() < deadline:
            w.add(1)
            time.sleep(0.05)
        assert len(w.open) == 5
        assert _predict(st.target).position == 7


def test_authenticated_calls_have_their_own_limit_and_refused_calls_do_not_count(token_file: Path) -> None:
    gate: list[bool] = []

    def held_open() -> Iterator[pb.StreamRequest]:
        yield pb.StreamRequest(text="def add")
        while not gate:
            time.sleep(0.01)

    with (
        running_server(auth_tokens=str(token_file), max_concurrent_rpcs=2) as st,
        grpc.insecure_channel(st.target) as ch,
    ):
        stub = pb_grpc.SeqPredStub(ch)
        held = [stub.Stream(held_open(), metadata=AUTH, timeout=60) for _ in range(2)]  # the limit
        try:
            for call in held:
                assert next(call).position == 7
            for _ in range(5):  # refused by authentication: they never count
                with pytest.raises(grpc.RpcError) as e:
                    stub.Predict(pb.StreamRequest(text="a"), timeout=10)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(pb.StreamRequest(text="a"), metadata=AUTH, timeout=10)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert status_message(e.value) == "server: 2 RPCs open, the limit of --max-concurrent-rpcs (2); retry later"
        finally:
            gate.append(True)
        for call in held:
            assert list(call) == []
        assert stub.Predict(pb.StreamRequest(text="a"), metadata=AUTH, timeout=10).position == 1


def test_peer_address_drops_the_port() -> None:
    assert peer_address("ipv4:10.0.0.7:5123") == "ipv4:10.0.0.7"
    assert peer_address("ipv6:[::1]:5123") == "ipv6:[::1]"
    assert peer_address("ipv6:%5B::1%5D:5123") == "ipv6:[::1]"
    assert peer_address("unix:/tmp/s.sock") == "unix:/tmp/s.sock"
