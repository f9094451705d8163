"""Recovery of durable sessions: load the newest snapshot, replay the log after it, rebuild the sessions.

Replay is two passes. First the records are applied to a plain dictionary (create and reset: zero state at
position 0; advance: the tokens are queued; close: the session is dropped), so a session that is closed later in
the log costs nothing. Then every surviving session is created in the store, its snapshot state (if any) written
to its slot, and all queued tokens of all sessions run through the runtime's sequence path, many sessions per
call, in chunks of at most :data:`CHUNK` tokens per session.

Also here: moving the state of many slots between the state memory and one ``[n, sum(widths)]`` array (for
snapshots), whatever the memory's layout (host slab, CUDA buffers, or any :class:`StateMemory`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.durability import wal
from service.errors import StateDirError
from service.runtime.onnx_runtime import Runtime
from service.runtime.state_memory import DeviceStateMemory, HostStateMemory, StateMemory
from service.store.sessions import SessionStore

log = logging.getLogger("seqpred.durability")

#: Tokens of one session per sequence call during replay, and padded tokens per call.
CHUNK = 1024
MAX_CALL_TOKENS = 65_536
_ROWS = 4096  # slots per gather/scatter when moving state in bulk


# -- bulk state access -------------------------------------------------------------------------------------------


def state_layout(mem: StateMemory) -> tuple[list[int], np.dtype[Any]]:
    """The widths of a slot's state tensors and their dtype."""
    vals = mem.read(0)
    return [int(np.asarray(v).shape[-1]) for v in vals], np.dtype(vals[0].dtype)


def read_rows(mem: StateMemory, slots: np.ndarray, widths: list[int], dtype: np.dtype[Any]) -> np.ndarray:
    """The states of ``slots`` as one array ``[n, sum(widths)]`` (tensors side by side, in state order)."""
    out = np.empty((len(slots), sum(widths)), dtype=dtype)
    for a in range(0, len(slots), _ROWS):
        idx = np.asarray(slots[a : a + _ROWS], dtype=np.int64)
        if isinstance(mem, HostStateMemory):
            parts = mem.gather(idx)
        elif isinstance(mem, DeviceStateMemory):
            parts = mem.gather(idx, to_host=True)
        else:
            per_slot = [mem.read(int(s)) for s in idx]
            parts = [np.stack([p[k] for p in per_slot]) for k in range(len(widths))]
        out[a : a + len(idx)] = np.concatenate([np.asarray(p).reshape(len(idx), -1) for p in parts], axis=1)
    return out


def write_rows(mem: StateMemory, slots: np.ndarray, rows: np.ndarray, widths: list[int]) -> None:
    """Inverse of :func:`read_rows`."""
    cuts = np.cumsum(widths)[:-1]
    for a in range(0, len(slots), _ROWS):
        idx = np.asarray(slots[a : a + _ROWS], dtype=np.int64)
        parts = [np.ascontiguousarray(p, dtype=mem.dtype) for p in np.split(rows[a : a + len(idx)], cuts, axis=1)]
        if isinstance(mem, HostStateMemory | DeviceStateMemory):
            mem.scatter(idx, parts)
        else:
            for i, s in enumerate(idx):
                mem.write(int(s), [p[i] for p in parts])


# -- replay ------------------------------------------------------------------------------------------------------


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
    sessions: dict[tuple[str, str], Restored]
    rows: np.ndarray | None  # the snapshot's states [n, sum(widths)]
    snapshot: int  # number of the snapshot loaded, -1 for none
    last_number: int  # highest snapshot or segment number seen, -1 for none
    records: int = 0
    truncated_bytes: int = 0
    #: starts (create, reset) of requests in flight at the crash whose tokens never got logged: voided, and the
    #: caller must log an UNDO for each, so that later records of the session do not revive them
    undone: list[tuple[str, str]] = field(default_factory=list)
    pending: dict[tuple[str, str], Restored | None] = field(default_factory=dict)
    anomalies: int = 0  # advances of unknown sessions or with unexpected positions (should stay 0)


