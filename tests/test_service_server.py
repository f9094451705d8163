"""The service end to end: a real server on port 0, real channels, the NumPy network as the oracle."""

from __future__ import annotations

import asyncio
import queue
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_helpers import oracle, running_server, status_message

from model.train.evaluate import sample_next
from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.client.aio import AsyncClient
from service.client.types import make_request

ATOL = 3e-5


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with running_server(metrics_port=0, on_unknown="error") as st:  # the error cases below include unknown text
        yield st


@pytest.fixture(scope="module")
def stub(server: Any) -> Iterator[pb_grpc.SeqPredStub]:
    with grpc.insecure_channel(server.target) as ch:
        yield pb_grpc.SeqPredStub(ch)


class RawStream:
    """One bidi stream; ``send`` returns every response to one request (up to the final one)."""

    _END = object()

    def __init__(self, stub: pb_grpc.SeqPredStub) -> None:
        self.q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.call = stub.Stream(iter(self.q.get, self._END))

    def send(self, req: pb.StreamRequest) -> list[pb.StreamResponse]:
        self.q.put(req)
        out = [next(self.call)]
        while not out[-1].final:
            out.append(next(self.call))
        return out

    def one(self, **kw: Any) -> pb.StreamResponse:
        (r,) = self.send(pb.StreamRequest(**kw))
        return r

    def close(self) -> None:
        self.q.put(self._END)
        for _ in self.call:
            pass


@pytest.fixture
def stream(stub: pb_grpc.SeqPredStub) -> Iterator[RawStream]:
    s = RawStream(stub)
    yield s
    s.close()


def _ids(resp: pb.StreamResponse) -> list[int]:
    return [t.id for t in resp.predictions]


# ---------------------------------------------------------------------------------------------------------------
# happy paths


def test_model_info(stub: pb_grpc.SeqPredStub) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    o = oracle()
    assert (info.cell, info.layers, info.hidden, info.vocab_size, info.tokenizer) == ("lstm", 2, 16, o.V, "char")
    assert list(info.state_names) == ["h0", "c0", "h1", "c1"]
    assert info.state_bytes == 4 * 16 * 4
    assert len(info.model_sha256) == 64
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.idle_timeout.seconds == 900 and info.max_sessions == 100_000


def test_stream_text_then_tokens(stream: RawStream) -> None:
    o = oracle()
    ids = o.encode("def add(a, b")
    r1 = stream.one(text="def add", top_k=5, score=True)
    assert len(r1.session_id) == 22 and r1.position == 7 and r1.final and not r1.HasField("error")
    assert _ids(r1) == o.top_k(ids[:7], 5)
    np.testing.assert_allclose(r1.token_logprobs, o.token_logprobs(ids[:7]), atol=ATOL)
    probs = [t.prob for t in r1.predictions]
    assert probs == sorted(probs, reverse=True)
    assert r1.predictions[0].text == o.tokenizer.token_text(r1.predictions[0].id)
    np.testing.assert_allclose(np.exp([t.logprob for t in r1.predictions]), probs, rtol=1e-5)
    r2 = stream.one(session_id=r1.session_id, tokens=ids[7:], top_k=3, score=True)
    assert r2.position == len(ids)
    assert _ids(r2) == o.top_k(ids, 3)
    # the continuation's first token is scored too (from the state, through the head graph)
    np.testing.assert_allclose(r2.token_logprobs, o.token_logprobs(ids)[6:], atol=ATOL)


def test_predict_unary_and_session_rpcs(stub: pb_grpc.SeqPredStub) -> None:
    o = oracle()
    r = stub.Predict(pb.StreamRequest(text="class Point", top_k=2))
    assert _ids(r) == o.top_k(o.encode("class Point"), 2)
    info = stub.GetSession(pb.GetSessionRequest(session_id=r.session_id))
    assert info.position == 11
    assert abs(info.created.ToNanoseconds() / 1e9 - time.time()) < 30
    assert 890 < info.time_left.ToNanoseconds() / 1e9 <= 900
    closed = stub.CloseSession(pb.CloseSessionRequest(session_id=r.session_id))
    assert closed.position == 11
    with pytest.raises(grpc.RpcError) as e:
        stub.GetSession(pb.GetSessionRequest(session_id=r.session_id))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_one_off_predict_with_end_keeps_no_session(server: Any, stub: pb_grpc.SeqPredStub) -> None:
    """Without a session id a Predict creates a session that lives for the idle timeout (the test above); with
    end = true on the same call none is kept, generation included."""
    o = oracle()
    before = len(server.server.store)
    r = stub.Predict(pb.StreamRequest(text="class Point", top_k=2, end=True))
    assert (r.ended, r.position, _ids(r)) == (True, 11, o.top_k(o.encode("class Point"), 2))
    g = stub.Predict(pb.StreamRequest(text="def", end=True, generate=pb.GenerateParams(max_tokens=5, temperature=0)))
    assert g.ended and len(g.generated) == 5 and g.position == 8
    for sid in (r.session_id, g.session_id):
        with pytest.raises(grpc.RpcError) as e:
            stub.GetSession(pb.GetSessionRequest(session_id=sid))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(server.server.store) == before


