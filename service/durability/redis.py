"""Sessions shared by several replicas: the persistence hooks backed by Redis (``--store redis``).

Redis is the source of truth; each replica's in-memory :class:`~service.store.sessions.SessionStore` is a cache of the
sessions it serves. Per request that names a session, inside :meth:`RedisShared.scope` (which the engine holds
from session resolution to the last reply):

1. *one at a time*: requests on one session are serialized on this replica by a per-session lock;
2. *load or refresh*: a session not live here is loaded from Redis (state, position, creation time, version);
   one live here is checked against Redis (one small round trip, which also renews its TTL) and reloaded when
   another replica advanced it since;
3. *compute*: the engine runs the request on the local copy;
4. *write before replying*: every change (:meth:`on_advance`, creation, reset) is written with compare-and-set on
   the version this replica last saw; :meth:`durable` waits for it. When another replica wrote first the write is
   refused, nothing is stored, the request fails with ABORTED (:class:`~service.errors.SessionConflict`) and the
   local copy is reloaded by the next request. So two replicas never both advance a session from one version,
   and a reply is sent only once what it reports is in Redis: a session continues on another replica after this
   one dies, exactly where the client left it.

Writes of one session are issued in order, one at a time, coalesced (only the latest state is sent). ``end`` and
CloseSession delete the record; idle and lifetime expiry are Redis TTLs (the local sweep only drops cached copies).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from service.durability.hooks import Persistence, StateFn
from service.errors import ServiceError, SessionConflict, SessionNotFound, StoreUnavailable
from service.store.redis import Record, RedisSessions

if TYPE_CHECKING:
    from service.runtime.onnx_runtime import Runtime
    from service.settings import Settings
    from service.store.sessions import SessionStore

Key = tuple[str, str]  # (principal, session id)


@dataclass(slots=True)
class _Write:
    """The latest change not yet sent: ``state`` None = delete; ``fresh`` = unconditional (creation, reset)."""

    position: int
    state: list[np.ndarray] | None
    fresh: bool


class _Entry:
    """What this replica knows of one session beyond the local store."""

    __slots__ = ("created", "done", "error", "lock", "pending", "seq", "stale", "users", "version", "waiters", "writer")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # scopes holding or waiting for the lock
        self.version = 0  # the version in Redis this copy descends from (0 = none known)
        self.created = time.time()  # wall clock
        self.seq = 0  # changes reported
        self.done = 0  # changes settled (written, or failed)
        self.pending: _Write | None = None
        self.writer: asyncio.Task[None] | None = None
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.error: ServiceError | None = None  # a write of the current scope failed
        self.stale = False  # the local copy is not what Redis holds: reload before use


class RedisShared(Persistence):
    """Redis-backed persistence hooks; see the module docstring. Build with :meth:`from_settings`."""

    def __init__(self, sessions: RedisSessions, registry: CollectorRegistry | None = None) -> None:
        self.redis = sessions
        self._entries: dict[Key, _Entry] = {}
        self.loads = 0  # sessions loaded from Redis (first use here, or refreshed after another replica's write)
        self.conflicts = 0  # writes refused because another replica wrote first
        r = registry if registry is not None else CollectorRegistry()
        self._loads = Counter(
            "seqpred_shared_loads_total", "sessions loaded from the shared store (first use or stale copy)", registry=r
        )
        self._conflicts = Counter(
            "seqpred_shared_conflicts_total", "writes refused because another replica advanced the session", registry=r
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, runtime: Runtime, store: SessionStore, registry: CollectorRegistry | None = None
    ) -> RedisShared:
        mem = store.memory
        sessions = RedisSessions.from_url(
            settings.redis_url,
            model=runtime.bundle.manifest_sha256,
            widths=list(mem.widths),
            dtype=mem.dtype,
            idle_timeout=settings.idle_timeout,
            max_lifetime=settings.max_lifetime,
            timeout=settings.redis_timeout,
        )
        return cls(sessions, registry)

    # -- lifecycle --------------------------------------------------------------------------------------------

    def recover(self, store: SessionStore, runtime: Runtime) -> int:
        """Nothing to rebuild (sessions are loaded when first named); checks that Redis answers."""
        self.redis.ping_sync()
        return 0

    async def close(self) -> None:
        writers = [e.writer for e in self._entries.values() if e.writer is not None]
        if writers:
            await asyncio.gather(*writers, return_exceptions=True)
        await self.redis.aclose()

    # -- the request scope ------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def scope(self, store: SessionStore, principal: str, session_id: str, fresh: bool) -> AsyncIterator[None]:
        """Hold the session's lock; unless ``fresh`` (start), make the local copy current first."""
        key = (principal, session_id)
        e = self._entries.get(key)
        if e is None:
            e = self._entries[key] = _Entry()
        e.users += 1
        try:
            async with e.lock:
                e.error = None
                if not fresh:
                    await self._refresh(store, key, e)
                yield
        finally:
            e.users -= 1
            self._forget_if_unused(key, e)

    async def _refresh(self, store: SessionStore, key: Key, e: _Entry) -> None:
        principal, sid = key
        if e.writer is not None:  # a change of an earlier request (that failed before durable()) is in flight
            await asyncio.shield(e.writer)
            e.error = None
        try:
            store.info(sid, 0.0, principal)
            live = True
        except SessionNotFound:
            live = False
        known = e.version if live and not e.stale else 0
        rec = await self.redis.fetch(sid, principal, known)
        if isinstance(rec, Record):
            self._install(store, key, e, rec)
        elif rec is None and live:  # closed or expired in Redis: the local copy is gone too
            store.remove(sid, principal)
            e.version, e.stale = 0, False

    def _install(self, store: SessionStore, key: Key, e: _Entry, rec: Record) -> None:
        principal, sid = key
        now = time.monotonic()
        created = now - max(0.0, time.time() - rec.created)
        try:  # no step of it runs (the scope's lock), so a reset keeps the slot
            store.reset(sid, created, principal)
        except SessionNotFound:
            store.create(sid, created, principal)
        slot = store.lookup(sid, now, principal)  # idle clock from now, lifetime from its creation
        store.advance(slot, rec.position)
        store.memory.write(slot, rec.state)
        e.version, e.created, e.stale = rec.version, rec.created, False
        self.loads += 1
        self._loads.inc()

    def _forget_if_unused(self, key: Key, e: _Entry) -> None:
        unused = e.users == 0 and e.writer is None and e.pending is None and e.version == 0 and not e.stale
        if unused and self._entries.get(key) is e:
            del self._entries[key]

    # -- changes ----------------------------------------------------------------------------------------------

    def _entry(self, key: Key) -> _Entry:
        e = self._entries.get(key)
        if e is None:
            e = self._entries[key] = _Entry()
        return e

    def _change(self, key: Key, e: _Entry, w: _Write) -> None:
        e.pending = w
        e.seq += 1
        if e.writer is None:
            e.writer = asyncio.get_running_loop().create_task(self._write(key, e))

    def _fresh(self, principal: str, session_id: str) -> None:
        key = (principal, session_id)
        e = self._entry(key)
        e.created, e.stale, e.error = time.time(), False, None
        mem = self.redis
        zero = [np.zeros(w, dtype=mem.dtype) for w in mem.widths]
        self._change(key, e, _Write(0, zero, fresh=True))

    def on_create(self, principal: str, session_id: str) -> None:
        self._fresh(principal, session_id)

    def on_reset(self, principal: str, session_id: str) -> None:
        self._fresh(principal, session_id)

    def on_advance(
        self, principal: str, session_id: str, tokens: np.ndarray | int, position: int, state: StateFn
    ) -> None:
        key = (principal, session_id)
        e = self._entry(key)
        if e.stale:  # a write of this lineage failed: nothing after it may be stored
            return
        fresh = e.pending is not None and e.pending.fresh and e.pending.state is not None
        self._change(key, e, _Write(position, state(), fresh))

    def on_close(self, principal: str, session_id: str, reason: str) -> None:
        key = (principal, session_id)
        if reason in ("idle", "lifetime"):  # this replica's cached copy expired; Redis keeps its own TTL
            e = self._entries.get(key)
            if e is not None:
                e.version, e.stale = 0, False
                self._forget_if_unused(key, e)
            return
        e = self._entry(key)
        e.stale = False
        self._change(key, e, _Write(0, None, fresh=False))

    async def _write(self, key: Key, e: _Entry) -> None:
        principal, sid = key
        try:
            while e.pending is not None:
                w, e.pending = e.pending, None
                upto = e.seq
                try:
                    if w.state is None:
                        await self.redis.delete(sid, principal)
                        e.version = 0
                    else:
                        expected = None if w.fresh else e.version
                        e.version = await self.redis.put(sid, expected, w.position, e.created, w.state, principal)
                except ServiceError as err:
                    self._failed(e, err)
                    continue
                except Exception as err:  # a bug or an unexpected client error: the request must not hang
                    self._failed(e, StoreUnavailable(f"store: write of session {sid!r} failed: {err!r}"))
                    continue
                self._settle(e, upto, None)
        finally:
            e.writer = None
            self._forget_if_unused(key, e)

    def _failed(self, e: _Entry, err: ServiceError) -> None:
        """Nothing of this change (nor of any later one of this lineage) is stored; reload before the next use."""
        if isinstance(err, SessionConflict):
            self.conflicts += 1
            self._conflicts.inc()
        e.error, e.stale, e.pending = err, True, None
        self._settle(e, e.seq, err)

    @staticmethod
    def _settle(e: _Entry, upto: int, err: ServiceError | None) -> None:
        e.done = max(e.done, upto)
        keep = []
        for seq, fut in e.waiters:
            if fut.done():
                continue
            if err is not None:
                fut.set_exception(err)
            elif seq <= upto:
                fut.set_result(None)
            else:
                keep.append((seq, fut))
        e.waiters = keep

    def durable(self) -> Awaitable[None] | None:
        """Wait for every session's writes (errors are reported to the requests, not here)."""
        writers = [e.writer for e in self._entries.values() if e.writer is not None]
        return _all_done(writers) if writers else None

    def session_durable(self, principal: str, session_id: str) -> Awaitable[None] | None:
        """Wait for this session's changes; fails with the error of a write of the current request that failed
        (SessionConflict, SessionNotFound, StoreUnavailable)."""
        e = self._entries.get((principal, session_id))
        if e is None:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if e.error is not None:
            fut.set_exception(e.error)
            return fut
        if e.done >= e.seq:
            return None
        e.waiters.append((e.seq, fut))
        return fut


async def _all_done(writers: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*(asyncio.shield(w) for w in writers), return_exceptions=True)
