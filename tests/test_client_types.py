"""Every client result is a typed dataclass (no dict, no protobuf), the same from the blocking and asyncio clients,
and equal to what the server sent."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime

import grpc
import pytest
from service_helpers import running_server

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.client import AsyncClient, Client, ModelInfo, Prediction, Result, SequenceScore, SessionInfo


def test_model_info_and_session_info_name_every_proto_field() -> None:
    # a field added to the proto must reach the client's types too
    assert {f.name for f in dataclasses.fields(ModelInfo)} == {f.name for f in pb.ModelInfo.DESCRIPTOR.fields}
    assert {f.name for f in dataclasses.fields(SessionInfo)} == {f.name for f in pb.SessionInfo.DESCRIPTOR.fields}


def test_every_result_is_a_dataclass_and_matches_the_wire() -> None:
    with running_server(idle_timeout=60, max_lifetime=0) as st, Client(st.target, timeout=10) as c:
        info = c.model_info()
        assert type(info) is ModelInfo
        with grpc.insecure_channel(st.target) as ch:
            raw = pb_grpc.SeqPredStub(ch).GetModelInfo(pb.GetModelInfoRequest())
        assert info.cell == raw.cell == "lstm" and info.vocab_size == raw.vocab_size and info.layers == 2
        assert info.state_names == tuple(raw.state_names) == ("h0", "c0", "h1", "c1")
        assert info.idle_timeout == 60.0 and info.max_lifetime is None  # 0 = never: unset on the wire, None here
        assert info.max_top_k == raw.max_top_k and info.model_sha256 == raw.model_sha256

        before = datetime.now(UTC)
        with c.session() as s:
            r = s.feed("def ", top_k=2)
            assert type(r) is Result and all(type(p) is Prediction for p in r.predictions)
            sid = s.session_id
        time.sleep(0.05)
        got = c.get_session(sid)
        assert type(got) is SessionInfo
        assert (got.session_id, got.position) == (sid, 4)
        assert got.created.tzinfo is not None and abs((got.created - before).total_seconds()) < 5
        assert got.created <= got.last_active
        assert got.time_left is not None and 50 < got.time_left <= 60
        (sc,) = c.score(["ab"])
        assert type(sc) is SequenceScore and sc.num_tokens == 2
        assert c.close_session(sid) == 4


def test_the_asyncio_client_returns_the_same_types() -> None:
    with running_server(idle_timeout=0, max_lifetime=0) as st:

        async def main() -> tuple[ModelInfo, SessionInfo]:
            async with AsyncClient(st.target, timeout=10) as c:
                r = await c.predict("ab", top_k=1)
                return await c.model_info(), await c.get_session(r.session_id)

        info, got = asyncio.run(main())
        with Client(st.target, timeout=10) as c:
            assert c.model_info() == info  # frozen dataclasses compare by value
        assert info.idle_timeout is None
        assert type(got) is SessionInfo and got.position == 2 and got.time_left is None


def test_session_info_is_frozen() -> None:
    info = SessionInfo("s", 1, datetime.now(UTC), datetime.now(UTC), None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.position = 2  # type: ignore[misc]