def test_score_rpc(stub: pb_grpc.SeqPredStub) -> None:
    o = oracle()
    texts = ["for i in range(10):", "x", "self.y = y"]
    resp = stub.Score(
        pb.ScoreRequest(
            sequences=[pb.Sequence(text=texts[0]), pb.Sequence(tokens=o.encode(texts[1])), pb.Sequence(text=texts[2])],
            top_k=3,
        )
    )
    for t, s in zip(texts, resp.scores, strict=True):
        ids = o.encode(t)
        assert s.num_tokens == len(ids)
        np.testing.assert_allclose(s.token_logprobs, o.token_logprobs(ids), atol=ATOL)
        assert s.total_logprob == pytest.approx(float(np.sum(o.token_logprobs(ids))), abs=1e-4)
        assert [p.id for p in s.predictions] == o.top_k(ids, 3)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_chunking_gives_the_same_logprobs(stub: pb_grpc.SeqPredStub, data: st.DataObject) -> None:
    """Token by token, in chunks of any size, or through Score: the same log-probabilities."""
    o = oracle()
    ids = data.draw(st.lists(st.integers(0, o.V - 1), min_size=2, max_size=30), label="ids")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(ids) - 1)), label="cuts"))
    chunks = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)], strict=True)]
    s = RawStream(stub)
    try:
        sid, scores = "", []
        for ch in chunks:
            r = s.one(session_id=sid, tokens=ch, score=True, top_k=1)
            assert not r.HasField("error"), r.error.message
            sid = r.session_id
            scores += list(r.token_logprobs)
        assert r.position == len(ids)
        assert _ids(r) == o.top_k(ids, 1)
        s.one(session_id=sid, end=True)
    finally:
        s.close()
    whole = stub.Score(pb.ScoreRequest(sequences=[pb.Sequence(tokens=ids)])).scores[0].token_logprobs
    np.testing.assert_allclose(scores, whole, atol=ATOL)
    np.testing.assert_allclose(scores, o.token_logprobs(ids), atol=ATOL)


def test_fifty_interleaved_sessions_on_concurrent_streams(server: Any) -> None:
    """Distinct inputs per session, random chunking, all at once: each answer equals that session alone."""
    o = oracle()
    rng = np.random.default_rng(7)
    plans = []
    for _ in range(50):
        ids = rng.integers(1, o.V, int(rng.integers(3, 25))).tolist()
        cuts = sorted(set(rng.integers(1, len(ids), int(rng.integers(0, 4))).tolist()))
        plans.append([ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)], strict=True)])
    sizes: list[int] = []
    batcher = server.server.batcher
    batcher.batch_hook = lambda lane, jobs: sizes.append(len(jobs))

    async def one(client: AsyncClient, chunks: list[list[int]]) -> list[tuple[int, list[int], list[float]]]:
        out = []
        async with client.session() as s:
            for ch in chunks:
                r = await s.feed(tokens=ch, top_k=4, score=True)
                out.append((r.position, [p.id for p in r.predictions], r.token_logprobs))
                await asyncio.sleep(0)
            await s.end()
        return out

    async def main() -> list[Any]:
        async with AsyncClient(server.target) as client:
            return await asyncio.gather(*(one(client, p) for p in plans))

    try:
        results = asyncio.run(main())
    finally:
        batcher.batch_hook = None
    for chunks, res in zip(plans, results, strict=True):
        seen: list[int] = []
        scores: list[float] = []
        for ch, (pos, top, sc) in zip(chunks, res, strict=True):
            seen += ch
            assert pos == len(seen)
            assert top == o.top_k(seen, 4)
            scores += sc
        np.testing.assert_allclose(scores, o.token_logprobs(seen), atol=ATOL)
    assert max(sizes) > 1, "concurrent sessions should share batches"


