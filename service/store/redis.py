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


#: Sets the TTL of KEYS[1] from ARGV[2] idle ms (0 = none), ARGV[3] lifetime ms (0 = none), ARGV[4] now ms, and
#: the record's ``created``; deletes the key and returns false when its lifetime is over.
_TTL = """
local function expire(created)
  local ttl = tonumber(ARGV[2])
  local life = tonumber(ARGV[3])
  if life > 0 then
    local left = math.floor(tonumber(created) * 1000) + life - tonumber(ARGV[4])
    if left <= 0 then
      redis.call('DEL', KEYS[1])
      return false
    end
    if ttl == 0 or left < ttl then ttl = left end
  end
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
  return true
end
"""

#: Atomic write. KEYS[1] the session; ARGV[1] the expected version ('' = any), ARGV[2..4] as in _TTL, ARGV[5] the
#: new ``created``, then field/value pairs. Returns the new version, 0 when the key is gone (or its lifetime is
#: over), or -(stored version) when that is not the expected one.
_PUT = (
    _TTL
    + """
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] ~= '' then
  if not cur then return 0 end
  if cur ~= ARGV[1] then return -tonumber(cur) end
end
local v = (tonumber(cur) or 0) + 1
redis.call('HSET', KEYS[1], 'v', v, 'created', ARGV[5], unpack(ARGV, 6))
if not expire(ARGV[5]) then return 0 end
return v
"""
)

#: Fetch unless current. KEYS[1]; ARGV[1] the known version, ARGV[2..4] as in _TTL. Returns 0 (missing or past its
#: lifetime), 1 (still the known version) or the whole hash; a live key's TTL is renewed (a request is activity).
_FETCH = (
    _TTL
    + """
local cur = redis.call('HGET', KEYS[1], 'v')
if not cur then return 0 end
if not expire(redis.call('HGET', KEYS[1], 'created')) then return 0 end
if cur == ARGV[1] then return 1 end
return redis.call('HGETALL', KEYS[1])
"""
)


class RedisSessions:
    """Versioned session records in one Redis database; see the module docstring.

    ``idle_timeout``/``max_lifetime`` in seconds (0 = never); ``model`` the manifest sha256 every record is
    tagged with; ``widths``/``dtype`` the runtime's state layout, checked on every load.
    """

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
    ) -> None:
        self.client = client
        self.model = model
        self.widths = list(widths)
        self.dtype = np.dtype(dtype)
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.prefix = prefix
        self.url = url
        self._put = client.register_script(_PUT)
        self._fetch = client.register_script(_FETCH)

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> RedisSessions:
        """A store on ``redis.asyncio.Redis.from_url(url)``; no connection is made until the first call."""
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise StoreUnavailable(
                "--store redis: the 'redis' package is not installed; pip install 'seqpred[redis]' (or redis>=5)"
            ) from None
        try:
            client = aioredis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        except ValueError as e:
            raise StoreUnavailable(f"--redis-url: cannot use {url!r}: {e}") from None
        return cls(client, url=url, **kw)

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
        advanced or reset it) or SessionNotFound (closed or expired meanwhile), and nothing is written.

        ``created`` and ``now`` are wall-clock seconds; a session past its maximum lifetime is deleted."""
        now = time.time() if now is None else now
        blob = encode_state(state, self.dtype)
        fields: list[Any] = ["pos", position, "model", self.model, "principal", principal, "state", blob]
        args = ["" if expected is None else str(expected), *self._ttl_args(now), repr(float(created)), *fields]
        v = int(await self._call("write", self._put(keys=[self.key(session_id, principal)], args=args)))
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
        """Remove a session; True if it existed."""
        return bool(await self._call("DEL", self.client.delete(self.key(session_id, principal))))


def _ms(seconds: float) -> str:
    return str(math.ceil(seconds * 1000)) if seconds > 0 else "0"


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)
