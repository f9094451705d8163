"""service/durability/redis.py: the hooks driven by hand (as the engine drives them) against a real redis-server.

Two ``RedisShared`` over two local stores play two replicas; the end-to-end check with two server processes is
tests/test_store_redis_replicas.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from redis_helpers import RedisServer, redis_server

from service.durability.redis import RedisShared
from service.errors import SessionConflict, SessionNotFound
from service.runtime.state_memory import HostStateMemory
from service.store.memory import MemoryStore
from service.store.redis import RedisSessions

WIDTHS = [3, 5]
MODEL = "0f" * 32


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as s:
        yield s


class Replica:
    """A local store and its RedisShared, as one server process holds them."""

    def __init__(self, url: str, idle: float = 60.0) -> None:
        self.store = MemoryStore(HostStateMemory(8, WIDTHS), idle_timeout=idle)
        self.registry = CollectorRegistry()
        self.shared = RedisShared(
            RedisSessions.from_url(url, model=MODEL, widths=WIDTHS, idle_timeout=idle), self.registry
        )

    def state(self, sid: str) -> list[np.ndarray]:
        return self.store.memory.read(self.store.lookup(sid, time.monotonic()))

    def advance(self, sid: str, seed: int, n: int = 1) -> int:
        """What a batch does: new state in the slot, position + n, then the on_advance hook."""
        slot = self.store.lookup(sid, time.monotonic())
        rng = np.random.default_rng(seed)
        self.store.memory.write(slot, [rng.standard_normal(w).astype(np.float32) for w in WIDTHS])
        pos = self.store.advance(slot, n)
        self.shared.on_advance("", sid, seed, pos, lambda: self.store.memory.read(slot))
        return pos

    async def durable(self, sid: str) -> None:
        w = self.shared.session_durable("", sid)
        if w is not None:
            await w


def run(server: RedisServer, body: Callable[[Replica, Replica], Awaitable[Any]], idle: float = 60.0) -> Any:
    async def main() -> Any:
        a, b = Replica(server.url, idle), Replica(server.url, idle)
        await a.shared.redis.client.flushdb()
        try:
            return await body(a, b)
        finally:
            await a.shared.close()
            await b.shared.close()

    return asyncio.run(main())


def same(x: list[np.ndarray], y: list[np.ndarray]) -> bool:
    return all(u.tobytes() == v.tobytes() for u, v in zip(x, y, strict=True))


def test_a_session_written_on_one_replica_is_loaded_on_the_other(server: RedisServer) -> None:
    async def body(a: Replica, b: Replica) -> None:
        async with a.shared.scope(a.store, "", "s", True):
            a.store.create("s", time.monotonic())
            a.shared.on_create("", "s")
            a.advance("s", 1, n=4)
            await a.durable("s")
        async with b.shared.scope(b.store, "", "s", False):
            slot = b.store.lookup("s", time.monotonic())
            assert b.store.position(slot) == 4
            assert same(b.state("s"), a.state("s"))
            b.advance("s", 2)
            await b.durable("s")
        # back on A: its copy is stale; entering the scope reloads it
        async with a.shared.scope(a.store, "", "s", False):
            assert a.store.position(a.store.lookup("s", time.monotonic())) == 5
            assert same(a.state("s"), b.state("s"))
        assert (a.shared.loads, b.shared.loads) == (1, 1)
        rec = await a.shared.redis.get("s")
        assert rec is not None and (rec.version, rec.position) == (2, 5)  # A's creation and first step: one write

    run(server, body)


def test_changes_are_coalesced_and_durable_waits_for_the_latest(server: RedisServer) -> None:
    async def body(a: Replica, b: Replica) -> None:
        async with a.shared.scope(a.store, "", "s", True):
            a.store.create("s", time.monotonic())
            a.shared.on_create("", "s")
            for i in range(5):
                a.advance("s", 10 + i)
            await a.durable("s")
            assert a.shared.session_durable("", "s") is None  # nothing left to wait for
        rec = await a.shared.redis.get("s")
        assert rec is not None and rec.position == 5 and same(rec.state, a.state("s"))
        assert rec.version <= 6  # one write per change at most; usually two (the first, then the rest at once)

    run(server, body)


def test_the_loser_of_a_race_gets_aborted_and_stores_nothing(server: RedisServer) -> None:
    async def body(a: Replica, b: Replica) -> None:
        async with a.shared.scope(a.store, "", "s", True):
            a.store.create("s", time.monotonic())
            a.shared.on_create("", "s")
            a.advance("s", 1)
            await a.durable("s")
        async with b.shared.scope(b.store, "", "s", False):
            pass  # B now holds version 2 as well
        # both advance from version 2; A writes first
        async with a.shared.scope(a.store, "", "s", False), b.shared.scope(b.store, "", "s", False):
            a.advance("s", 2)
            await a.durable("s")
            b.advance("s", 3)
            with pytest.raises(SessionConflict, match="changed by another request"):
                await b.durable("s")
        rec = await a.shared.redis.get("s")
        assert rec is not None and rec.position == 2 and same(rec.state, a.state("s"))
        assert b.shared.conflicts == 1
        assert b.registry.get_sample_value("seqpred_shared_conflicts_total") == 1.0  # the Prometheus counter
        assert a.registry.get_sample_value("seqpred_shared_conflicts_total") == 0.0
        loads_before = b.registry.get_sample_value("seqpred_shared_loads_total") or 0.0
        # B's next request reloads A's state: its own lost step is gone
        async with b.shared.scope(b.store, "", "s", False):
            assert same(b.state("s"), a.state("s"))
            assert b.store.position(b.store.lookup("s", time.monotonic())) == 2
        assert b.registry.get_sample_value("seqpred_shared_loads_total") == loads_before + 1

    run(server, body)


def test_close_deletes_but_a_local_idle_eviction_does_not(server: RedisServer) -> None:
    async def body(a: Replica, b: Replica) -> None:
        for sid in ("x", "y"):
            async with a.shared.scope(a.store, "", sid, True):
                a.store.create(sid, time.monotonic())
                a.shared.on_create("", sid)
                await a.durable(sid)
        a.store.remove("x")
        a.shared.on_close("", "x", "idle")  # the local sweep: only the cached copy goes
        a.store.remove("y")
        a.shared.on_close("", "y", "close")
        await a.durable("y")
        assert sorted(await a.shared.redis.ids()) == [("", "x")]
        async with b.shared.scope(b.store, "", "y", False):
            with pytest.raises(SessionNotFound):
                b.store.lookup("y", time.monotonic())
        async with a.shared.scope(a.store, "", "x", False):  # reloaded from Redis
            assert a.store.lookup("x", time.monotonic()) >= 0

    run(server, body)


def test_a_session_expired_in_redis_is_dropped_from_the_cache(server: RedisServer) -> None:
    async def body(a: Replica, b: Replica) -> None:
        async with a.shared.scope(a.store, "", "s", True):
            a.store.create("s", time.monotonic())
            a.shared.on_create("", "s")
            await a.durable("s")
        await asyncio.sleep(0.5)
        async with a.shared.scope(a.store, "", "s", False):
            with pytest.raises(SessionNotFound):
                a.store.lookup("s", time.monotonic())

    run(server, body, idle=0.3)