# ---------------------------------------------------------------------------------------------------------------
# session semantics


def test_client_id_start_reset_and_end(stream: RawStream) -> None:
    o = oracle()
    r = stream.one(session_id="my-session", start=True, text="abc", top_k=2)
    assert (r.session_id, r.position) == ("my-session", 3)
    r = stream.one(session_id="my-session", start=True, text="d", top_k=2)  # start on a live id resets it
    assert r.position == 1 and _ids(r) == o.top_k(o.encode("d"), 2)
    r = stream.one(session_id="my-session", text="ef", top_k=2, end=True)
    assert r.position == 3 and r.ended and _ids(r) == o.top_k(o.encode("def"), 2)
    r = stream.one(session_id="my-session", text="g")
    assert r.error.code_name == "NOT_FOUND"


def test_start_only_and_end_only(stream: RawStream) -> None:
    r = stream.one(start=True)
    assert r.position == 0 and len(r.session_id) == 22
    r = stream.one(session_id=r.session_id, end=True)
    assert r.ended and r.position == 0


def test_reconnect_to_a_live_session_from_a_new_stream(stub: pb_grpc.SeqPredStub) -> None:
    o = oracle()
    s1 = RawStream(stub)
    sid = s1.one(text="def ").session_id
    s1.close()  # the stream ends; the session does not
    s2 = RawStream(stub)
    r = s2.one(session_id=sid, text="add", top_k=3, score=True)
    s2.close()
    ids = o.encode("def add")
    assert r.position == 7 and _ids(r) == o.top_k(ids, 3)
    np.testing.assert_allclose(r.token_logprobs, o.token_logprobs(ids)[3:], atol=ATOL)


def test_top_k_without_tokens_looks_at_the_session(stream: RawStream) -> None:
    o = oracle()
    sid = stream.one(text="return").session_id
    r = stream.one(session_id=sid, top_k=3)
    assert r.position == 6 and _ids(r) == o.top_k(o.encode("return"), 3)


def test_idle_eviction_and_lifetime() -> None:
    with running_server(idle_timeout=0.3, max_lifetime=0.9, sweep_interval=0.05) as st_:
        with grpc.insecure_channel(st_.target) as ch:
            stub = pb_grpc.SeqPredStub(ch)
            idle = stub.Predict(pb.StreamRequest(text="a")).session_id
            busy = stub.Predict(pb.StreamRequest(text="a")).session_id
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.6:
                stub.Predict(pb.StreamRequest(session_id=busy, text="b"))  # keeps it active
                time.sleep(0.05)
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(pb.StreamRequest(session_id=idle, text="b"))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert status_message(e.value) == (
                f"session_id: no live session {idle!r} (never created, closed, or evicted); "
                "send start=true to create it"
            )
            while time.monotonic() - t0 < 1.3:  # active, but older than its lifetime
                try:
                    stub.Predict(pb.StreamRequest(session_id=busy, text="b"))
                except grpc.RpcError as e2:
                    assert e2.code() == grpc.StatusCode.NOT_FOUND
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the session outlived its maximum lifetime")
        store = st_.server.store
        assert len(store) == 0 and store.freed_total == store.created_total == 2
        metrics = st_.server.metrics
        assert metrics.evicted.labels("idle")._value.get() == 1
        assert metrics.evicted.labels("lifetime")._value.get() == 1


def test_capacity_is_refused_not_queued() -> None:
    with running_server(max_sessions=2) as st_, grpc.insecure_channel(st_.target) as ch:
        stub = pb_grpc.SeqPredStub(ch)
        a = stub.Predict(pb.StreamRequest(text="a")).session_id
        stub.Predict(pb.StreamRequest(text="b"))
        s = RawStream(stub)
        r = s.one(text="c")
        assert r.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert r.error.code_name == "RESOURCE_EXHAUSTED"
        assert r.error.message == (
            "sessions: the server holds 2 sessions, its capacity of 2; end or close sessions, or retry later"
        )
        r = s.one(session_id=a, text="x", end=True)  # the stream stays open after an error
        assert r.ended
        assert s.one(text="c").position == 1  # room again
        s.close()
        assert st_.server.metrics.rejected.labels("capacity")._value.get() == 1


# ---------------------------------------------------------------------------------------------------------------
# generation


