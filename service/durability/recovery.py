"""Recovery of durable sessions: load the newest snapshot, replay the log after it, rebuild the sessions.

Replay is two passes. First the records are applied to a plain dictionary (:mod:`service.durability.replay`), so a
session that is closed later in the log costs nothing. Then every surviving session is created in the store, its
snapshot state (if any) written to its slot, and all queued tokens of all sessions run through the runtime's
sequence path, many sessions per call, in chunks of at most :data:`CHUNK` tokens per session. Damage stops the
load before anything changes (:func:`load`); ``seqpred durability salvage`` (:mod:`service.durability.salvage`)
keeps what is intact.

Also here: moving the state of many slots between the state memory and one ``[n, sum(widths)]`` array (for
snapshots), whatever the memory's layout (host slab, CUDA buffers, or any :class:`StateMemory`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.durability import replay, snapshot, wal
from service.durability.replay import Loaded, Restored
from service.errors import StateDirError
from service.runtime.onnx_runtime import Runtime
from service.runtime.state_memory import DeviceStateMemory, HostStateMemory, StateMemory
from service.store.sessions import SessionStore

log = logging.getLogger("seqpred.durability")

#: Tokens of one session per sequence call during replay, and padded tokens per call.
CHUNK = 1024
MAX_CALL_TOKENS = 65_536
_ROWS = 4096  # slots per gather/scatter when moving state in bulk


def salvage_hint(directory: Path) -> str:
    return (
        f"nothing was changed; 'seqpred durability salvage {directory}' keeps every intact record and moves the "
        "damaged file aside (docs/reliability.md, 'Damage')"
    )


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


# -- loading a state directory ------------------------------------------------------------------------------


def load(directory: Path, widths: list[int], dtype: np.dtype[Any]) -> Loaded:
    """Read the newest snapshot and apply the log after it (:mod:`service.durability.replay`).

    A torn tail (the newest segment's last record cut short or failing its checksum, nothing well-framed after
    it: a crash in the middle of a write) is truncated, with a warning. Anything else that is bad stops here with
    a StateDirError naming the file and the byte, before anything is changed: a bad record that well-framed records
    follow (damage), a bad record in an older segment, a damaged snapshot. Stale files (before the snapshot,
    half-written snapshots) are deleted."""
    for tmp in directory.glob("snap-*.tmp"):
        tmp.unlink()
    snaps = wal.numbered(directory, wal.SNAPSHOT_RE)
    segs = wal.numbered(directory, wal.SEGMENT_RE)
    sessions: dict[tuple[str, str], Restored] = {}
    base, rows = -1, None
    if snaps:
        base, path = snaps[-1]
        try:
            header, rows = snapshot.read_snapshot(path)
        except snapshot.SnapshotDamage as e:
            raise StateDirError(f"--state-dir: snapshot {str(path)!r} is {e}; {salvage_hint(directory)}") from None
        except (OSError, ValueError, KeyError) as e:
            raise StateDirError(f"--state-dir: snapshot {str(path)!r} is unreadable: {e}") from None
        if header.get("widths") != widths or np.dtype(header.get("dtype")) != dtype:
            raise StateDirError(
                f"--state-dir: snapshot {str(path)!r} holds states of widths {header.get('widths')} "
                f"({header.get('dtype')}); this model's are {widths} ({dtype.name})"
            )
        for i, (principal, sid, position, created) in enumerate(header["sessions"]):
            sessions[(principal, sid)] = Restored(principal, sid, float(created), int(position), i)
    live = [(n, p) for n, p in segs if n >= base]
    scans = []
    for i, (_, path) in enumerate(live):
        data = path.read_bytes()
        sc = wal.scan(data)
        if sc.problem:
            follows = wal.resync(data, sc.good)
            if follows is not None or i < len(live) - 1:
                after = (
                    f"well-formed records follow at byte {follows}, so it is not a torn tail"
                    if follows is not None
                    else "later segments depend on it"
                )
                raise StateDirError(
                    f"--state-dir: log segment {str(path)!r} is damaged at byte {sc.good} ({sc.problem}; {after}); "
                    f"{salvage_hint(directory)}"
                )
        scans.append((path, sc))
    for path in [p for _, p in snaps[:-1]] + [p for n, p in segs if n < base]:
        path.unlink()
    out = Loaded(sessions, rows, base, max([base] + [n for n, _ in live]))
    for path, sc in scans:
        if sc.problem:
            log.warning(
                "session log: truncated a torn tail",
                extra={"fields": {"file": str(path), "offset": sc.good, "bytes": sc.size - sc.good, "why": sc.problem}},
            )
            os.truncate(path, sc.good)
            out.truncated_bytes = sc.size - sc.good
        replay.apply(out, sc.records)
    replay.settle(out)
    return out


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
