"""Sessions in Redis: versioned records, compare-and-set writes, idle expiry by Redis TTLs.

The shared store that lets several server replicas serve the same sessions. Each session is one Redis hash at
``{prefix}{principal}/{session_id}`` (the principal percent-encoded; ids are scoped by principal, so the pair is
the key; the anonymous principal is ``''``):

=============  =====================================================================================
field          value
=============  =====================================================================================
``v``          version: 1 when created, +1 on every write (decimal)
``pos``        tokens consumed
``created``    creation or last reset, wall clock (``time.time()`` seconds)
``model``      sha256 of the model manifest the state belongs to (another model refuses to load it)
``principal``  who created the session ('' = anonymous)
``state``      the recurrent state: :func:`~service.store.codec.encode_state` (header + raw LE values, no pickle)
=============  =====================================================================================

Writes go through one Lua script (atomic on the server): with an expected version they succeed only if the stored
version is still that one (compare-and-set), so two replicas never both advance one session from the same
version; the loser learns it (:class:`~service.errors.SessionConflict`, ABORTED) and nothing it computed is
stored. Every write and every fetch sets the key's TTL to the idle timeout, capped by what is left of the maximum
lifetime, so Redis itself evicts idle sessions.

A write reported failed never lands later. A client that times out waiting for Redis (``timeout``, ``--redis-
timeout``) reports the write failed, but the command may still sit in the stopped or overloaded server's input
buffer and run when it resumes: a retry would then apply the same tokens twice. So every write (and delete)
carries a *deadline* in Redis's own clock, half the timeout after it was sent; the script reads ``TIME`` and
refuses to run past it (``late``: nothing is written). Redis's clock is read against this process's monotonic
clock on every write's reply (and by ``TIME`` before the first write and after a minute without one): the offset
used is a lower bound (the reply's transit time is counted against the write), so a write can only run while this
process still waits for it, never after it gave up; clock skew between hosts does not matter. Left open: a write
that Redis applied whose *reply* was lost or delayed beyond the timeout (Redis stopped between running the script
and answering) is reported failed although stored; see docs/reliability.md.

All calls are coroutines (``redis.asyncio``); the ``redis`` package is imported only when a store is built, and a
missing package or an unreachable server raises :class:`~service.errors.StoreUnavailable` naming ``--redis-url``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import numpy as np

from service.errors import SessionConflict, SessionNotFound, StoreMismatch, StoreUnavailable
from service.store.codec import decode_state, encode_state
from service.store.redis_scripts import CONFLICT, DELETE, FETCH, GONE, LATE, PUT

if TYPE_CHECKING:
    import redis.asyncio

#: Prefix of every session key; a deployment shares it between its replicas.
DEFAULT_PREFIX = "seqpred:session:"

# -- records -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One session as stored: version, position, creation time (wall clock), model sha256, state vectors."""

    session_id: str
    principal: str
    version: int
    position: int
    created: float
    model: str
    state: list[np.ndarray]


@dataclass(frozen=True)
class RecordInfo:
    """What :meth:`RedisSessions.info` reports: no state; ``ttl`` seconds left (None = no expiry)."""

    version: int
    position: int
    created: float
    ttl: float | None