def test_generation_streams_tokens_and_matches_offline_sampling(stream: RawStream) -> None:
    o = oracle()
    prompt = o.encode("def ")
    req = make_request(text="def ", generate=6, temperature=0.9, gen_top_k=10, top_p=0.95, seed=123, top_k=2)
    responses = stream.send(req)
    assert len(responses) == 6 and [r.final for r in responses] == [False] * 5 + [True]
    assert [r.position for r in responses] == list(range(5, 11))
    got = [r.generated[0].id for r in responses]
    rng = np.random.default_rng(123)
    seq, want = list(prompt), []
    for _ in range(6):
        lp = o.next_logprobs(seq)
        t = sample_next(lp, rng, 0.9, 10, 0.95)
        want.append(t)
        seq.append(t)
    assert got == want
    assert responses[0].generated[0].logprob == pytest.approx(o.next_logprobs(prompt)[got[0]], abs=ATOL)
    assert _ids(responses[-1]) == o.top_k(seq, 2)
    # the session advanced by the generated tokens
    r = stream.one(session_id=responses[0].session_id, top_k=2)
    assert r.position == 10 and _ids(r) == o.top_k(seq, 2)


def test_greedy_generation_in_predict_and_from_a_live_session(stub: pb_grpc.SeqPredStub) -> None:
    o = oracle()
    r0 = stub.Predict(pb.StreamRequest(text="self."))
    r = stub.Predict(make_request(session_id=r0.session_id, generate=5, temperature=0.0, score=True))
    seq = o.encode("self.")
    for _ in range(5):
        seq.append(int(np.argmax(o.next_logprobs(seq))))
    assert [t.id for t in r.generated] == seq[5:] and r.position == 10 and r.final
    assert len(r.token_logprobs) == 0


# ---------------------------------------------------------------------------------------------------------------
# errors: in-band in a stream (the stream stays open), as a status in unary calls


ERRORS = [
    (
        {"session_id": "no-such-session", "tokens": [1]},
        "NOT_FOUND",
        "session_id: no live session 'no-such-session' (never created, closed, or evicted); "
        "send start=true to create it",
    ),
    (
        {"session_id": "x" * 129, "tokens": [1]},
        "INVALID_ARGUMENT",
        "session_id: 129 characters, more than the limit of 128 (got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'...)",
    ),
    ({"tokens": [1, 500, 2]}, "INVALID_ARGUMENT", "tokens[1]: token id 500 is out of range [0, V)"),
    ({"tokens": [-1]}, "INVALID_ARGUMENT", "tokens[0]: token id -1 is out of range [0, V)"),
    (
        {"text": "def λ(x)"},
        "INVALID_ARGUMENT",
        "text: character 'λ' at offset 4 is not in the model's vocabulary",
    ),
    ({}, "INVALID_ARGUMENT", "request: nothing to do; set tokens, text, top_k, generate, start or end"),
    ({"tokens": [1], "text": "a"}, "INVALID_ARGUMENT", "request: set tokens or text, not both"),
    (
        {"tokens": [1] * 4097},
        "INVALID_ARGUMENT",
        "tokens: 4097 tokens, more than the limit of 4096 per request",
    ),
    ({"text": "a", "top_k": 101}, "INVALID_ARGUMENT", "top_k: must be <= V, got 101"),
    (
        {"text": "a", "generate": pb.GenerateParams(max_tokens=0)},
        "INVALID_ARGUMENT",
        "generate.max_tokens: must be in [1, 1024], got 0",
    ),
    (
        {"text": "a", "generate": pb.GenerateParams(max_tokens=2000)},
        "INVALID_ARGUMENT",
        "generate.max_tokens: must be in [1, 1024], got 2000",
    ),
    (
        {"text": "a", "generate": pb.GenerateParams(max_tokens=1, temperature=-1)},
        "INVALID_ARGUMENT",
        "generate.temperature: must be finite and >= 0, got -1.0",
    ),
    (
        {"text": "a", "generate": pb.GenerateParams(max_tokens=1, top_p=0)},
        "INVALID_ARGUMENT",
        "generate.top_p: must be in (0, 1], got 0.0",
    ),
    (
        {"text": "a", "generate": pb.GenerateParams(max_tokens=1, top_p=1.5)},
        "INVALID_ARGUMENT",
        "generate.top_p: must be in (0, 1], got 1.5",
    ),
    (
        {"text": "a", "generate": pb.GenerateParams(max_tokens=1, top_k=1000)},
        "INVALID_ARGUMENT",
        "generate.top_k: must be <= the vocabulary size V, got 1000",
    ),
    (
        {"generate": pb.GenerateParams(max_tokens=1)},
        "INVALID_ARGUMENT",
        "generate: a new or reset session has consumed no tokens, so there is no next-token distribution; "
        "send tokens or text with it",
    ),
    (
        {"top_k": 3},
        "INVALID_ARGUMENT",
        "top_k: a new or reset session has consumed no tokens, so there is no next-token distribution; "
        "send tokens or text with it",
    ),
]


