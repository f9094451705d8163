"""Hostile clients against a real server (port 0): hypothesis-driven fuzzing of every RPC.

Malformed and extreme fields (invalid and huge ids, token ids anywhere in int64, long token lists, arbitrary
unicode, negative/NaN/inf/subnormal sampling parameters, huge uint32/uint64 values, empty messages, bytes that are
not a protobuf at all), two streams writing one session at once, and clients that cancel mid-stream. After every
example:

* only documented status codes came back (see the proto: INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED here;
  never INTERNAL or UNKNOWN), with bounded messages (nothing echoes a huge input back);
* a ``Stream`` stays open after an in-band error (a follow-up request on it succeeds);
* the server is up (health check) and a *bystander* session, fed a fixed prefix before any fuzzing, still
  predicts exactly what the NumPy oracle predicts for that prefix;
* concurrent and cancelled writers leave a session whose state is the oracle's for the tokens it consumed, in the
  order its responses' positions say they were consumed.

The default run keeps ``max_examples`` modest (well under 30 s in all); ``make test-slow`` runs the heavy profile
(``-m slow``: 20 times the examples).
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_helpers import CORPUS, Oracle, oracle, running_server

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc

LIMITS = {
    "max_request_tokens": 32,
    "max_generate_tokens": 48,
    "max_score_sequences": 4,
    "max_top_k": 20,
    "max_sessions": 1000,
    "max_message_bytes": 64 * 1024,
}
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
ALLOWED_NAMES = {c.name for c in ALLOWED}
MAX_MESSAGE_CHARS = 1000
BYSTANDER = "bystander-session"
ATOL = 3e-5
TIMEOUT = 20.0
PROFILES = [pytest.param(1, id="default"), pytest.param(20, id="heavy", marks=pytest.mark.slow)]


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck))


@dataclass
class Env:
    server: Any
    stub: pb_grpc.SeqPredStub
    health: health_pb2_grpc.HealthStub
    raw: grpc.Channel
    oracle: Oracle
    V: int
    prefix: list[int]


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    o = oracle()
    with running_server(**LIMITS) as srv, grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.SeqPredStub(ch)
        prefix = o.encode("def add(a, b):")
        stub.Predict(pb.StreamRequest(session_id=BYSTANDER, start=True, tokens=prefix), timeout=TIMEOUT)
        e = Env(srv, stub, health_pb2_grpc.HealthStub(ch), ch, o, o.V, prefix)
        yield e
        # nothing leaked: no RPC counted as open, no slot left busy
        _settle(e)
        assert srv.server.batcher.open_rpcs == 0


# ---------------------------------------------------------------------------------------------------------------
# checks shared by every example


def _settle(e: Env, timeout: float = 10.0) -> None:
    """Wait until no step is queued or running (a cancelled RPC's last step may still be finishing)."""
    store, batcher = e.server.server.store, e.server.server.batcher

    def idle() -> bool:
        hw = store.high_water
        return batcher.pending == 0 and not store._busy_np[:hw].any()

    t_end = time.monotonic() + timeout
    while not e.server.call(idle):
        assert time.monotonic() < t_end, "steps still in flight long after their RPCs ended"
        time.sleep(0.005)


def _check_top(e: Env, session_id: str, tokens: list[int]) -> None:
    """The session's next-token top-5 (read without advancing it) equals the oracle's after ``tokens``."""
    r = e.stub.Predict(pb.StreamRequest(session_id=session_id, top_k=5), timeout=TIMEOUT)
    assert r.position == len(tokens)
    want = e.oracle.next_logprobs(tokens)
    got_ids = [p.id for p in r.predictions]
    np.testing.assert_allclose([p.logprob for p in r.predictions], want[got_ids], atol=ATOL)
    np.testing.assert_allclose([p.logprob for p in r.predictions], np.sort(want)[::-1][:5], atol=ATOL)


def _server_is_fine(e: Env) -> None:
    h = e.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    assert h.status == health_pb2.HealthCheckResponse.SERVING
    _check_top(e, BYSTANDER, e.prefix)


def _allowed(err: grpc.RpcError) -> None:
    assert err.code() in ALLOWED, (err.code(), err.details())
    assert len(err.details() or "") < MAX_MESSAGE_CHARS, err.details()


def _close_all(e: Env, ids: set[str]) -> None:
    for sid in ids - {BYSTANDER}:
        try:
            e.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), timeout=TIMEOUT)
        except grpc.RpcError as err:
            assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), err


