"""The Lua scripts of the Redis session store (:mod:`service.store.redis`), each atomic on the server: the
compare-and-set write, the delete and the fetch, and the pieces they share (TTLs from the idle timeout and the
maximum lifetime; the write deadline in Redis's own clock)."""

from __future__ import annotations

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

#: Redis's clock in ms as ``now``; the script returns ``{LATE, 0, now}`` when it runs past ARGV[1], the deadline (ms).
_DEADLINE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[1]) then return {3, 0, now} end
"""
#: What a write script reports first: written, the key is gone, another version is stored, past the deadline.
OK, GONE, CONFLICT, LATE = 0, 1, 2, 3

#: Atomic write. KEYS[1] the session; ARGV[1] the deadline (see _DEADLINE), ARGV[2..4] as in _TTL, ARGV[5] the
#: expected version ('' = any), ARGV[6] the new ``created``, then field/value pairs. Returns ``{status, value,
#: now}``: ``{OK, new version}``, ``{GONE, 0}`` (the key is gone, or its lifetime is over), ``{CONFLICT, stored
#: version}`` or ``{LATE, 0}``.
PUT = (
    _TTL
    + _DEADLINE
    + """
local cur = redis.call('HGET', KEYS[1], 'v')
if ARGV[5] ~= '' then
  if not cur then return {1, 0, now} end
  if cur ~= ARGV[5] then return {2, tonumber(cur), now} end
end
local v = (tonumber(cur) or 0) + 1
redis.call('HSET', KEYS[1], 'v', v, 'created', ARGV[6], unpack(ARGV, 7))
if not expire(ARGV[6]) then return {1, 0, now} end
return {0, v, now}
"""
)

#: Delete before the deadline. KEYS[1]; ARGV[1] the deadline. Returns ``{OK, keys deleted, now}`` or ``{LATE, 0}``.
DELETE = (
    _DEADLINE
    + """
return {0, redis.call('DEL', KEYS[1]), now}
"""
)

#: Fetch unless current. KEYS[1]; ARGV[1] the known version, ARGV[2..4] as in _TTL. Returns 0 (missing or past its
#: lifetime), 1 (still the known version) or the whole hash; a live key's TTL is renewed (a request is activity).
FETCH = (
    _TTL
    + """
local cur = redis.call('HGET', KEYS[1], 'v')
if not cur then return 0 end
if not expire(redis.call('HGET', KEYS[1], 'created')) then return 0 end
if cur == ARGV[1] then return 1 end
return redis.call('HGETALL', KEYS[1])
"""
)