def _expected(msg: str) -> str:
    return (
        msg.replace("V)", f"{oracle().V})").replace("<= V", f"<= {oracle().V}").replace("size V", f"size {oracle().V}")
    )


@pytest.mark.parametrize(("fields", "code", "message"), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors_in_band_and_as_status(
    stub: pb_grpc.SeqPredStub, stream: RawStream, fields: dict[str, Any], code: str, message: str
) -> None:
    before = stream.one(text="ok")
    r = stream.one(**fields, request_id=42)
    assert r.HasField("error") and r.final and r.request_id == 42
    assert (r.error.code_name, r.error.message) == (code, _expected(message))
    assert r.error.code == grpc.StatusCode[code].value[0]
    assert not r.predictions and not r.generated
    # the stream is still open and nothing was applied
    after = stream.one(session_id=before.session_id, tokens=[1])
    assert after.position == before.position + 1
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(pb.StreamRequest(**fields))
    assert e.value.code() == grpc.StatusCode[code]
    assert status_message(e.value) == _expected(message)


def test_score_errors(stub: pb_grpc.SeqPredStub) -> None:
    cases = [
        (pb.ScoreRequest(), "sequences: empty; send at least one sequence"),
        (pb.ScoreRequest(sequences=[pb.Sequence(text="a"), pb.Sequence()]), "sequences[1]: empty; set tokens or text"),
        (
            pb.ScoreRequest(sequences=[pb.Sequence(tokens=[1, 2, 999])]),
            "sequences[0].tokens[2]: token id 999 is out of range [0, V)",
        ),
        (
            pb.ScoreRequest(sequences=[pb.Sequence(text="λ")]),
            "sequences[0].text: character 'λ' at offset 0 is not in the model's vocabulary",
        ),
        (
            pb.ScoreRequest(sequences=[pb.Sequence(text="a")] * 257),
            "sequences: 257 sequences, more than the limit of 256",
        ),
    ]
    for req, msg in cases:
        with pytest.raises(grpc.RpcError) as e:
            stub.Score(req)
        assert (e.value.code(), status_message(e.value)) == (grpc.StatusCode.INVALID_ARGUMENT, _expected(msg))


def test_close_and_get_unknown_session(stub: pb_grpc.SeqPredStub) -> None:
    for call, req in ((stub.CloseSession, pb.CloseSessionRequest), (stub.GetSession, pb.GetSessionRequest)):
        with pytest.raises(grpc.RpcError) as e:
            call(req(session_id="gone"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert e.value.details().startswith("session_id: no live session 'gone'")


# ---------------------------------------------------------------------------------------------------------------
# operations


def test_health_reflection_and_metrics(server: Any, stub: pb_grpc.SeqPredStub) -> None:
    with grpc.insecure_channel(server.target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", "seqpred.v1.SeqPred"):
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=name)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        (resp,) = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in resp.list_services_response.service}
        assert {"seqpred.v1.SeqPred", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    stub.Predict(pb.StreamRequest(text="ab"))
    body = urllib.request.urlopen(f"http://localhost:{server.server.metrics_port}/metrics", timeout=5).read().decode()
    for name in (
        "seqpred_sessions_active",
        "seqpred_sessions_evicted_total",
        "seqpred_rejections_total",
        "seqpred_batch_size_bucket",
        "seqpred_step_latency_seconds_bucket",
        "seqpred_tokens_total",
        "seqpred_tokens_per_second",
        "seqpred_request_errors_total",
    ):
        assert name in body, name


def test_draining_server_is_not_serving_and_ends_streams() -> None:
    with running_server() as st_, grpc.insecure_channel(st_.target) as ch:
        stub = pb_grpc.SeqPredStub(ch)
        s = RawStream(stub)
        s.one(text="a")

        async def drain() -> None:
            await st_.server.health.enter_graceful_shutdown()
            st_.server.engine.draining = True

        st_.call(drain)
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        s.q.put(pb.StreamRequest(text="b"))
        with pytest.raises(grpc.RpcError) as e:
            next(s.call)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert status_message(e.value) == "server: shutting down; retry on another replica or after the restart"