class RedisSessions:
    """Versioned session records in one Redis database; see the module docstring.

    ``idle_timeout``/``max_lifetime`` in seconds (0 = never); ``model`` the manifest sha256 every record is
    tagged with; ``widths``/``dtype`` the runtime's state layout, checked on every load; ``timeout`` the seconds
    the client waits for an answer (the ``client``'s socket timeout): a write must run within half of it.
    """

    #: seconds after which Redis's clock is read again before a write (a write's reply also reads it)
    RECALIBRATE_S = 60.0

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        model: str,
        widths: Sequence[int],
        dtype: Any = np.float32,
        idle_timeout: float = 900.0,
        max_lifetime: float = 0.0,
        prefix: str = DEFAULT_PREFIX,
        url: str = "",
        timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.model = model
        self.widths = list(widths)
        self.dtype = np.dtype(dtype)
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.prefix = prefix
        self.url = url
        self._put = client.register_script(PUT)
        self._del = client.register_script(DELETE)
        self._fetch = client.register_script(FETCH)
        self.timeout = timeout
        self.write_window = timeout / 2  # a write Redis runs later than this after it was sent is refused
        self._offset: float | None = None  # lower bound of Redis's clock minus time.monotonic(), seconds
        self._calibrated = 0.0  # time.monotonic() of the last reading

    @classmethod
    def from_url(cls, url: str, timeout: float = 10.0, **kw: Any) -> RedisSessions:
        """A store on ``redis.asyncio.Redis.from_url(url)`` waiting ``timeout`` seconds for each answer; no
        connection is made until the first call."""
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise StoreUnavailable(
                "--store redis: the 'redis' package is not installed; pip install 'seqpred[redis]' (or redis>=5)"
            ) from None
        try:
            client = aioredis.Redis.from_url(url, socket_connect_timeout=min(5.0, timeout), socket_timeout=timeout)
        except ValueError as e:
            raise StoreUnavailable(f"--redis-url: cannot use {url!r}: {e}") from None
        return cls(client, url=url, timeout=timeout, **kw)

    def _ttl_args(self, now: float) -> list[str]:
        return [_ms(self.idle_timeout), _ms(self.max_lifetime), str(math.floor(now * 1000))]

    def key(self, session_id: str, principal: str = "") -> str:
        return f"{self.prefix}{quote(principal, safe='')}/{session_id}"

    async def _call(self, what: str, coro: Any) -> Any:
        from redis.exceptions import ConnectionError, TimeoutError

        try:
            return await coro
        except (ConnectionError, TimeoutError, OSError) as e:
            raise StoreUnavailable(
                f"store: Redis at {self.url or '--redis-url'} unreachable during {what}: {e}"
            ) from None

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the server answers."""
        await self._call("PING", self.client.ping())

    def ping_sync(self) -> None:
        """PING with a blocking client (start-up, outside the event loop); raises StoreUnavailable naming the URL."""
        import redis
        from redis.exceptions import ConnectionError, TimeoutError

        try:
            client = redis.Redis.from_url(self.url, socket_connect_timeout=5, socket_timeout=5)
            try:
                client.ping()
            finally:
                client.close()
        except (ConnectionError, TimeoutError, OSError, ValueError) as e:
            raise StoreUnavailable(f"--redis-url: no Redis answers at {self.url}: {e}") from None

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- reads ------------------------------------------------------------------------------------------------

    def _record(self, session_id: str, principal: str, flat: list[bytes]) -> Record:
        h = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        try:
            model = h["model"].decode()
            if model != self.model:
                raise StoreMismatch(
                    f"session_id: session {session_id!r} belongs to model sha256 {model[:12]}..., this server runs "
                    f"{self.model[:12]}...; serve the same model on every replica"
                )
            state = decode_state(h["state"], self.widths, self.dtype)
            return Record(session_id, principal, int(h["v"]), int(h["pos"]), float(h["created"]), model, state)
        except (KeyError, ValueError, UnicodeDecodeError) as e:
            raise StoreMismatch(f"session_id: the stored record of {session_id!r} is malformed ({e!r})") from None

    async def fetch(self, session_id: str, principal: str = "", known_version: int = 0) -> Record | int | None:
        """The record, or ``known_version`` itself when that is still the stored version, or None when there is no
        such session (never created, closed, or expired). Renews the TTL of a live session (a request is
        activity)."""
        args = [str(known_version), *self._ttl_args(time.time())]
        out = await self._call("fetch", self._fetch(keys=[self.key(session_id, principal)], args=args))
        if out == 0:
            return None
        if out == 1:
            return known_version
        return self._record(session_id, principal, out)

    async def get(self, session_id: str, principal: str = "") -> Record | None:
        """The record without touching its TTL, or None."""
        flat = await self._call("HGETALL", self.client.hgetall(self.key(session_id, principal)))
        if not flat:
            return None
        return self._record(session_id, principal, [x for kv in flat.items() for x in kv])

    async def info(self, session_id: str, principal: str = "") -> RecordInfo | None:
        """Version, position, creation time and time left, without the state and without touching the TTL."""
        key = self.key(session_id, principal)
        async with self.client.pipeline(transaction=True) as p:
            p.hmget(key, ["v", "pos", "created"])
            p.pttl(key)
            (v, pos, created), pttl = await self._call("info", p.execute())
        if v is None:
            return None
        return RecordInfo(int(v), int(pos), float(created), pttl / 1000 if pttl >= 0 else None)

    async def ids(self, count: int = 1000) -> list[tuple[str, str]]:
        """Every stored session as ``(principal, session_id)`` (SCAN; for operations and tests, not requests)."""
        out: list[tuple[str, str]] = []
        n = len(self.prefix)
        async for k in self.client.scan_iter(match=_glob_escape(self.prefix) + "*", count=count):
            principal, _, sid = k.decode()[n:].partition("/")
            out.append((unquote(principal), sid))
        return out

    # -- writes -----------------------------------------------------------------------------------------------

    async def _deadline(self) -> str:
        """The deadline of a write sent now, in Redis's clock (ms): :attr:`write_window` from now."""
        if self._offset is None or time.monotonic() - self._calibrated > self.RECALIBRATE_S:
            sec, usec = await self._call("TIME", self.client.time())
            self._clock(sec * 1000 + usec // 1000)
        assert self._offset is not None
        return str(math.floor((time.monotonic() + self.write_window + self._offset) * 1000))

    def _clock(self, redis_ms: int) -> None:
        """Redis's clock read ``redis_ms`` no later than now: a lower bound of the offset (transit counted against
        it, so deadlines err early)."""
        now = time.monotonic()
        self._offset, self._calibrated = redis_ms / 1000 - now, now

    async def _write(self, what: str, session_id: str, script: Any, keys: list[str], args: list[Any]) -> int:
        """Run a write script with a deadline; returns its value; raises on GONE (SessionNotFound is left to the
        caller: it returns -1), CONFLICT (-(stored version)) or LATE (StoreUnavailable)."""
        deadline = await self._deadline()
        status, value, now = (int(x) for x in await self._call(what, script(keys=keys, args=[deadline, *args])))
        self._clock(now)
        if status == LATE:
            raise StoreUnavailable(
                f"store: Redis at {self.url or '--redis-url'} ran the {what} of session {session_id!r} more than "
                f"{self.write_window:g} s after it was sent (half of --redis-timeout); nothing was stored; retry it"
            )
        if status == GONE:
            return 0
        return -value if status == CONFLICT else value

    async def put(
        self,
        session_id: str,
        expected: int | None,
        position: int,
        created: float,
        state: Sequence[np.ndarray],
        principal: str = "",
        now: float | None = None,
    ) -> int:
        """Store a session and return its new version. ``expected`` None writes unconditionally (creation, reset);
        an int writes only if that is still the stored version: otherwise SessionConflict (another replica
        advanced or reset it) or SessionNotFound (closed or expired meanwhile), and nothing is written. A write
        that Redis would run later than :attr:`write_window` after it was sent is refused (StoreUnavailable).

        ``created`` and ``now`` are wall-clock seconds; a session past its maximum lifetime is deleted."""
        now = time.time() if now is None else now
        blob = encode_state(state, self.dtype)
        fields: list[Any] = ["pos", position, "model", self.model, "principal", principal, "state", blob]
        args = [*self._ttl_args(now), "" if expected is None else str(expected), repr(float(created)), *fields]
        v = await self._write("write", session_id, self._put, [self.key(session_id, principal)], args)
        if v == 0:
            raise SessionNotFound(
                f"session_id: session {session_id!r} was closed or expired while this request ran; its result was "
                "not stored; send start=true to create it again"
            )
        if v < 0:
            raise SessionConflict(
                f"session_id: session {session_id!r} was changed by another request (now version {-v}, this one "
                f"started from version {expected}); nothing of this request was stored; retry it"
            )
        return v

    async def delete(self, session_id: str, principal: str = "") -> bool:
        """Remove a session; True if it existed. Refused like a late :meth:`put` (StoreUnavailable)."""
        return bool(await self._write("delete", session_id, self._del, [self.key(session_id, principal)], []))


def _ms(seconds: float) -> str:
    return str(math.ceil(seconds * 1000)) if seconds > 0 else "0"


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)
