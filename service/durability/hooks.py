"""The persistence hooks: what the engine tells a durable (or shared) session store, and what it awaits.

The engine keeps sessions in memory (:class:`~service.store.sessions.SessionStore`) and, when the server is built with
a :class:`Persistence`, reports every change of a session to it, on the event loop, in the order the changes
happen in memory (a session's changes are never reordered; changes of different sessions are interleaved as they
happened). A session is named by ``(principal, session_id)``: ids are scoped by principal (``""`` = anonymous).

* ``on_create`` - a new zero-state session; ``on_reset`` - a live one zeroed (``start`` on a live id); the engine
  calls them through ``on_start``, which also says how many tokens the same request feeds next (a durable store
  makes start and tokens one change);
* ``on_advance`` - a batch consumed ``tokens`` for a live session, whose position is now ``position``;
  ``state()`` returns host copies of its state tensors *now* (call it inside the hook, or never: it reads the
  state memory, so backends that only log tokens pay nothing);
* ``atomic()`` - an async context the engine holds around a unary request that makes several changes of one
  session (a ``Predict`` with ``generate``: its prompt, then one step per generated token): inside it the engine
  reports them with ``on_advance_part`` instead of ``on_advance``, and ``on_commit`` once the request is done
  (also when it failed or was cancelled half-way: what ran stays applied in memory). A durable store makes them
  one change: after a crash, all or none. By default: plain ``on_advance``, no-ops;
* ``on_close`` - the session is gone: ``reason`` is ``end`` (a request's ``end``), ``close`` (CloseSession),
  ``idle`` or ``lifetime`` (evicted);
* ``durable()`` - flush-before-reply: None when every change reported so far is as durable as the backend
  promises, else an awaitable that completes when it is. The engine awaits it before it sends a reply, so in
  ``sync`` mode a client never sees a reply whose change could be lost;
* ``scope(store, principal, session_id, fresh)`` - an async context the engine holds around each request that
  names a session, and ``session_durable(principal, session_id)`` - ``durable()`` for that request's reply, which
  may fail it: both for a store shared by several replicas (:class:`service.durability.redis.RedisShared`), no-ops
  (plain ``durable()``) by default;
* ``recover(store, runtime)`` - at start, before serving: rebuild every live session in ``store`` (its state
  memory), returning how many; ``start()`` - background work on the running loop; ``close()`` - graceful
  shutdown (everything durable, e.g. a final snapshot).

Implementations: :class:`service.durability.local.LocalLog` (an append-only log plus snapshots in a directory) and
:class:`service.durability.redis.RedisShared` (sessions in Redis, shared by replicas).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.runtime.onnx_runtime import Runtime
    from service.store.sessions import SessionStore

#: Host copies of one session's state tensors (h0, c0, h1, ...; widths as the runtime's state memory has them).
StateFn = Callable[[], list[np.ndarray]]

CLOSE_REASONS = ("end", "close", "idle", "lifetime")
NO_SCOPE: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()


class Persistence(ABC):
    """Hooks the engine calls so that sessions outlive the process (or are shared); see the module docstring."""

    @abstractmethod
    def on_create(self, principal: str, session_id: str) -> None:
        """A new session with the zero state at position 0."""

    @abstractmethod
    def on_reset(self, principal: str, session_id: str) -> None:
        """A live session was zeroed (position 0, lifetime restarted)."""

    def on_start(self, principal: str, session_id: str, reset: bool, then: int) -> None:
        """A request created (``reset`` False) or reset (True) a session and will feed it ``then`` tokens next (0:
        none). A durable store should make the start and those tokens one change: if the tokens are never
        reported (a crash in between), the start must not count either, so that a request in flight is applied
        entirely or not at all. The engine calls ``on_start(principal, id, True, 0)`` when those tokens were not
        consumed after all (the batch failed). By default: :meth:`on_reset` or :meth:`on_create`."""
        (self.on_reset if reset else self.on_create)(principal, session_id)

    @abstractmethod
    def on_advance(
        self, principal: str, session_id: str, tokens: np.ndarray | int, position: int, state: StateFn
    ) -> None:
        """A live session consumed ``tokens`` (one id, or an int64 array ``[n]``); ``position`` is its new one."""

    def on_advance_part(
        self, principal: str, session_id: str, tokens: np.ndarray | int, position: int, state: StateFn
    ) -> None:
        """:meth:`on_advance` for a change made inside :meth:`atomic`: it counts only with the request's
        :meth:`on_commit` (or a later change of the session). By default the same as :meth:`on_advance`."""
        self.on_advance(principal, session_id, tokens, position, state)

    def on_commit(self, principal: str, session_id: str) -> None:  # noqa: B027 - optional
        """The unary request inside :meth:`atomic` is done: its changes of the session count."""

    def atomic(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Held by the engine around a unary request with several changes (see the module docstring); entering
        may wait (a snapshot in progress). A no-op by default."""
        return NO_SCOPE

    @abstractmethod
    def on_close(self, principal: str, session_id: str, reason: str) -> None:
        """The session is gone (``reason`` one of :data:`CLOSE_REASONS`); it must never come back."""

    @abstractmethod
    def durable(self) -> Awaitable[None] | None:
        """None when every change reported so far is durable, else an awaitable completing when it is."""

    @abstractmethod
    def recover(self, store: SessionStore, runtime: Runtime) -> int:
        """Rebuild the live sessions into ``store`` before serving; returns how many were restored."""

    def scope(
        self, store: SessionStore, principal: str, session_id: str, fresh: bool
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Held by the engine around a request that names a session, from resolving it to the last reply (and
        around CloseSession and GetSession). ``fresh``: the request creates or resets it (``start``). A shared
        store serializes a session's requests here and loads or refreshes the session on entry; by default a
        no-op."""
        return NO_SCOPE

    def session_durable(self, principal: str, session_id: str) -> Awaitable[None] | None:
        """Like :meth:`durable`, for one session's reply; may raise (or the awaitable may) a ServiceError that fails
        that request instead (a shared store: SessionConflict when another replica wrote first). By default
        :meth:`durable`."""
        return self.durable()

    def start(self) -> None:  # noqa: B027 - optional: background work on the running loop
        """Start background work (writer threads, snapshot timers) on the running event loop."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Graceful shutdown: make everything durable and stop background work."""