class RawStream:
    """One bidi stream fed from a queue; ``send`` returns every response to one request."""

    _END = object()

    def __init__(self, stub: pb_grpc.SeqPredStub) -> None:
        self.q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.call = stub.Stream(iter(self.q.get, self._END), timeout=TIMEOUT)

    def send(self, req: pb.StreamRequest) -> list[pb.StreamResponse]:
        self.q.put(req)
        out = [next(self.call)]
        while not out[-1].final:
            out.append(next(self.call))
        return out

    def close(self) -> None:
        self.q.put(self._END)
        for _ in self.call:
            pass


# ---------------------------------------------------------------------------------------------------------------
# strategies

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(width=32)  # NaN, +-inf, -0.0, subnormals, huge
UNICODE = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=48)  # proto strings are UTF-8
VOCAB_TEXT = st.text(alphabet=sorted(set(CORPUS)), max_size=40)
IDS = st.one_of(
    st.sampled_from(["", "", "fuzz-a", "fuzz-b"]),
    UNICODE,
    st.text(min_size=120, max_size=400),
    st.just("x" * 10_000),
).filter(lambda s: s != BYSTANDER)
TOKENS = st.lists(st.one_of(st.integers(0, 36), st.integers(-3, 300), I64), max_size=40)


@st.composite
def generate_params(draw: st.DrawFn) -> pb.GenerateParams:
    g = pb.GenerateParams(
        max_tokens=draw(st.one_of(st.integers(0, 6), U32)), top_k=draw(st.one_of(st.integers(0, 40), U32))
    )
    for name, strat in (("temperature", FLOATS), ("top_p", FLOATS), ("seed", U64)):
        if draw(st.booleans()):
            setattr(g, name, draw(strat))
    return g


@st.composite
def stream_requests(draw: st.DrawFn) -> pb.StreamRequest:
    m = pb.StreamRequest(
        session_id=draw(IDS),
        start=draw(st.booleans()),
        end=draw(st.booleans()),
        top_k=draw(st.one_of(st.integers(0, 25), U32)),
        score=draw(st.booleans()),
        request_id=draw(U64),
    )
    payload = draw(st.sampled_from(["none", "tokens", "text", "vocab", "both"]))
    if payload in ("tokens", "both"):
        m.tokens.extend(draw(TOKENS))
    if payload in ("text", "both"):
        m.text = draw(UNICODE)
    if payload == "vocab":
        m.text = draw(VOCAB_TEXT)
    if draw(st.booleans()):
        m.generate.CopyFrom(draw(generate_params()))
    return m


SEQUENCES = st.lists(
    st.one_of(
        st.builds(pb.Sequence, tokens=TOKENS),
        st.builds(pb.Sequence, text=VOCAB_TEXT),
        st.builds(pb.Sequence, text=UNICODE),
        st.builds(pb.Sequence, tokens=TOKENS, text=VOCAB_TEXT),
    ),
    max_size=6,
)


# ---------------------------------------------------------------------------------------------------------------
# every field of every RPC


