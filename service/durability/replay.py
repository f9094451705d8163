"""What the session log says, without the model: log records applied to a plain dictionary of sessions.

:func:`apply` runs records in order over :class:`Loaded` (create and reset: zero state at position 0; advance: the
tokens are queued; close: the session is dropped), so a session closed later in the log costs nothing; the
recurrent states are computed afterwards (:func:`service.durability.recovery.restore`). :func:`settle` ends a
replay: what the log never confirmed is voided.

Two kinds of change count only once confirmed, so that a request cut by a crash is applied entirely or not at all:

* a start (CREATE or RESET with ``then`` > 0): confirmed by any later record of the session (normally its tokens);
* the PART records of one unary request (a ``Predict`` that generates): confirmed by the session's COMMIT, or by
  any other record of the session that follows (a later change was built on them).

Unconfirmed ones are voided by :func:`settle`, and the caller logs an UNDO for each such session, so that records
the session gets after the restart do not confirm them. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.durability import wal

Key = tuple[str, str]  # (principal, session id)


@dataclass
class Restored:
    """One session as the disk says it is: its snapshot state (row ``row`` of the snapshot; -1 = zero) plus the
    tokens logged after it."""

    principal: str
    session_id: str
    created: float  # wall clock
    position: int
    row: int = -1
    tokens: list[np.ndarray] = field(default_factory=list)


@dataclass
class Loaded:
    sessions: dict[Key, Restored]
    rows: np.ndarray | None  # the snapshot's states [n, sum(widths)]
    snapshot: int  # number of the snapshot loaded, -1 for none
    last_number: int  # highest snapshot or segment number seen, -1 for none
    records: int = 0
    truncated_bytes: int = 0
    #: sessions whose start or unary request was voided by :func:`settle`; the caller logs an UNDO for each
    undone: list[Key] = field(default_factory=list)
    #: starts waiting for their tokens: the session they replaced (None: it did not exist)
    pending: dict[Key, Restored | None] = field(default_factory=dict)
    #: unary requests not committed yet: (position, number of token arrays) of the session before the request
    parts: dict[Key, tuple[int, int]] = field(default_factory=dict)
    #: sessions with records that did not fit (an advance of an unknown session, an unexpected position)
    misfits: set[Key] = field(default_factory=set)
    anomalies: int = 0  # how many such records (should stay 0)


def apply(out: Loaded, records: list[wal.Record]) -> None:
    """Apply ``records`` in order (see the module docstring)."""
    sessions, pending, parts = out.sessions, out.pending, out.parts
    for r in records:
        key = (r.principal, r.session_id)
        if r.kind == wal.UNDO:  # an earlier recovery voided what was unconfirmed here: do it again
            void(out, key)
            continue
        if r.kind == wal.PART:
            if key not in parts and key in sessions:
                s = sessions[key]
                parts[key] = (s.position, len(s.tokens))
        else:  # any other record confirms what came before it
            parts.pop(key, None)
            pending.pop(key, None)
        if r.kind in (wal.ADVANCE, wal.PART):
            got = sessions.get(key)
            assert r.tokens is not None
            if got is None:
                out.anomalies += 1
                out.misfits.add(key)
                continue
            got.tokens.append(r.tokens)
            got.position += len(r.tokens)
            if got.position != r.position:
                out.anomalies += 1
                out.misfits.add(key)
                got.position = r.position
        elif r.kind in (wal.CREATE, wal.RESET):
            if r.then:  # counts only if the request's tokens follow: keep what it replaced until they do
                pending[key] = sessions.get(key)
            sessions[key] = Restored(r.principal, r.session_id, r.wall, 0)
        elif r.kind == wal.CLOSE:
            sessions.pop(key, None)
    out.records += len(records)


def void(out: Loaded, key: Key) -> None:
    """Take back what ``key`` has unconfirmed: its open unary request's tokens, then its pending start (putting back
    the session that start replaced, or removing it)."""
    if key in out.parts:
        position, n = out.parts.pop(key)
        s = out.sessions.get(key)
        if s is not None:
            s.position = position
            del s.tokens[n:]
    if key in out.pending:
        before = out.pending.pop(key)
        if before is None:
            out.sessions.pop(key, None)
        else:
            out.sessions[key] = before


def settle(out: Loaded) -> None:
    """The end of the log: void every unconfirmed start and unary request (listed in ``out.undone``)."""
    out.undone = list(dict.fromkeys([*out.parts, *out.pending]))
    for key in out.undone:
        void(out, key)
