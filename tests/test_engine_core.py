"""The transport-free core, driven directly (no gRPC): requests, generation, isolation under interleaving."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from service_helpers import oracle, settings, tiny_model

from model.network import forward, log_softmax, zero_state
from service.engine.core import Engine
from service.engine.requests import GenerateSpec, Request
from service.errors import SessionNotFound
from service.server import SeqpredServer


def run(fn: Callable[[Engine], Awaitable[Any]], **kw: Any) -> Any:
    async def main() -> Any:
        srv = SeqpredServer(settings(**kw))
        try:
            return await fn(srv.engine)
        finally:
            srv.batcher.close()

    return asyncio.run(main())


def test_request_and_score_match_the_oracle() -> None:
    o = oracle()
    ids = o.encode("def add(a, b):")

    async def body(e: Engine) -> None:
        r = await e.request(Request(tokens=ids[:5], score=True, top_k=3))
        assert r.position == 5 and r.top_ids is not None and r.top_ids == o.top_k(ids[:5], 3)
        r2 = await e.request(Request(session_id=r.session_id, tokens=ids[5:6], score=True))
        r3 = await e.request(Request(session_id=r.session_id, tokens=ids[6:], score=True))
        got = np.concatenate([r.token_logprobs, r2.token_logprobs, r3.token_logprobs])  # type: ignore[list-item]
        np.testing.assert_allclose(got, o.token_logprobs(ids), atol=3e-5)
        (sc,) = await e.score([(ids, "")])
        np.testing.assert_allclose(sc.token_logprobs, got, atol=3e-5)

    run(body)


@pytest.mark.parametrize("cell", ["fgr", "clockwork"])
def test_a_state_wider_or_narrower_than_h_survives_between_requests(cell: str) -> None:
    """fgr keeps [c; i; o; f] (4H) per layer, clockwork its step counter (width 1): chunked requests (through
    the sequence and the step graph) score like one request and like NumPy, and losing that extra state at the
    chunk boundary would have changed the scores (so the test can tell)."""
    o = oracle(cell, 2)
    ids = o.encode("class Point:\n    def __init__")

    async def body(e: Engine) -> tuple[np.ndarray, np.ndarray]:
        r1 = await e.request(Request(tokens=ids[:5], score=True))
        r2 = await e.request(Request(session_id=r1.session_id, tokens=ids[5:6], score=True))
        r3 = await e.request(Request(session_id=r1.session_id, tokens=ids[6:], score=True))
        whole = await e.request(Request(tokens=ids, score=True))
        parts = [r1.token_logprobs, r2.token_logprobs, r3.token_logprobs]
        return np.concatenate(parts), np.asarray(whole.token_logprobs)  # type: ignore[arg-type]

    chunked, whole = run(body, model=tiny_model(cell, 2))
    np.testing.assert_allclose(chunked, whole, atol=3e-5)
    np.testing.assert_allclose(chunked, o.token_logprobs(ids), atol=3e-5)
    # the NumPy model with the extra state lost after 5 tokens: fgr's previous gates or clockwork's counter zeroed
    H = o.cfg.hidden
    first = forward(o.cfg, o.params, np.array([ids[:5]]), zero_state(o.cfg, 1))
    lost = [(h, c.copy()) for h, c in first.state]  # type: ignore[union-attr]
    for _, c in lost:
        c[:, H if cell == "fgr" else 0 :] = 0.0
    rest = log_softmax(forward(o.cfg, o.params, np.array([ids[5:]]), lost).out[:, :, 0], axis=0)
    wrong = rest[ids[6:], np.arange(len(ids) - 6)]
    assert float(np.abs(wrong - chunked[5:]).max()) > 10 * 3e-5  # measured: fgr 2.4e-3, clockwork 0.52


def test_a_lone_client_runs_without_waiting_for_a_batch() -> None:
    async def body(e: Engine) -> int:
        e.batcher.open_rpcs = 1
        r = await e.request(Request(text="def", top_k=2))
        for ch in "ine":
            r = await e.request(Request(session_id=r.session_id, text=ch, top_k=2))
        return e.batcher.batches

    assert run(body) == 4


def test_a_session_ended_during_generation_never_touches_the_slot_again() -> None:
    o = oracle()

    async def body(e: Engine) -> None:
        gen = e.generate(Request(text="class ", generate=GenerateSpec(max_tokens=50, temperature=0.0)))
        first = await gen.__anext__()
        sid = first.session_id
        e.close(sid)  # from "another stream", between two generated tokens
        other = await e.request(Request(text="def", top_k=2))  # likely gets the freed slot
        with pytest.raises(SessionNotFound) as err:
            await gen.__anext__()
        assert str(err.value).startswith(f"session_id: no live session {sid!r}")
        again = await e.request(Request(session_id=other.session_id, top_k=2))
        assert again.position == 3 and again.top_ids is not None
        assert again.top_ids == o.top_k(o.encode("def"), 2)

    run(body)


def test_interleaved_sessions_on_one_loop() -> None:
    o = oracle()
    texts = ["def add(a, b):", "class Point:", "for i in range(10):", "    return a + b"]

    async def feed(e: Engine, text: str) -> list[list[int]]:
        sid, tops = "", []
        for ch in text:
            r = await e.request(Request(session_id=sid, text=ch, top_k=3))
            sid = r.session_id
            assert r.top_ids is not None
            tops.append(r.top_ids)
        return tops

    async def body(e: Engine) -> None:
        e.batcher.open_rpcs = len(texts)  # what the servicer counts: four clients at once
        results = await asyncio.gather(*(feed(e, t) for t in texts))
        for t, tops in zip(texts, results, strict=True):
            ids = o.encode(t)
            assert tops == [o.top_k(ids[: n + 1], 3) for n in range(len(ids))]
        assert e.batcher.batches < sum(len(t) for t in texts)  # steps of different sessions shared batches

    run(body)
