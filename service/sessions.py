"""Session stores: session ids -> slots of recurrent state, with idle timeout, maximum lifetime and capacity.

:class:`SessionStore` is the small interface the engine uses; :class:`MemoryStore` keeps everything in this
process (a durable local store and a Redis store can follow behind the same interface).

Memory is kept flat so that 100,000 idle sessions cost little more than their state: a session is one dict entry
(id -> slot) plus one row in a few NumPy arrays (position, created, last active, in-flight count), and its state
is one row of the runtime's :class:`~service.runtime.StateMemory`. Free slots come back lowest first (a heap),
so live sessions stay packed at the bottom and the memory above the highest live slot can be given back.

A slot is zeroed when it is handed out, and a session removed while a step of it is still running keeps its slot
until that step has finished: no session ever sees another's state. All methods run on one thread (the server's
event loop); only state rows are touched by the runtime's worker.
"""

from __future__ import annotations

import heapq
import secrets
from abc import ABC, abstractmethod
from array import array
from dataclasses import dataclass

import numpy as np

from service.errors import CapacityExhausted, SessionIdTooLong, SessionNotFound
from service.runtime import StateMemory

MAX_ID_CHARS = 128
#: Shrink the packed region (and release its memory) only when at least this many slots above it are free.
RELEASE_MIN_SLOTS = 1024


def new_session_id() -> str:
    """An id with 128 random bits (22 URL-safe characters)."""
    return secrets.token_urlsafe(16)


def check_session_id(session_id: str) -> None:
    if len(session_id) > MAX_ID_CHARS:
        raise SessionIdTooLong(
            f"session_id: {len(session_id)} characters, more than the limit of {MAX_ID_CHARS} "
            f"(got {session_id[:32]!r}...)"
        )


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of one session; times are ``time.monotonic()`` seconds, ``time_left`` None = never evicted."""

    session_id: str
    position: int
    created: float
    last_active: float
    time_left: float | None


class SessionStore(ABC):
    """Where sessions live. Slots index the state memory; ids are what clients see."""

    capacity: int
    memory: StateMemory

    @abstractmethod
    def __len__(self) -> int:
        """Live sessions."""

    @abstractmethod
    def create(self, session_id: str | None, now: float) -> tuple[str, int]:
        """A new zero-state session (a fresh random id when ``session_id`` is None): ``(id, slot)``.
        Raises CapacityExhausted when full; an id that is live already is reset instead."""

    @abstractmethod
    def lookup(self, session_id: str, now: float) -> int:
        """The slot of a live session, marking it active; raises SessionNotFound."""

    @abstractmethod
    def reset(self, session_id: str, now: float) -> int:
        """Zero a live session's state and position; returns its (possibly new) slot."""

    @abstractmethod
    def remove(self, session_id: str) -> int:
        """Free a live session; returns its last position. Raises SessionNotFound."""

    @abstractmethod
    def info(self, session_id: str, now: float) -> SessionInfo:
        """Describe a live session without marking it active; raises SessionNotFound."""

    @abstractmethod
    def position(self, slot: int) -> int:
        """Tokens consumed by the session in ``slot``."""

    @abstractmethod
    def advance(self, slot: int, n: int) -> int:
        """Add ``n`` consumed tokens; returns the new position."""

    @abstractmethod
    def finish(self, slot: int, n: int) -> int:
        """A step announced by :meth:`acquire` consumed ``n`` tokens and is done: advance, release, and return
        the new position."""

    @abstractmethod
    def acquire(self, slot: int) -> None:
        """A step of this slot is queued or running: the slot must not be freed or evicted until released."""

    @abstractmethod
    def release(self, slot: int) -> None:
        """The step announced by :meth:`acquire` is done."""

    @abstractmethod
    def expired(self, now: float) -> list[tuple[str, str]]:
        """Remove every idle or too old session that has nothing in flight: ``[(id, "idle"|"lifetime")]``."""


class MemoryStore(SessionStore):
    """Sessions in this process; see the module docstring for the layout."""

    def __init__(self, memory: StateMemory, idle_timeout: float = 900.0, max_lifetime: float = 0.0) -> None:
        self.memory = memory
        self.capacity = memory.capacity
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        n = self.capacity
        self._slots: dict[str, int] = {}
        self._ids: list[str | None] = []  # slot -> id, up to the high-water mark
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
        return len(self._slots)

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
        else:
            raise CapacityExhausted(
                f"sessions: the server holds {len(self._slots)} sessions, its capacity of {self.capacity}; "
                "end or close sessions, or retry later"
            )
        self.memory.zero(slot)
        self.created_total += 1
        return slot

    def _free_slot(self, slot: int) -> None:
        self._ids[slot] = None
        heapq.heappush(self._free, slot)
        self.freed_total += 1

    def create(self, session_id: str | None, now: float) -> tuple[str, int]:
        if session_id is None:
            session_id = new_session_id()
            while session_id in self._slots:  # 2^-128 per draw; the loop is for the proof, not the practice
                session_id = new_session_id()
        else:
            check_session_id(session_id)
            if session_id in self._slots:
                return session_id, self.reset(session_id, now)
        if len(self._slots) >= self.capacity:
            raise CapacityExhausted(
                f"sessions: the server holds {len(self._slots)} sessions, its capacity of {self.capacity}; "
                "end or close sessions, or retry later"
            )
        slot = self._allocate()
        self._slots[session_id] = slot
        self._ids[slot] = session_id
        self._pos[slot] = 0
        self._created[slot] = now
        self._last[slot] = now
        self._live[slot] = 1
        return session_id, slot

    def _slot(self, session_id: str) -> int:
        slot = self._slots.get(session_id)
        if slot is None:
            check_session_id(session_id)
            raise SessionNotFound(
                f"session_id: no live session {session_id!r} (never created, closed, or evicted); "
                "send start=true to create it"
            )
        return slot

    def lookup(self, session_id: str, now: float) -> int:
        slot = self._slot(session_id)
        self._last[slot] = now
        return slot

    def reset(self, session_id: str, now: float) -> int:
        slot = self._slot(session_id)
        if self._busy[slot]:
            # a step of the old state is still queued or running: give the id a fresh slot, free the old one later
            new = self._allocate()
            self._retire(slot)
            self._ids[new] = session_id
            self._slots[session_id] = new
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

    def remove(self, session_id: str) -> int:
        slot = self._slot(session_id)
        del self._slots[session_id]
        pos = self._pos[slot]
        self._retire(slot)
        return pos

    def info(self, session_id: str, now: float) -> SessionInfo:
        slot = self._slot(session_id)
        created, last = self._created[slot], self._last[slot]
        left: float | None = None
        if self.idle_timeout > 0:
            left = self.idle_timeout - (now - last)
        if self.max_lifetime > 0:
            life_left = self.max_lifetime - (now - created)
            left = life_left if left is None else min(left, life_left)
        if left is not None:
            left = max(0.0, left)
        return SessionInfo(session_id, self._pos[slot], created, last, left)

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
            del self._slots[sid]
            self._retire(slot)
            out.append((sid, "lifetime" if old[slot] else "idle"))
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
        self._hw = top
        self.memory.release(top)
