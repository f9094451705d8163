"""service/store/redis.py: versioned session records against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import pytest
from redis_helpers import RedisServer, free_port, redis_server

from service.errors import SessionConflict, SessionNotFound, StoreMismatch, StoreUnavailable, status_name
from service.store.redis import RedisSessions

MODEL = "ab" * 32
WIDTHS = [4, 4, 6]

# -- against redis-server ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as s:
        yield s


Run = Callable[[Callable[[RedisSessions], Awaitable[Any]]], Any]


@pytest.fixture
def run(server: RedisServer) -> Run:
    """``run(fn, **store_kw)``: ``await fn(store)`` on a store over a flushed database."""

    def go(fn: Callable[[RedisSessions], Awaitable[Any]], **kw: Any) -> Any:
        async def main() -> Any:
            store = RedisSessions.from_url(server.url, model=MODEL, widths=WIDTHS, **kw)
            try:
                await store.client.flushdb()
                return await fn(store)
            finally:
                await store.aclose()

        return asyncio.run(main())

    return go


def state(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(w).astype(np.float32) for w in WIDTHS]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


def test_put_then_fetch_round_trips_and_versions_count_writes(run: Run) -> None:
    async def body(s: RedisSessions) -> None:
        t0 = time.time()
        assert await s.fetch("a") is None
        assert await s.put("a", None, 0, t0, state(0)) == 1
        assert await s.put("a", 1, 5, t0, state(1)) == 2
        rec = await s.fetch("a")
        assert rec is not None and not isinstance(rec, int)
        assert (rec.session_id, rec.principal, rec.version, rec.position, rec.model) == ("a", "", 2, 5, MODEL)
        assert rec.created == t0
        assert same(rec.state, state(1))
        assert await s.fetch("a", known_version=2) == 2  # still current: no record sent
        got = await s.get("a")
        assert got is not None and got.version == 2 and same(got.state, state(1))
        info = await s.info("a")
        assert info is not None and (info.version, info.position, info.created) == (2, 5, t0)
        assert info.ttl is not None and 0 < info.ttl <= 900
        # an unconditional write (a reset) bumps the version too
        assert await s.put("a", None, 0, t0 + 1, state(2)) == 3

    run(body)


def test_stale_write_is_refused_and_changes_nothing(run: Run) -> None:
    async def body(s: RedisSessions) -> None:
        t0 = time.time()
        await s.put("a", None, 0, t0, state(0))
        await s.put("a", 1, 1, t0, state(1))
        with pytest.raises(SessionConflict, match=r"'a'.*now version 2.*from version 1") as e:
            await s.put("a", 1, 7, t0, state(7))
        assert status_name(e.value) == "ABORTED"
        rec = await s.get("a")
        assert rec is not None and (rec.version, rec.position) == (2, 1) and same(rec.state, state(1))
        # a session closed meanwhile: NOT_FOUND, and it is not brought back
        await s.delete("a")
        with pytest.raises(SessionNotFound, match="closed or expired"):
            await s.put("a", 2, 2, t0, state(2))
        assert await s.get("a") is None

    run(body)


@contextlib.contextmanager
def paused(server: RedisServer, seconds: float | None = None) -> Iterator[None]:
    """redis-server stopped (SIGSTOP) inside the block, or for ``seconds`` from its start; resumed in any case."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    timer = threading.Timer(seconds, os.kill, (server.proc.pid, signal.SIGCONT)) if seconds is not None else None
    try:
        if timer is not None:
            timer.start()
        yield
    finally:
        if timer is not None:
            timer.join()
        os.kill(server.proc.pid, signal.SIGCONT)