def _fuzz_one_request(e: Env, m: pb.StreamRequest) -> None:
    seen: set[str] = {"fuzz-a", "fuzz-b"}
    try:
        r = e.stub.Predict(m, timeout=TIMEOUT)
        seen.add(r.session_id)
        assert r.final and r.request_id == m.request_id
        if m.HasField("generate"):
            assert len(r.generated) == m.generate.max_tokens
        assert len(r.predictions) == min(m.top_k, e.V)
    except grpc.RpcError as err:
        _allowed(err)
    # the same request in a stream, then a good one: the stream must stay open after an in-band error
    follow = pb.StreamRequest(text="def ", top_k=2, end=True, request_id=7)
    resps = list(e.stub.Stream(iter([m, follow]), timeout=TIMEOUT))
    seen.update(x.session_id for x in resps)
    *first, last = resps
    assert first and first[-1].final and all(x.request_id == m.request_id for x in first)
    for x in first:
        if x.HasField("error"):
            assert x.error.code_name in ALLOWED_NAMES and len(x.error.message) < MAX_MESSAGE_CHARS, x.error
            assert x is first[-1]
    assert not last.HasField("error") and last.request_id == 7 and last.ended and len(last.predictions) == 2
    _close_all(e, seen)
    _server_is_fine(e)


@pytest.mark.parametrize("factor", PROFILES)
def test_fuzz_stream_and_predict(env: Env, factor: int) -> None:
    @fuzz_settings(60 * factor)
    @given(stream_requests())
    def run(m: pb.StreamRequest) -> None:
        _fuzz_one_request(env, m)

    run()


@pytest.mark.parametrize("factor", PROFILES)
def test_fuzz_score(env: Env, factor: int) -> None:
    @fuzz_settings(30 * factor)
    @given(SEQUENCES, st.one_of(st.integers(0, 25), U32))
    def run(seqs: list[pb.Sequence], top_k: int) -> None:
        try:
            resp = env.stub.Score(pb.ScoreRequest(sequences=seqs, top_k=top_k), timeout=TIMEOUT)
        except grpc.RpcError as err:
            _allowed(err)
        else:
            assert len(resp.scores) == len(seqs)
            for s, res in zip(seqs, resp.scores, strict=True):  # accepted: every number is the oracle's
                ids = list(s.tokens) if len(s.tokens) else env.oracle.encode(s.text)
                assert res.num_tokens == len(ids)
                if len(ids) > 1:
                    np.testing.assert_allclose(res.token_logprobs, env.oracle.token_logprobs(ids), atol=ATOL)
        _server_is_fine(env)

    run()


@pytest.mark.parametrize("factor", PROFILES)
def test_fuzz_session_rpcs_and_empty_messages(env: Env, factor: int) -> None:
    for empty in (pb.StreamRequest(), pb.ScoreRequest(), pb.CloseSessionRequest(), pb.GetSessionRequest()):
        with pytest.raises(grpc.RpcError) as err:
            {
                pb.StreamRequest: env.stub.Predict,
                pb.ScoreRequest: env.stub.Score,
                pb.CloseSessionRequest: env.stub.CloseSession,
                pb.GetSessionRequest: env.stub.GetSession,
            }[type(empty)](empty, timeout=TIMEOUT)
        _allowed(err.value)
    assert env.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT).vocab_size == env.V

    @fuzz_settings(30 * factor)
    @given(IDS)
    def run(sid: str) -> None:
        for call, req in (
            (env.stub.GetSession, pb.GetSessionRequest(session_id=sid)),
            (env.stub.CloseSession, pb.CloseSessionRequest(session_id=sid)),
        ):
            try:
                call(req, timeout=TIMEOUT)  # fuzz-a/fuzz-b may be live; anything else is not
                assert sid in ("fuzz-a", "fuzz-b")
            except grpc.RpcError as err:
                _allowed(err)
                assert err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
        _server_is_fine(env)

    run()


METHODS = ["Stream", "Predict", "Score", "CloseSession", "GetSession", "GetModelInfo"]


