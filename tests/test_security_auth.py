"""Bearer-token authentication (service/security/auth.py), sessions bound to principals, and the per-principal quota."""

from __future__ import annotations

import asyncio
import hmac
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from service_helpers import running_server

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.cli import main_client
from service.client.aio import AsyncClient
from service.client.sync import Client
from service.client.types import RequestError
from service.errors import SettingsError, Unauthenticated
from service.security import auth
from service.security.auth import TokenTable, bearer_token, parse_tokens
from service.server import ServerThread

ALICE = "alice-token-0123456789abcdef"
ALICE2 = "alice-rotated-token-9876543210"
BOB = "bob-token-fedcba9876543210xyz"
TOKENS = f"# principal:token\n\nalice:{ALICE}\n  bob : {BOB}  \nalice:{ALICE2}\n"
NOT_FOUND_MSG = "session_id: no live session {!r} (never created, closed, or evicted); send start=true to create it"


# ---------------------------------------------------------------------------------------------------------------
# the token file and the lookup


def test_token_file_parsing() -> None:
    t = parse_tokens(TOKENS)
    assert t.principals == ["alice", "bob"]
    assert t.authenticate(ALICE) == t.authenticate(ALICE2) == "alice" and t.authenticate(BOB) == "bob"
    assert t.authenticate(ALICE[:-1]) is None and t.authenticate("") is None and t.authenticate(ALICE + "x") is None
    assert all(ALICE not in repr(e) for e in t.entries)  # only digests are kept


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "line 1: expected 'principal:token'"),
        (f"al ice:{ALICE}", "line 1: principal 'al ice' must be 1-64 characters"),
        (f":{ALICE}", "line 1: principal '' must be"),
        ("alice:short-secret", "line 1: the token of 'alice' must be at least 16 printable ASCII characters"),
        (f"alice:{ALICE[:8]} {ALICE[8:]}", "without spaces"),
        (f"alice:{ALICE}\n\nbob:{ALICE}", "line 3: the same token as line 1"),
        ("# nothing\n\n", "no 'principal:token' lines"),
    ],
)
def test_token_file_errors_name_the_line_not_the_token(text: str, message: str) -> None:
    with pytest.raises(SettingsError) as e:
        parse_tokens(text, "tokens.txt")
    assert str(e.value).startswith("tokens.txt") and message in str(e.value)
    assert ALICE not in str(e.value) and "short-secret" not in str(e.value)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=16), min_size=1),
    st.text(),
)
def test_lookup_finds_exactly_the_known_tokens(tokens: list[str], other: str) -> None:
    tokens = list(dict.fromkeys(tokens))
    t = TokenTable.from_pairs([(f"p{i}", tok) for i, tok in enumerate(tokens)])
    for i, tok in enumerate(tokens):
        assert t.authenticate(tok) == f"p{i}"
    if other not in tokens:
        assert t.authenticate(other) is None


def test_lookup_compares_every_entry_whatever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        assert len(a) == len(b) == 32  # digests: fixed length whatever the token's
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    t = TokenTable.from_pairs([(f"p{i}", f"token-number-{i:04d}-abcdef") for i in range(20)])
    for probe in ("token-number-0000-abcdef", "token-number-0019-abcdef", "nope", "x" * 10_000):
        calls.clear()
        t.authenticate(probe)
        assert len(calls) == 20


def test_bearer_metadata() -> None:
    assert bearer_token([("authorization", f"Bearer {ALICE}")]) == ALICE
    assert bearer_token([("x-other", "1"), ("authorization", f"bearer   {ALICE} ")]) == ALICE
    for md, msg in [
        ([], "no bearer token"),
        ([("authorization", f"Basic {ALICE}")], "expected 'Bearer TOKEN'"),
        ([("authorization", "Bearer ")], "expected 'Bearer TOKEN'"),
        ([("authorization", f"Bearer {ALICE}")] * 2, "2 entries"),
    ]:
        with pytest.raises(Unauthenticated, match=msg) as e:
            bearer_token(md)
        assert ALICE not in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("auth") / "tokens.txt"
    p.write_text(TOKENS)
    return p


@pytest.fixture(scope="module")
def server(token_file: Path) -> Iterator[Any]:
    with running_server(auth_tokens=str(token_file), max_sessions_per_principal=3) as st_:
        yield st_


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _all_rpcs(stub: pb_grpc.SeqPredStub, md: Any) -> list[grpc.RpcError]:
    errors = []
    calls = [
        lambda: stub.Predict(pb.StreamRequest(text="ab", top_k=1), metadata=md, timeout=5),
        lambda: stub.Score(pb.ScoreRequest(sequences=[pb.Sequence(text="ab")]), metadata=md, timeout=5),
        lambda: stub.GetSession(pb.GetSessionRequest(session_id="x"), metadata=md, timeout=5),
        lambda: stub.CloseSession(pb.CloseSessionRequest(session_id="x"), metadata=md, timeout=5),
        lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md, timeout=5),
        lambda: list(stub.Stream(iter([pb.StreamRequest(text="ab")]), metadata=md, timeout=5)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as e:
            call()
        errors.append(e.value)
    return errors


def test_every_rpc_needs_a_valid_token(server: Any) -> None:
    errors0 = server.server.metrics.errors.labels("UNAUTHENTICATED")._value.get()
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.SeqPredStub(ch)
        for md, msg in [
            (None, "authorization: no bearer token; send the metadata 'authorization: Bearer TOKEN'"),
            (_md(ALICE + "x"), "authorization: the bearer token is not valid"),
            ((("authorization", f"Basic {ALICE}"),), "authorization: expected 'Bearer TOKEN'"),
        ]:
            for e in _all_rpcs(stub, md):
                assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
                assert (e.details() or "").startswith(msg) and ALICE not in (e.details() or "")
        # health and reflection stay open
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        (resp,) = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        assert "seqpred.v1.SeqPred" in {s.name for s in resp.list_services_response.service}
        # the right token works for every RPC, and both of alice's tokens are alice
        r = stub.Predict(pb.StreamRequest(text="ab", top_k=1), metadata=_md(ALICE), timeout=5)
        assert r.position == 2
        stub.CloseSession(pb.CloseSessionRequest(session_id=r.session_id), metadata=_md(ALICE2), timeout=5)
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=_md(BOB), timeout=5).cell == "lstm"
    assert server.server.metrics.errors.labels("UNAUTHENTICATED")._value.get() == errors0 + 18