def load(directory: Path, widths: list[int], dtype: np.dtype[Any]) -> Loaded:
    """Read the newest snapshot and apply the log after it; a torn tail of the last segment is truncated (and
    logged); stale files (before the snapshot, half-written snapshots) are deleted."""
    for tmp in directory.glob("snap-*.tmp"):
        tmp.unlink()
    snaps = wal.numbered(directory, wal.SNAPSHOT_RE)
    segs = wal.numbered(directory, wal.SEGMENT_RE)
    sessions: dict[tuple[str, str], Restored] = {}
    base, rows = -1, None
    if snaps:
        base, path = snaps[-1]
        try:
            header, rows = wal.read_snapshot(path)
        except (OSError, ValueError, KeyError) as e:
            raise StateDirError(f"--state-dir: snapshot {str(path)!r} is unreadable: {e}") from None
        if header.get("widths") != widths or np.dtype(header.get("dtype")) != dtype:
            raise StateDirError(
                f"--state-dir: snapshot {str(path)!r} holds states of widths {header.get('widths')} "
                f"({header.get('dtype')}); this model's are {widths} ({dtype.name})"
            )
        for i, (principal, sid, position, created) in enumerate(header["sessions"]):
            sessions[(principal, sid)] = Restored(principal, sid, float(created), int(position), i)
    for path in [p for _, p in snaps[:-1]] + [p for n, p in segs if n < base]:
        path.unlink()
    live = [(n, p) for n, p in segs if n >= base]
    out = Loaded(sessions, rows, base, max([base] + [n for n, _ in live]))
    for i, (_, path) in enumerate(live):
        sc = wal.scan(path.read_bytes())
        if sc.problem:
            if i < len(live) - 1:
                raise StateDirError(
                    f"--state-dir: log segment {str(path)!r} is corrupt at byte {sc.good} ({sc.problem}) and later "
                    "segments depend on it; move the directory aside to start without sessions"
                )
            log.warning(
                "session log: truncated a torn tail",
                extra={"fields": {"file": str(path), "offset": sc.good, "bytes": sc.size - sc.good, "why": sc.problem}},
            )
            os.truncate(path, sc.good)
            out.truncated_bytes = sc.size - sc.good
        _apply(out, sc.records)
    out.undone = list(out.pending)
    for key in out.undone:
        _undo(out, key)
    return out


def _apply(out: Loaded, records: list[wal.Record]) -> None:
    sessions = out.sessions
    pending = out.pending
    for r in records:
        key = (r.principal, r.session_id)
        if r.kind == wal.UNDO:  # an earlier recovery voided the start still pending: do it again
            if key in pending:
                _undo(out, key)
            continue
        if key in pending:  # a later record of the session: its start happened (see Persistence.on_start)
            del pending[key]
        if r.kind == wal.ADVANCE:
            s = sessions.get(key)
            assert r.tokens is not None
            if s is None:
                out.anomalies += 1
                continue
            s.tokens.append(r.tokens)
            s.position += len(r.tokens)
            if s.position != r.position:
                out.anomalies += 1
                s.position = r.position
        elif r.kind in (wal.CREATE, wal.RESET):
            if r.then:  # counts only if the request's tokens follow: keep what it replaced until they do
                pending[key] = sessions.get(key)
            sessions[key] = Restored(r.principal, r.session_id, r.wall, 0)
        else:
            sessions.pop(key, None)
    out.records += len(records)


def _undo(out: Loaded, key: tuple[str, str]) -> None:
    """A start whose tokens were never logged (a crash in between) did not happen: put back what it replaced."""
    before = out.pending.pop(key)
    if before is None:
        out.sessions.pop(key, None)
    else:
        out.sessions[key] = before


def restore(store: SessionStore, runtime: Runtime, loaded: Loaded, widths: list[int]) -> int:
    """Create the loaded sessions in ``store`` (lifetime from their creation, idle clock from now), write their
    snapshot states and replay their logged tokens; returns the number of tokens replayed."""
    items = list(loaded.sessions.values())
    if len(items) > store.capacity:
        raise StateDirError(
            f"--max-sessions: {store.capacity} is fewer than the {len(items)} sessions in the state directory; "
            "raise it to restore them"
        )
    now_m, now_w = time.monotonic(), time.time()
    slots = np.empty(len(items), dtype=np.int64)
    for i, s in enumerate(items):
        sid, slot = store.create(s.session_id, now_m - max(0.0, now_w - s.created), s.principal)
        store.lookup(sid, now_m, s.principal)
        store.advance(slot, s.position)
        slots[i] = slot
    has = [i for i, s in enumerate(items) if s.row >= 0]
    if has and loaded.rows is not None:
        write_rows(store.memory, slots[has], loaded.rows[[items[i].row for i in has]], widths)
    work = [(int(slots[i]), np.concatenate(s.tokens)) for i, s in enumerate(items) if s.tokens]
    run_tokens(runtime, store.memory, work)
    return sum(len(t) for _, t in work)


def run_tokens(runtime: Runtime, mem: StateMemory, work: list[tuple[int, np.ndarray]]) -> None:
    """Advance each ``(slot, tokens)`` by its tokens through ``sequence.onnx``: round r feeds chunk r of every
    session that has one, rows of similar length batched together."""
    offset = 0
    while True:
        pieces = [(slot, t[offset : offset + CHUNK]) for slot, t in work if len(t) > offset]
        if not pieces:
            return
        pieces.sort(key=lambda p: -len(p[1]))
        a = 0
        while a < len(pieces):
            T = len(pieces[a][1])
            group = pieces[a : a + max(1, MAX_CALL_TOKENS // T)]
            tokens = np.zeros((len(group), T), dtype=np.int64)
            lengths = np.empty(len(group), dtype=np.int64)
            for r, (_, t) in enumerate(group):
                tokens[r, : len(t)] = t
                lengths[r] = len(t)
            slots = np.array([s for s, _ in group], dtype=np.int64)
            runtime.sequence(mem, slots, tokens, lengths, want_tokens=False, want_next=False)
            a += len(group)
        offset += CHUNK
