"""The engine's session handling: resolving a request's session (create, reset, look up, quota), ending it, and
the hooks that report session changes to a :class:`~service.durability.hooks.Persistence`."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from service.durability.hooks import NO_SCOPE, Persistence
from service.engine.requests import Request
from service.errors import (
    CapacityExhausted,
    NothingToPredictFrom,
    QuotaExhausted,
    ServiceError,
    SessionNotFound,
)
from service.metrics import Metrics
from service.settings import Settings
from service.store.sessions import SessionStore


class EngineSessions:
    """The engine's session and persistence methods (mixed into :class:`~service.engine.core.Engine`, which sets the
    attributes)."""

    settings: Settings
    store: SessionStore
    metrics: Metrics | None
    persistence: Persistence | None

    # -- persistence ------------------------------------------------------------------------------------------

    def _journal(self, slot: int, tokens: Any, position: int, held: bool = False) -> None:
        """The batcher booked tokens for ``slot``: report them if its session is still live (not reset or
        removed while the step ran: those tokens went to a state nobody will see again). ``held``: a job of a
        unary request inside ``Persistence.atomic``."""
        who = self.store.session_at(slot)
        if who is not None and self.persistence is not None:
            mem = self.store.memory
            report = self.persistence.on_advance_part if held else self.persistence.on_advance
            report(who[0], who[1], tokens, position, lambda: mem.read(slot))

    def _commit(self, principal: str, sid: str) -> None:
        """The unary request inside ``Persistence.atomic`` is done with session ``sid``."""
        if self.persistence is not None:
            self.persistence.on_commit(principal, sid)

    def _start_failed(self, r: Request, sid: str, inputs: np.ndarray | int | None) -> None:
        """The tokens of a request that created or reset its session were not consumed (the batch failed): report
        the start alone, so that it counts without them (see ``Persistence.on_start``)."""
        if self.persistence is not None and inputs is not None and (r.start or not r.session_id):
            self.persistence.on_start(r.principal, sid, True, 0)

    async def durable(self) -> None:
        """Return once every change made so far is durable (at once without persistence or in periodic mode)."""
        if self.persistence is not None:
            w = self.persistence.durable()
            if w is not None:
                await w

    def _scope(self, r: Request) -> contextlib.AbstractAsyncContextManager[None]:
        """The persistence's scope around a request naming a session (a shared store serializes the session's
        requests on this replica and loads or refreshes it on entry); a no-op otherwise."""
        if self.persistence is None or not r.session_id:
            return NO_SCOPE
        return self.persistence.scope(self.store, r.principal, r.session_id, r.start)

    async def _durable_for(self, principal: str, sid: str) -> None:
        """Before a reply: this session's changes are durable; a shared store may fail the request instead."""
        assert self.persistence is not None
        try:
            w = self.persistence.session_durable(principal, sid)
            if w is not None:
                await w
        except ServiceError as e:
            e.session_id = sid
            raise

    # -- sessions ---------------------------------------------------------------------------------------------

    def _session(self, r: Request, now: float, history_needed: bool, then: int = 0) -> tuple[str, int]:
        sid = r.session_id
        fresh = not sid or r.start
        if fresh and history_needed:
            what = "generate" if r.generate is not None else "top_k"
            raise NothingToPredictFrom(
                f"{what}: a new or reset session has consumed no tokens, so there is no next-token distribution; "
                "send tokens or text with it"
            )
        if not sid:
            return self._create(None, now, r.principal, then)
        if r.start:
            return self._create(sid, now, r.principal, then)
        return sid, self.store.lookup(sid, now, r.principal)

    def _create(self, sid: str | None, now: float, principal: str, then: int = 0) -> tuple[str, int]:
        """Create (or reset) a session for a request that feeds it ``then`` tokens next."""
        live = sid is not None and self._is_live(sid, principal)
        quota = self.settings.max_sessions_per_principal
        try:
            if quota and not live and self.store.count(principal) >= quota:
                who = f"principal {principal!r}" if principal else "the anonymous principal"
                raise QuotaExhausted(
                    f"sessions: {who} holds {self.store.count(principal)} sessions, its quota of {quota} "
                    "(--max-sessions-per-principal); end or close sessions, or retry later"
                )
            out = self.store.create(sid, now, principal)
            if self.persistence is not None:
                self.persistence.on_start(principal, out[0], live, then)
        except CapacityExhausted as e:
            if self.metrics is not None:
                self.metrics.rejected.labels("quota" if isinstance(e, QuotaExhausted) else "capacity").inc()
            raise
        if self.metrics is not None and not live:
            self.metrics.created.inc()
        return out

    def _is_live(self, sid: str, principal: str) -> bool:
        try:
            self.store.info(sid, 0.0, principal)
        except ServiceError:
            return False
        return True

    def _still_live(self, sid: str, slot: int, principal: str) -> None:
        if self.store.lookup(sid, time.monotonic(), principal) != slot:
            raise SessionNotFound(f"session_id: session {sid!r} was reset by another request during generation")

    def _end(self, sid: str, principal: str) -> bool:
        try:
            self.store.remove(sid, principal)
        except ServiceError:  # closed meanwhile by another stream
            return False
        if self.persistence is not None:
            self.persistence.on_close(principal, sid, "end")
        if self.metrics is not None:
            self.metrics.closed.inc()
        return True
