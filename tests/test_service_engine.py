"""The transport-free core, driven directly (no gRPC): requests, generation, isolation under interleaving."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from service_helpers import oracle, settings

from service.engine import Engine, GenerateSpec, Request
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