@pytest.mark.parametrize("factor", PROFILES)
def test_fuzz_raw_bytes(env: Env, factor: int) -> None:
    @fuzz_settings(30 * factor)
    @given(st.sampled_from(METHODS), st.binary(max_size=300))
    def run(method: str, data: bytes) -> None:
        path = f"/seqpred.v1.SeqPred/{method}"
        if method == "Stream":
            call = env.raw.stream_stream(path, response_deserializer=pb.StreamResponse.FromString)
            follow = pb.StreamRequest(text="de", end=True, request_id=9).SerializeToString()
            resps = list(call(iter([data, follow]), timeout=TIMEOUT))
            _close_all(env, {x.session_id for x in resps})
            *first, last = resps
            assert first and first[-1].final
            for x in first:
                if x.HasField("error"):
                    assert x.error.code_name in ALLOWED_NAMES and len(x.error.message) < MAX_MESSAGE_CHARS
            assert not last.HasField("error") and last.request_id == 9 and last.ended
        else:
            try:
                out = env.raw.unary_unary(path)(data, timeout=TIMEOUT)
                if method == "Predict":
                    _close_all(env, {pb.StreamResponse.FromString(out).session_id})
            except grpc.RpcError as err:
                _allowed(err)
        _server_is_fine(env)

    run()


def test_huge_messages_and_fields(env: Env) -> None:
    huge = pb.StreamRequest(tokens=[1] * 100_000)  # ~200 KB, over the 64 KiB limit: refused by gRPC
    with pytest.raises(grpc.RpcError) as err:
        env.stub.Predict(huge, timeout=TIMEOUT)
    _allowed(err.value)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as err:  # in a stream it ends the stream, with the same status
        list(env.stub.Stream(iter([pb.StreamRequest(text="de"), huge]), timeout=TIMEOUT))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for m in (
        pb.StreamRequest(tokens=[1] * 8000),  # under the message limit, over max_request_tokens
        pb.StreamRequest(text="a" * 60_000),
        pb.StreamRequest(text="λ" * 30_000),
        pb.StreamRequest(session_id="s" * 60_000, text="a"),
        pb.StreamRequest(text="a", generate=pb.GenerateParams(max_tokens=2**32 - 1)),
    ):
        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            env.stub.Predict(m, timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(err.value.details() or "") < MAX_MESSAGE_CHARS and time.perf_counter() - t0 < 2.0
    _server_is_fine(env)


# ---------------------------------------------------------------------------------------------------------------
# two streams writing one session at once


@pytest.mark.parametrize("factor", PROFILES)
def test_two_streams_write_one_session(env: Env, factor: int) -> None:
    @fuzz_settings(10 * factor)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        chunks = st.lists(st.lists(st.integers(0, env.V - 1), min_size=1, max_size=5), min_size=1, max_size=6)
        plans = {"a": data.draw(chunks), "b": data.draw(chunks)}
        gen = data.draw(st.integers(0, 6))
        sid = f"shared-{uuid.uuid4().hex}"
        prefix = env.oracle.encode("x = ")
        env.stub.Predict(pb.StreamRequest(session_id=sid, start=True, tokens=prefix), timeout=TIMEOUT)
        reqs = {k: [pb.StreamRequest(session_id=sid, tokens=c, score=True) for c in v] for k, v in plans.items()}
        if gen:
            g = pb.GenerateParams(max_tokens=gen, seed=data.draw(U64))
            reqs["b"].insert(len(reqs["b"]) // 2, pb.StreamRequest(session_id=sid, generate=g))
        results: dict[str, list[tuple[pb.StreamRequest, list[pb.StreamResponse]]]] = {"a": [], "b": []}
        go = threading.Barrier(2)

        def writer(name: str) -> None:
            s = RawStream(env.stub)
            go.wait()
            for r in reqs[name]:
                results[name].append((r, s.send(r)))
            s.close()

        threads = [threading.Thread(target=writer, args=(k,)) for k in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # rebuild the order in which the session consumed tokens from the positions its responses report
        at: dict[int, int] = dict(enumerate(prefix, 1))
        scored: list[tuple[int, int, float]] = []  # (position, token, reported logprob)
        for pairs in results.values():
            for req, resps in pairs:
                assert all(not x.HasField("error") for x in resps), resps
                if req.HasField("generate"):
                    assert len(resps) == gen
                    for x in resps:
                        (tok,) = x.generated
                        assert x.position not in at
                        at[x.position] = tok.id
                else:
                    (x,) = resps
                    n = len(req.tokens)
                    for i, tok in enumerate(req.tokens):
                        p = x.position - n + 1 + i
                        assert p not in at
                        at[p] = tok
                        scored.append((p, tok, x.token_logprobs[i]))
        total = env.stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=TIMEOUT).position
        assert sorted(at) == list(range(1, total + 1))  # every position consumed exactly once
        seq = [at[p] for p in range(1, total + 1)]
        lp = env.oracle.logprobs(seq)
        for p, tok, got in scored:  # each request's tokens were applied together, at the positions reported
            assert abs(lp[p - 2, tok] - got) < ATOL, (p, tok)
        _check_top(env, sid, seq)
        env.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), timeout=TIMEOUT)
        _server_is_fine(env)

    run()


