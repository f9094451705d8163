"""The in-memory session store: ids, capacity, reset, removal, deferred frees, eviction, memory release."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from service.errors import CapacityExhausted, SessionIdTooLong, SessionNotFound
from service.runtime.state_memory import HostStateMemory
from service.store.memory import RELEASE_MIN_SLOTS, MemoryStore
from service.store.sessions import MAX_ID_CHARS, new_session_id


def store(capacity: int = 8, idle: float = 10.0, life: float = 0.0) -> MemoryStore:
    return MemoryStore(HostStateMemory(capacity, K=2, H=4), idle_timeout=idle, max_lifetime=life)


def test_server_ids_have_128_random_bits() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 22 for i in ids)  # 16 bytes, URL-safe base64


def test_create_lookup_remove() -> None:
    s = store()
    sid, slot = s.create(None, now=0.0)
    assert len(s) == 1 and s.lookup(sid, 1.0) == slot
    s.advance(slot, 5)
    assert s.remove(sid) == 5
    assert len(s) == 0
    with pytest.raises(SessionNotFound) as e:
        s.lookup(sid, 2.0)
    assert str(e.value) == (
        f"session_id: no live session {sid!r} (never created, closed, or evicted); send start=true to create it"
    )


def test_client_ids() -> None:
    s = store()
    sid, _ = s.create("mine", now=0.0)
    assert sid == "mine"
    s.create("x" * MAX_ID_CHARS, now=0.0)
    with pytest.raises(SessionIdTooLong) as e:
        s.create("y" * 129, now=0.0)
    assert str(e.value).startswith("session_id: 129 characters, more than the limit of 128")


def test_capacity() -> None:
    s = store(capacity=2)
    s.create(None, 0.0)
    sid, _ = s.create(None, 0.0)
    with pytest.raises(CapacityExhausted) as e:
        s.create(None, 0.0)
    assert str(e.value) == (
        "sessions: the server holds 2 sessions, its capacity of 2; end or close sessions, or retry later"
    )
    s.remove(sid)
    s.create(None, 0.0)  # room again


def test_reused_slot_starts_from_zero() -> None:
    s = store(capacity=1)
    sid, slot = s.create(None, 0.0)
    s.memory.write(slot, [np.ones(4, np.float32), np.full(4, 2.0, np.float32)])
    s.remove(sid)
    _, slot2 = s.create(None, 0.0)
    assert slot2 == slot
    assert all((v == 0).all() for v in s.memory.read(slot2))


def test_reset_zeroes_state_and_position() -> None:
    s = store()
    _, slot = s.create("a", 0.0)
    s.memory.write(slot, [np.ones(4, np.float32)] * 2)
    s.advance(slot, 3)
    sid2, slot2 = s.create("a", 5.0)  # start on a live id resets it
    assert (sid2, slot2) == ("a", slot)
    assert s.position(slot) == 0
    assert all((v == 0).all() for v in s.memory.read(slot))
    assert s.info("a", 5.0).created == 5.0


def test_reset_while_busy_moves_to_a_fresh_slot() -> None:
    s = store()
    _, slot = s.create("a", 0.0)
    s.memory.write(slot, [np.ones(4, np.float32)] * 2)
    s.acquire(slot)  # a step of the old state is in flight
    new = s.reset("a", 1.0)
    assert new != slot and s.lookup("a", 1.0) == new
    assert all((v == 0).all() for v in s.memory.read(new))
    freed = s.freed_total
    s.release(slot)  # the old slot is freed only now
    assert s.freed_total == freed + 1


def test_removal_while_busy_defers_the_free() -> None:
    s = store(capacity=1)
    sid, slot = s.create(None, 0.0)
    s.acquire(slot)
    s.remove(sid)
    with pytest.raises(CapacityExhausted):
        s.create(None, 0.0)  # the slot is still in use by the running step
    s.release(slot)
    s.create(None, 0.0)
    assert s.created_total == 2 and s.freed_total == 1


def test_idle_and_lifetime_eviction() -> None:
    s = store(idle=10.0, life=100.0)
    for sid in ("a", "b", "c"):
        s.create(sid, 0.0)
    s.lookup("b", 8.0)
    s.acquire(s.lookup("c", 0.0))  # busy sessions are never evicted
    assert s.expired(9.0) == []
    assert s.expired(10.0) == [("a", "idle")]
    assert s.info("b", 10.0).time_left == pytest.approx(8.0)
    for t in range(15, 101, 5):
        s.lookup("b", float(t))
    assert s.expired(100.0) == [("b", "lifetime")]
    assert len(s) == 1  # c, busy


def test_no_timeouts_means_no_eviction() -> None:
    s = store(idle=0.0, life=0.0)
    s.create(None, 0.0)
    assert s.expired(1e12) == [] and s.info(next(iter(s._slots)), 1e12).time_left is None


def test_mass_eviction_releases_memory_above_the_live_sessions() -> None:
    n = 3 * RELEASE_MIN_SLOTS
    s = store(capacity=n, idle=1.0)
    for _ in range(n):
        _, slot = s.create(None, 0.0)
        s.memory.write(slot, [np.ones(4, np.float32)] * 2)
    s.lookup(s._ids[5] or "", 0.5)  # slot 5 stays active
    evicted = s.expired(1.0)
    assert len(evicted) == n - 1 and len(s) == 1
    assert s.high_water == 6
    mem = s.memory
    assert isinstance(mem, HostStateMemory)
    row_bytes = mem.widths[0] * mem.dtype.itemsize
    first_whole_page_row = -(-6 * row_bytes // mmap.PAGESIZE) * mmap.PAGESIZE // row_bytes
    for plane in mem.planes:  # two planes [n, 4], back to back in one mapping
        assert (plane[first_whole_page_row:] == 0).all()  # released pages read back as zeros
        assert (plane[5] == 1).all()
    for _ in range(3):  # new sessions fill the lowest slots first
        _, slot = s.create(None, 2.0)
        assert slot < 6 or slot == s.high_water - 1


def test_ids_are_scoped_by_principal() -> None:
    s = store()
    sid, a = s.create(None, 0.0, principal="alice")
    assert s.info(sid, 0.0, "alice").principal == "alice" and s.count("alice") == 1 and s.count("bob") == 0
    for call in (lambda: s.lookup(sid, 1.0), lambda: s.lookup(sid, 1.0, "bob"), lambda: s.remove(sid, "bob")):
        with pytest.raises(SessionNotFound) as e:
            call()
        assert str(e.value).startswith(f"session_id: no live session {sid!r} (never created")
    # the same client-chosen id under two principals: two sessions, two slots
    _, b = s.create(sid, 1.0, principal="bob")
    assert b != a and len(s) == 2 and s.lookup(sid, 2.0, "alice") == a and s.lookup(sid, 2.0, "bob") == b
    s.advance(a, 3)
    assert s.create(sid, 3.0, "alice") == (sid, a) and s.position(a) == 0  # start=true on a live id resets it
    assert s.remove(sid, "bob") == 0 and s.count("bob") == 0 and s.info(sid, 4.0, "alice").position == 0
    s.acquire(a)
    assert s.reset(sid, 5.0, "alice") != a  # busy: a fresh slot, still alice's
    assert s.info(sid, 5.0, "alice").principal == "alice"


def test_eviction_and_capacity_count_every_principal() -> None:
    s = store(capacity=3, idle=10.0)
    s.create("x", 0.0, "alice")
    s.create("x", 0.0, "bob")
    s.create("x", 5.0)
    with pytest.raises(CapacityExhausted, match="holds 3 sessions, its capacity of 3"):
        s.create(None, 5.0, "carol")
    assert sorted(s.expired(12.0)) == [("x", "idle"), ("x", "idle")]
    assert len(s) == 1 and s.count("alice") == s.count("bob") == 0 and s.count("") == 1
    assert s.create(None, 12.0, "carol")[0] != "x"


def test_session_at_live_sessions_and_the_eviction_hook() -> None:
    s = store(idle=10.0)
    evicted: list[tuple[str, str, str]] = []
    s.on_evict = lambda principal, sid, reason: evicted.append((principal, sid, reason))
    _, a = s.create("a", 0.0, "alice")
    _, b = s.create("b", 5.0)
    assert s.session_at(a) == ("alice", "a") and s.session_at(b) == ("", "b")
    assert sorted(s.live_sessions()) == [("", "b", b, 5.0), ("alice", "a", a, 0.0)]
    s.acquire(b)
    assert s.reset("b", 6.0) != b  # reset while a step runs: a fresh slot; the old one names nobody any more
    assert s.session_at(b) is None
    s.release(b)
    s.expired(10.0)
    assert evicted == [("alice", "a", "idle")] and s.session_at(a) is None
    assert [x[:2] for x in s.live_sessions()] == [("", "b")]
