"""Session stores: session ids -> slots of recurrent state, with idle timeout, maximum lifetime and capacity.

:class:`SessionStore` is the small interface the engine uses; :class:`~service.store.memory.MemoryStore` keeps
everything in this process (a durable local store and a Redis store can follow behind the same interface).

Sessions belong to a *principal* (the authenticated caller; ``""`` when authentication is off). Ids are scoped
by principal: each principal has its own id space, so another principal naming an id finds no session
(SessionNotFound, the same answer as for an id never created: existence is not leaked), and a client-chosen id
used by two principals names two sessions. :meth:`SessionStore.count` gives a principal's live sessions (quotas).
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import SessionIdTooLong
from service.runtime.state_memory import StateMemory

MAX_ID_CHARS = 128


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
    principal: str = ""


class SessionStore(ABC):
    """Where sessions live. Slots index the state memory; ids are what clients see."""

    capacity: int
    memory: StateMemory
    #: Called by :meth:`expired` with ``(principal, id, reason)`` for each session it removes (persistence).
    on_evict: Callable[[str, str, str], None] | None = None

    @abstractmethod
    def __len__(self) -> int:
        """Live sessions."""

    @abstractmethod
    def create(self, session_id: str | None, now: float, principal: str = "") -> tuple[str, int]:
        """A new zero-state session of ``principal`` (a fresh random id when ``session_id`` is None):
        ``(id, slot)``. Raises CapacityExhausted when full; an id that is live already (for this principal) is
        reset instead."""

    @abstractmethod
    def lookup(self, session_id: str, now: float, principal: str = "") -> int:
        """The slot of a live session of ``principal``, marking it active; raises SessionNotFound (also when
        the id is live but belongs to another principal)."""

    @abstractmethod
    def reset(self, session_id: str, now: float, principal: str = "") -> int:
        """Zero a live session's state and position; returns its (possibly new) slot."""

    @abstractmethod
    def remove(self, session_id: str, principal: str = "") -> int:
        """Free a live session; returns its last position. Raises SessionNotFound."""

    @abstractmethod
    def info(self, session_id: str, now: float, principal: str = "") -> SessionInfo:
        """Describe a live session without marking it active; raises SessionNotFound."""

    @abstractmethod
    def count(self, principal: str) -> int:
        """Live sessions of ``principal``."""

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

    @abstractmethod
    def session_at(self, slot: int) -> tuple[str, str] | None:
        """``(principal, id)`` of the live session in ``slot``; None when the slot is free, or its session was
        removed or reset (given a fresh slot) while a step of it was in flight."""

    @abstractmethod
    def live_sessions(self) -> list[tuple[str, str, int, float]]:
        """Every live session: ``(principal, id, slot, created)`` (``created`` as in :class:`SessionInfo`)."""