# ---------------------------------------------------------------------------------------------------------------
# clients that go away mid-request


@pytest.mark.parametrize("factor", PROFILES)
def test_clients_that_cancel(env: Env, factor: int) -> None:
    @fuzz_settings(12 * factor)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        sid = f"cancel-{uuid.uuid4().hex}"
        prefix = env.oracle.encode("for i in ")
        env.stub.Predict(pb.StreamRequest(session_id=sid, start=True, tokens=prefix), timeout=TIMEOUT)
        mode = data.draw(st.sampled_from(["chunks", "generate", "deadline"]))
        if mode == "chunks":
            # several requests queued at once; the client reads some answers and hangs up
            chunks = data.draw(
                st.lists(st.lists(st.integers(0, env.V - 1), min_size=1, max_size=8), min_size=1, max_size=8)
            )
            read = data.draw(st.integers(0, len(chunks)))
            s = RawStream(env.stub)
            for c in chunks:
                s.q.put(pb.StreamRequest(session_id=sid, tokens=c, top_k=1))
            for _ in range(read):
                next(s.call)
            s.call.cancel()
            s.q.put(RawStream._END)
            _settle(env)
            pos = env.stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=TIMEOUT).position
            ends = np.cumsum([len(prefix)] + [len(c) for c in chunks]).tolist()
            assert pos in ends and ends.index(pos) >= read  # whole requests, in order, at least those answered
            seq = prefix + [t for c in chunks[: ends.index(pos)] for t in c]
        else:
            n = data.draw(st.integers(1, LIMITS["max_generate_tokens"]))
            g = pb.GenerateParams(max_tokens=n, seed=data.draw(U64))
            twin = f"twin-{uuid.uuid4().hex}"  # the same generation, not interrupted
            env.stub.Predict(pb.StreamRequest(session_id=twin, start=True, tokens=prefix), timeout=TIMEOUT)
            full = env.stub.Predict(pb.StreamRequest(session_id=twin, generate=g, end=True), timeout=TIMEOUT)
            want = [t.id for t in full.generated]
            req = pb.StreamRequest(session_id=sid, generate=g)
            if mode == "generate":
                read = data.draw(st.integers(0, n))
                s = RawStream(env.stub)
                s.q.put(req)
                seen = [next(s.call).generated[0].id for _ in range(read)]
                s.call.cancel()
                s.q.put(RawStream._END)
                assert seen == want[:read]
            else:
                read = 0
                try:  # a short generation may finish in time
                    r = env.stub.Predict(req, timeout=data.draw(st.sampled_from([1e-4, 1e-3, 5e-3])))
                    read = len(r.generated)
                    assert [t.id for t in r.generated] == want
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            _settle(env)
            pos = env.stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=TIMEOUT).position
            done = pos - len(prefix)
            assert read <= done <= n
            seq = prefix + want[:done]
        _check_top(env, sid, seq)  # the session is consistent and still usable
        r = env.stub.Predict(pb.StreamRequest(session_id=sid, tokens=[seq[-1]], score=True), timeout=TIMEOUT)
        assert abs(r.token_logprobs[0] - env.oracle.next_logprobs(seq)[seq[-1]]) < ATOL
        env.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), timeout=TIMEOUT)
        _server_is_fine(env)

    run()