def test_a_write_reported_failed_never_lands_when_redis_resumes(server: RedisServer, run: Run) -> None:
    """Redis stopped past the client's timeout: the write is reported failed (UNAVAILABLE) while it still sits in
    the stopped server's input buffer; when Redis resumes and runs it, it is past its deadline and changes
    nothing, so a retry applies the request exactly once. The same for a delete."""

    async def body(s: RedisSessions) -> None:
        t0 = time.time()
        assert await s.put("a", None, 3, t0, state(0)) == 1
        with paused(server):
            with pytest.raises(StoreUnavailable, match="unreachable during write") as e:
                await s.put("a", 1, 7, t0, state(1))
            assert status_name(e.value) == "UNAVAILABLE"
            with pytest.raises(StoreUnavailable, match="unreachable during delete"):
                await s.delete("a")
        await asyncio.sleep(0.3)  # Redis runs what was queued while it was stopped
        rec = await s.get("a")
        assert rec is not None and (rec.version, rec.position) == (1, 3) and same(rec.state, state(0))
        assert await s.put("a", 1, 7, t0, state(1)) == 2  # the retry, once

    run(body, timeout=0.5)


def test_a_write_redis_runs_after_its_deadline_is_refused_while_the_client_still_waits(
    server: RedisServer, run: Run
) -> None:
    async def body(s: RedisSessions) -> None:
        t0 = time.time()
        await s.put("a", None, 3, t0, state(0))
        late = r"ran the write of session 'a' more than 1 s after it was sent"
        # stopped for longer than the write window (1 s), shorter than the timeout (2 s)
        with paused(server, seconds=1.5), pytest.raises(StoreUnavailable, match=late):
            await s.put("a", 1, 7, t0, state(1))
        rec = await s.get("a")
        assert rec is not None and (rec.version, rec.position) == (1, 3)

    run(body, timeout=2.0)


def test_deadlines_use_redis_clock_whatever_the_offset(run: Run) -> None:
    """The deadline is written in Redis's clock, from an offset read on replies: a wrong offset (a clock an hour
    off) is corrected by the next reply's reading, and a write after it is accepted."""

    async def body(s: RedisSessions) -> None:
        t0 = time.time()
        await s.put("a", None, 0, t0, state(0))
        s._offset -= 3600.0  # type: ignore[operator]  # a wrong reading: Redis's clock an hour earlier
        with pytest.raises(StoreUnavailable, match="more than 5 s after it was sent"):
            await s.put("a", 1, 1, t0, state(1))
        assert await s.put("a", 1, 1, t0, state(1)) == 2

    run(body)


def test_concurrent_compare_and_set_lets_exactly_one_writer_win(server: RedisServer) -> None:
    """Eight clients (separate connections) all try to advance version 1 at once: one wins, seven are refused."""

    async def main() -> tuple[list[Any], Any]:
        stores = [RedisSessions.from_url(server.url, model=MODEL, widths=WIDTHS) for _ in range(8)]
        try:
            await stores[0].client.flushdb()
            await stores[0].put("x", None, 0, time.time(), state(0))
            results = await asyncio.gather(
                *(s.put("x", 1, i + 1, time.time(), state(i + 1)) for i, s in enumerate(stores)),
                return_exceptions=True,
            )
            return results, await stores[0].get("x")
        finally:
            for s in stores:
                await s.aclose()

    results, rec = asyncio.run(main())
    wins = [i for i, r in enumerate(results) if r == 2]
    assert len(wins) == 1
    assert all(isinstance(r, SessionConflict) for i, r in enumerate(results) if i != wins[0])
    assert rec is not None and rec.version == 2 and rec.position == wins[0] + 1 and same(rec.state, state(wins[0] + 1))


def test_idle_ttl_evicts_and_a_fetch_renews_it(run: Run) -> None:
    async def body(s: RedisSessions) -> None:
        await s.put("a", None, 0, time.time(), state(0))
        await s.put("b", None, 0, time.time(), state(0))
        ttl = await s.client.pttl(s.key("a"))
        assert 0 < ttl <= 400
        for _ in range(4):  # "a" stays in use for 0.6 s, longer than its idle timeout
            await asyncio.sleep(0.15)
            assert await s.fetch("a", known_version=1) == 1
        assert await s.fetch("b") is None  # idle 0.6 s: gone
        await asyncio.sleep(0.6)
        assert await s.fetch("a") is None
        assert await s.ids() == []

    run(body, idle_timeout=0.4)