def test_sessions_are_bound_to_their_principal(server: Any) -> None:
    with Client(server.target, timeout=10, token=ALICE) as alice, Client(server.target, timeout=10, token=BOB) as bob:
        with alice.session() as s:
            first = s.feed("def ", top_k=3)
            sid = s.session_id
        for call in (
            lambda: bob.get_session(sid),
            lambda: bob.close_session(sid),
            lambda: bob.predict("a", session_id=sid),
            lambda: bob.predict(session_id=sid, top_k=2),
            lambda: bob.predict("a", session_id=sid, end=True),
        ):
            with pytest.raises(RequestError) as e:
                call()
            # the same answer as for an id that was never created: existence is not leaked
            assert e.value.code == grpc.StatusCode.NOT_FOUND and e.value.message == NOT_FOUND_MSG.format(sid)
        # bob's start=true on alice's id makes bob's own session; alice's is untouched
        assert bob.predict("add", session_id=sid, start=True).position == 3
        assert bob.get_session(sid).position == 3
        assert alice.get_session(sid).position == 4
        again = alice.predict(session_id=sid, top_k=3)
        assert [p.id for p in again.predictions] == [p.id for p in first.predictions]
        assert alice.predict("a", session_id=sid).position == 5
        # alice's other token is the same principal
        with Client(server.target, timeout=10, token=ALICE2) as alice2:
            assert alice2.get_session(sid).position == 5
            assert alice2.close_session(sid) == 5
        assert bob.close_session(sid) == 3


def test_session_quota_per_principal(server: Any) -> None:
    with Client(server.target, timeout=10, token=ALICE) as alice, Client(server.target, timeout=10, token=BOB) as bob:
        ids = [alice.predict("a", session_id=f"q{i}", start=True).session_id for i in range(3)]
        with pytest.raises(RequestError) as e:
            alice.predict("a")
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert e.value.message == (
            "sessions: principal 'alice' holds 3 sessions, its quota of 3 (--max-sessions-per-principal); "
            "end or close sessions, or retry later"
        )
        assert alice.predict("b", session_id="q0", start=True).position == 1  # resetting a live one is no new one
        bob_ids = [bob.predict("a").session_id for _ in range(3)]  # bob has a quota of his own
        alice.close_session(ids[0])
        fresh = alice.predict("a")
        assert fresh.position == 1
        for sid in [*ids[1:], fresh.session_id]:
            alice.close_session(sid)
        for sid in bob_ids:
            bob.close_session(sid)
    rejected = server.server.metrics.rejected.labels("quota")._value.get()
    assert rejected >= 1


def test_clients_send_tokens(server: Any, token_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> int:
        async with AsyncClient(server.target, timeout=10, token=BOB) as c, c.session(end_on_exit=True) as s:
            return (await s.feed("de", top_k=1)).position

    assert asyncio.run(main()) == 2
    out = io.StringIO()
    monkeypatch.setenv("SEQPRED_TOKEN", BOB)
    assert main_client(["--target", server.target, "--json", "def"], stdout=out) == 0
    assert '"position": 3' in out.getvalue()
    tok = token_file.parent / "alice.token"
    tok.write_text(ALICE + "\n")
    monkeypatch.setenv("SEQPRED_TOKEN", "wrong-token-but-file-wins")
    assert main_client(["--target", server.target, "--token-file", str(tok), "--json", "def"], stdout=out) == 0
    monkeypatch.delenv("SEQPRED_TOKEN")
    assert main_client(["--target", server.target, "def"]) == 2  # UNAUTHENTICATED: reported in one line


def test_a_bad_token_file_stops_the_server(tmp_path: Path) -> None:
    bad = tmp_path / "tokens.txt"
    bad.write_text(f"alice:{ALICE}\nbob:tiny\n")
    from service_helpers import settings as make_settings

    with pytest.raises(SettingsError, match=r"^--auth-tokens '.*tokens\.txt' line 2: the token of 'bob'"):
        ServerThread(make_settings(auth_tokens=str(bad))).start()
    with pytest.raises(SettingsError, match=r"^--auth-tokens: cannot read"):
        ServerThread(make_settings(auth_tokens=str(tmp_path / "missing"))).start()
