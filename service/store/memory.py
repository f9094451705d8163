"""The in-memory session store (:class:`MemoryStore`, behind :class:`~service.store.sessions.SessionStore`).

Memory is kept flat so that 100,000 idle sessions cost little more than their state: a session is one dict entry
(id -> slot) plus one row in a few NumPy arrays (position, created, last active, in-flight count), and its state
is one row of the runtime's :class:`~service.runtime.state_memory.StateMemory`. Free slots come back lowest first (a
heap), so live sessions stay packed at the bottom and the memory above the highest live slot can be given back.

A slot is zeroed when it is handed out, and a session removed while a step of it is still running keeps its slot
until that step has finished: no session ever sees another's state. All methods run on one thread (the server's
event loop); only state rows are touched by the runtime's worker.
"""

from __future__ import annotations

import heapq
from array import array

import numpy as np

from service.errors import CapacityExhausted, SessionNotFound
from service.runtime.state_memory import StateMemory
from service.store.sessions import SessionInfo, SessionStore, check_session_id, new_session_id

#: Shrink the packed region (and release its memory) only when at least this many slots above it are free.
RELEASE_MIN_SLOTS = 1024


class MemoryStore(SessionStore):
    """Sessions in this process; see the module docstring for the layout."""

    def __init__(self, memory: StateMemory, idle_timeout: float = 900.0, max_lifetime: float = 0.0) -> None:
        self.memory = memory
        self.capacity = memory.capacity
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        n = self.capacity
        self._slots: dict[str, int] = {}  # the anonymous principal's ids -> slots
        self._spaces: dict[str, dict[str, int]] = {"": self._slots}  # principal -> its ids -> slots
        self._n = 0  # live sessions, all principals
        self._ids: list[str | None] = []  # slot -> id, up to the high-water mark
        self._owner: list[str] = []  # slot -> principal (one shared string per principal)
        # per-slot fields in array.array (fast scalar access on the hot path) with NumPy views (vectorized sweeps)
        self._pos = array("q", bytes(8 * n))
        self._created = array("d", bytes(8 * n))
        self._last = array("d", bytes(8 * n))
        self._busy = array("i", bytes(4 * n))
        self._live = array("b", bytes(n))
        self._created_np = np.frombuffer(self._created, dtype=np.float64)
        self._last_np = np.frombuffer(self._last, dtype=np.float64)
        self._busy_np = np.frombuffer(self._busy, dtype=np.int32)
        self._live_np = np.frombuffer(self._live, dtype=np.int8)
        self._free: list[int] = []  # heap of free slots below the high-water mark
        self._doomed: set[int] = set()  # removed while busy: freed on the last release
        self._hw = 0
        self.created_total = 0
        self.freed_total = 0

    def __len__(self) -> int:
        return self._n

    def count(self, principal: str) -> int:
        space = self._spaces.get(principal)
        return 0 if space is None else len(space)

    @property
    def high_water(self) -> int:
        return self._hw

    def _allocate(self) -> int:
        if self._free:
            slot = heapq.heappop(self._free)
        elif self._hw < self.capacity:
            slot = self._hw
            self._hw += 1
            self._ids.append(None)
            self._owner.append("")
        else:
            raise CapacityExhausted(
                f"sessions: the server holds {self._n} sessions, its capacity of {self.capacity}; "
                "end or close sessions, or retry later"
            )
        self.memory.zero(slot)
        self.created_total += 1
        return slot

    def _free_slot(self, slot: int) -> None:
        self._ids[slot] = None
        self._owner[slot] = ""
        heapq.heappush(self._free, slot)
        self.freed_total += 1

    def create(self, session_id: str | None, now: float, principal: str = "") -> tuple[str, int]:
        space = self._spaces.get(principal)
        if session_id is None:
            session_id = new_session_id()
            while space is not None and session_id in space:  # 2^-128 per draw; for the proof, not the practice
                session_id = new_session_id()
        else:
            check_session_id(session_id)
            if space is not None and session_id in space:
                return session_id, self.reset(session_id, now, principal)
        if self._n >= self.capacity:
            raise CapacityExhausted(
                f"sessions: the server holds {self._n} sessions, its capacity of {self.capacity}; "
                "end or close sessions, or retry later"
            )
        slot = self._allocate()
        if space is None:
            space = self._spaces[principal] = {}
        space[session_id] = slot
        self._n += 1
        self._ids[slot] = session_id
        self._owner[slot] = principal
        self._pos[slot] = 0
        self._created[slot] = now
        self._last[slot] = now
        self._live[slot] = 1
        return session_id, slot

    def _slot(self, session_id: str, principal: str) -> int:
        space = self._spaces.get(principal)
        slot = None if space is None else space.get(session_id)
        if slot is None:
            check_session_id(session_id)
            raise SessionNotFound(
                f"session_id: no live session {session_id!r} (never created, closed, or evicted); "
                "send start=true to create it"
            )
        return slot

    def lookup(self, session_id: str, now: float, principal: str = "") -> int:
        slot = self._slot(session_id, principal)
        self._last[slot] = now
        return slot

    def reset(self, session_id: str, now: float, principal: str = "") -> int:
        slot = self._slot(session_id, principal)
        if self._busy[slot]:
            # a step of the old state is still queued or running: give the id a fresh slot, free the old one later
            new = self._allocate()
            self._retire(slot)
            self._ids[new] = session_id
            self._owner[new] = principal
            self._spaces[principal][session_id] = new
            slot = new
        else:
            self.memory.zero(slot)
        self._pos[slot] = 0
        self._created[slot] = now
        self._last[slot] = now
        self._live[slot] = 1
        return slot

    def _retire(self, slot: int) -> None:
        self._live[slot] = 0
        if self._busy[slot]:
            self._doomed.add(slot)
        else:
            self._free_slot(slot)

    def _forget(self, session_id: str, principal: str) -> None:
        space = self._spaces[principal]
        del space[session_id]
        self._n -= 1
        if not space and principal:
            del self._spaces[principal]

    def remove(self, session_id: str, principal: str = "") -> int:
        slot = self._slot(session_id, principal)
        self._forget(session_id, principal)
        pos = self._pos[slot]
        self._retire(slot)
        return pos

    def info(self, session_id: str, now: float, principal: str = "") -> SessionInfo:
        slot = self._slot(session_id, principal)
        created, last = self._created[slot], self._last[slot]
        left: float | None = None
        if self.idle_timeout > 0:
            left = self.idle_timeout - (now - last)
        if self.max_lifetime > 0:
            life_left = self.max_lifetime - (now - created)
            left = life_left if left is None else min(left, life_left)
        if left is not None:
            left = max(0.0, left)
        return SessionInfo(session_id, self._pos[slot], created, last, left, self._owner[slot])

    def position(self, slot: int) -> int:
        return self._pos[slot]

    def advance(self, slot: int, n: int) -> int:
        self._pos[slot] += n
        return self._pos[slot]

    def finish(self, slot: int, n: int) -> int:
        pos = self._pos[slot] + n
        self._pos[slot] = pos
        self.release(slot)
        return pos

    def acquire(self, slot: int) -> None:
        self._busy[slot] += 1

    def release(self, slot: int) -> None:
        self._busy[slot] -= 1
        if self._busy[slot] == 0 and slot in self._doomed:
            self._doomed.discard(slot)
            self._free_slot(slot)

    def is_live_slot(self, slot: int) -> bool:
        return bool(self._live[slot])

    def session_at(self, slot: int) -> tuple[str, str] | None:
        sid = self._ids[slot] if self._live[slot] else None
        return None if sid is None else (self._owner[slot], sid)

    def live_sessions(self) -> list[tuple[str, str, int, float]]:
        created = self._created
        return [(p, sid, slot, created[slot]) for p, space in self._spaces.items() for sid, slot in space.items()]

    def expired(self, now: float) -> list[tuple[str, str]]:
        hw = self._hw
        if hw == 0 or (self.idle_timeout <= 0 and self.max_lifetime <= 0):
            return []
        candidates = (self._live_np[:hw] != 0) & (self._busy_np[:hw] == 0)
        idle = np.zeros(hw, dtype=bool)
        old = np.zeros(hw, dtype=bool)
        if self.idle_timeout > 0:
            idle = self._last_np[:hw] <= now - self.idle_timeout
        if self.max_lifetime > 0:
            old = self._created_np[:hw] <= now - self.max_lifetime
        out: list[tuple[str, str]] = []
        for slot in np.flatnonzero(candidates & (idle | old)).tolist():
            sid = self._ids[slot]
            assert sid is not None
            owner, reason = self._owner[slot], "lifetime" if old[slot] else "idle"
            self._forget(sid, owner)
            self._retire(slot)
            out.append((sid, reason))
            if self.on_evict is not None:
                self.on_evict(owner, sid, reason)
        if out:
            self.compact()
        return out

    def compact(self) -> None:
        """Lower the high-water mark to just above the highest slot in use and release the memory above it."""
        hw = self._hw
        used = (self._live_np[:hw] != 0) | (self._busy_np[:hw] > 0)
        top = int(np.flatnonzero(used)[-1]) + 1 if used.any() else 0
        if hw - top < RELEASE_MIN_SLOTS and top > 0:
            return
        self._free = [s for s in self._free if s < top]
        heapq.heapify(self._free)
        del self._ids[top:]
        del self._owner[top:]
        self._hw = top
        self.memory.release(top)