def test_maximum_lifetime_caps_the_ttl_and_ends_old_sessions(run: Run) -> None:
    async def body(s: RedisSessions) -> None:
        now = time.time()
        await s.put("a", None, 3, now - 8, state(0), now=now)  # created 8 s ago, lifetime 10 s
        ttl = await s.client.pttl(s.key("a"))
        assert 1000 < ttl <= 2000  # capped by the lifetime, not the 60 s idle timeout
        with pytest.raises(SessionNotFound):
            await s.put("a", 1, 4, now - 8, state(1), now=now + 3)  # past its lifetime: deleted, not written
        assert await s.get("a") is None

    run(body, idle_timeout=60.0, max_lifetime=10.0)


def test_no_timeouts_means_no_expiry(run: Run) -> None:
    async def body(s: RedisSessions) -> None:
        await s.put("a", None, 0, time.time(), state(0))
        assert await s.client.pttl(s.key("a")) == -1
        info = await s.info("a")
        assert info is not None and info.ttl is None

    run(body, idle_timeout=0.0)


def test_principals_have_their_own_id_spaces(run: Run) -> None:
    async def body(s: RedisSessions) -> None:
        t0 = time.time()
        odd = "team/a:b%c*"
        await s.put("same", None, 1, t0, state(1), principal="alice")
        await s.put("same", None, 2, t0, state(2), principal=odd)
        assert await s.fetch("same") is None  # the anonymous principal has no such session
        a, b = await s.get("same", "alice"), await s.get("same", odd)
        assert a is not None and b is not None
        assert (a.principal, a.position, b.principal, b.position) == ("alice", 1, odd, 2)
        assert sorted(await s.ids()) == sorted([("alice", "same"), (odd, "same")])
        assert await s.delete("same", "alice")
        assert not await s.delete("same", "alice")
        assert await s.ids() == [(odd, "same")]

    run(body)


def test_a_record_of_another_model_or_layout_is_refused(server: RedisServer) -> None:
    async def main() -> None:
        a = RedisSessions.from_url(server.url, model=MODEL, widths=WIDTHS)
        other_model = RedisSessions.from_url(server.url, model="cd" * 32, widths=WIDTHS)
        other_layout = RedisSessions.from_url(server.url, model=MODEL, widths=[4, 4])
        try:
            await a.client.flushdb()
            await a.put("a", None, 1, time.time(), state(1))
            with pytest.raises(StoreMismatch, match=r"'a' belongs to model sha256 abab.*this server runs cdcd"):
                await other_model.fetch("a")
            with pytest.raises(StoreMismatch, match=r"widths \[4, 4, 6\].*widths \[4, 4\]"):
                await other_layout.fetch("a")
            await a.client.hset(a.key("a"), "pos", "many")
            with pytest.raises(StoreMismatch, match="malformed"):
                await a.fetch("a")
        finally:
            for s in (a, other_model, other_layout):
                await s.aclose()

    asyncio.run(main())


def test_an_unreachable_server_is_unavailable_naming_the_url() -> None:
    pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{free_port()}/0"

    async def main() -> None:
        s = RedisSessions.from_url(url, model=MODEL, widths=WIDTHS)
        try:
            with pytest.raises(StoreUnavailable, match=f"Redis at {url} unreachable during PING") as e:
                await s.ping()
            assert status_name(e.value) == "UNAVAILABLE"
        finally:
            await s.aclose()

    asyncio.run(main())


def test_a_bad_url_is_a_clear_error() -> None:
    pytest.importorskip("redis")
    with pytest.raises(StoreUnavailable, match="--redis-url: cannot use 'http://x'"):
        RedisSessions.from_url("http://x", model=MODEL, widths=WIDTHS)


def test_a_missing_redis_package_names_the_flag_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # import redis.asyncio -> ImportError
    with pytest.raises(
        StoreUnavailable, match=r"--store redis: the 'redis' package is not installed.*seqpred\[redis\]"
    ):
        RedisSessions.from_url("redis://localhost:6379/0", model=MODEL, widths=WIDTHS)
