"""Damage in a state directory: find it (:func:`check`), and keep every intact record (:func:`salvage`).

Needs no model: the log holds tokens, not states, and a snapshot's rows are copied as they are.

* **Segments.** Every segment from the newest snapshot on is read frame by frame; where a record is bad, reading
  resumes at the next well-framed record (:func:`service.durability.wal.resync`). A bad run at the very end of
  the newest segment is a torn tail (the next start truncates it, as always); any other bad run is damage.
* **Whose change was lost.** A damaged record is attributed to a session by the bytes where its principal and id
  stand: they must spell a session the directory knows (from the snapshot or an intact record), exactly or with
  at most :data:`NEAR` bytes differing and no other session as close, and the damaged run must be one record
  long (by its length field, or by the size its kind and contents imply). Sessions whose intact records no
  longer fit (an advance of an unknown session, or at an unexpected position) lost a record too.
* **Snapshots.** A row whose checksum fails loses its session; an unreadable session list loses them all.
* **What salvage does.** Each damaged file is moved into ``DIR/damaged/`` (never deleted; no name there is a
  segment or snapshot, so no compaction ever touches it) and replaced by its intact part: the segment's intact
  records in their order, the snapshot without its bad rows. Every session that lost a change is *dropped*: a
  CLOSE record for it is appended in a new segment, so its client gets NOT_FOUND and starts over instead of
  continuing unknowingly from a state that is not the one it was told. (Rolling it back to its last intact
  record would keep an old state under the same id, which a client that does not check positions cannot
  notice.) Every other session keeps all its records. When a damaged record cannot be attributed, any one
  session may have lost one change: salvage refuses unless told to accept that (``accept_unknown``).
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.durability import replay, snapshot, wal
from service.durability.replay import Key, Loaded, Restored

#: Bytes of a damaged record's principal and id (with their lengths) that may differ from a known session's.
NEAR = 2
_KEY_AT = 8 + 1 + 8  # frame header, kind, wall: where <u16 len(principal)><u16 len(id)> principal id start
_SIZES = {wal.CREATE: 4, wal.RESET: 4, wal.CLOSE: 1, wal.UNDO: 0, wal.COMMIT: 0}  # payload after the key


@dataclass
class Damage:
    """One damaged run of bytes ``[offset, end)`` of ``path`` (a segment), or a damaged snapshot."""

    path: Path
    offset: int
    end: int
    why: str
    sessions: list[Key] = field(default_factory=list)  # whose change it held (empty: unknown)

    def line(self) -> str:
        what = "snapshot" if wal.SNAPSHOT_RE.match(self.path.name) else "log segment"
        return f"{what} {str(self.path)!r} is damaged at byte {self.offset} ({self.why})"


@dataclass
class Segment:
    number: int
    path: Path
    frames: list[tuple[int, int]]  # intact records: [start, end) byte spans, in order
    records: list[wal.Record]
    torn: int = 0  # bytes of a torn tail (newest segment only)


@dataclass
class Report:
    """What :func:`check` found, and what :func:`salvage` would do about it."""

    directory: Path
    damage: list[Damage]
    segments: list[Segment]
    snap: tuple[int, Path, snapshot.Snapshot] | None
    lost: list[Key]  # sessions that lost a change (attributed, misfits, bad snapshot rows)
    drop: list[Key]  # those of them live at the end of the intact log: dropped by salvage (a CLOSE record each)
    kept: int  # sessions the next start restores after salvage
    unattributed: list[Damage]

    @property
    def damaged(self) -> bool:
        return bool(self.damage)


def check(directory: Path) -> Report:
    """Read everything in ``directory`` (changing nothing) and say what is damaged and who lost what."""
    snaps = wal.numbered(directory, wal.SNAPSHOT_RE)
    damage: list[Damage] = []
    sessions: dict[Key, Restored] = {}
    lost: set[Key] = set()
    snap = None
    base = -1
    if snaps:
        base, path = snaps[-1]
        s = snapshot.inspect_snapshot(path)
        snap = (base, path, s)
        listed = s.header["sessions"] if s.header is not None else []
        for row, (p, i, position, created) in enumerate(listed):
            sessions[(p, i)] = Restored(p, i, float(created), int(position), row)
        if s.damage is not None:
            bad = [(listed[r][0], listed[r][1]) for r in s.bad_rows]
            damage.append(Damage(path, s.damage.offset, path.stat().st_size, s.damage.why, bad))
            lost.update(bad)
    segs = [(n, p) for n, p in wal.numbered(directory, wal.SEGMENT_RE) if n >= base]
    segments = []
    for k, (n, path) in enumerate(segs):
        seg, runs = _read_segment(n, path, newest=k == len(segs) - 1)
        segments.append(seg)
        damage += runs
    known = set(sessions) | {(r.principal, r.session_id) for seg in segments for r in seg.records}
    for d in damage:
        if wal.SEGMENT_RE.match(d.path.name):
            key = attribute(d.path.read_bytes(), d.offset, d.end, known)
            d.sessions = [key] if key is not None else []
            lost.update(d.sessions)
    out = Loaded(sessions, None, base, -1)
    for seg in segments:
        replay.apply(out, seg.records)
    replay.settle(out)
    lost |= out.misfits
    unattributed = [d for d in damage if not d.sessions and wal.SEGMENT_RE.match(d.path.name)]
    if snap is not None and snap[2].header is None:
        unattributed.append(next(d for d in damage if d.path == snap[1]))
    drop = sorted(k for k in lost if k in out.sessions)
    kept = len(out.sessions) - len(drop)
    return Report(directory, damage, segments, snap, sorted(lost), drop, kept, unattributed)


def _read_segment(n: int, path: Path, newest: bool) -> tuple[Segment, list[Damage]]:
    data = path.read_bytes()
    seg = Segment(n, path, [], [])
    runs: list[Damage] = []
    o = 0
    while o < len(data):
        if wal.well_framed(data, o):
            (length,) = struct.unpack_from("<I", data, o)
            seg.frames.append((o, o + 8 + length))
            seg.records.append(wal.decode(data[o + 8 : o + 8 + length]))
            o += 8 + length
            continue
        why = wal.scan(data[o:]).problem or "a bad record"
        nxt = wal.resync(data, o)
        if nxt is None and newest:
            seg.torn = len(data) - o
            break
        end = len(data) if nxt is None else nxt
        after = f"intact records follow at byte {nxt}" if nxt is not None else "later segments depend on it"
        runs.append(Damage(path, o, end, f"{why}; {after}"))
        o = end
    return seg, runs


def attribute(data: bytes, start: int, end: int, known: set[Key]) -> Key | None:
    """The session whose record the damaged run ``data[start:end]`` held, or None when that cannot be told (see
    the module docstring)."""
    at = start + _KEY_AT
    written = data[at:end]
    best: list[Key] = []
    best_diff = NEAR + 1
    for key in known:
        p, s = key[0].encode(), key[1].encode()
        want = struct.pack("<HH", len(p), len(s)) + p + s
        got = written[: len(want)]
        if len(got) < len(want):
            continue
        diff = sum(a != b for a, b in zip(want, got, strict=True))
        if diff < best_diff:
            best, best_diff = [key], diff
        elif diff == best_diff:
            best.append(key)
    if len(best) != 1:
        return None
    key = best[0]
    size = end - start
    framed = len(data) - start >= 4 and struct.unpack_from("<I", data, start)[0] + 8 == size
    return key if framed or _implied_size(data, start, key) == size else None


def _implied_size(data: bytes, start: int, key: Key) -> int | None:
    """The frame size the damaged record's kind and contents imply, its key taken as ``key``."""
    if start + 9 > len(data):
        return None
    kind = data[start + 8]
    base = 8 + 13 + len(key[0].encode()) + len(key[1].encode())
    if kind in _SIZES:
        return base + _SIZES[kind]
    if kind in (wal.ADVANCE, wal.PART) and base + 12 <= len(data) - start:
        return base + 12 + 4 * int(struct.unpack_from("<I", data, start + base + 8)[0])
    return None


def salvage(report: Report, accept_unknown: bool = False) -> list[str]:
    """Do what ``report`` says (see the module docstring); returns what was done, one line each. ValueError when
    a damaged record cannot be attributed and ``accept_unknown`` is False, or when nothing is damaged."""
    d = report.directory
    if not report.damaged:
        raise ValueError(f"{str(d)!r} has no damage; nothing to salvage")
    if report.unattributed and not accept_unknown:
        u = report.unattributed[0]
        raise ValueError(
            f"{u.line()}, and the damaged bytes do not say whose change they held, so any one session may have "
            "lost a change; pass --accept-unknown-loss to keep every session whose records still fit"
        )
    aside = d / "damaged"
    aside.mkdir(exist_ok=True)
    done: list[str] = []
    damaged_paths = list(dict.fromkeys(x.path for x in report.damage))
    for path in damaged_paths:
        tmp = path.with_name(path.name + ".salvage")
        if report.snap is not None and path == report.snap[1]:
            _write_kept_snapshot(d, report.snap[2], tmp)
        else:
            seg = next(s for s in report.segments if s.path == path)
            data = path.read_bytes()
            _write_synced(tmp, b"".join(data[a:b] for a, b in seg.frames))
        moved = _free_name(aside / path.name)
        os.replace(path, moved)
        os.replace(tmp, path)
        done.append(f"moved {str(path)!r} to {str(moved)!r} and put its intact part in its place")
    if report.drop:
        last = max([n for n, _ in wal.numbered(d, wal.SEGMENT_RE)] + [report.snap[0] if report.snap else -1])
        now = time.time()
        closes = b"".join(wal.encode_close(now, p, s, "close") for p, s in report.drop)
        _write_synced(wal.segment_path(d, last + 1), closes)
        done.append(f"dropped {len(report.drop)} sessions (a CLOSE record each): {_names(report.drop)}")
    wal.fsync_dir(aside)
    wal.fsync_dir(d)
    note = {
        "time": time.time(),
        "damage": [{"file": str(x.path), "offset": x.offset, "end": x.end, "why": x.why} for x in report.damage],
        "lost": [list(k) for k in report.lost],
        "dropped": [list(k) for k in report.drop],
        "kept_sessions": report.kept,
        "done": done,
    }
    _write_synced(_free_name(aside / "salvage.json"), (json.dumps(note, indent=1) + "\n").encode())
    return done


def _names(keys: list[Key]) -> str:
    return ", ".join(f"{p}/{s}" if p else s for p, s in keys)


def _write_kept_snapshot(d: Path, s: snapshot.Snapshot, tmp: Path) -> None:
    if s.header is not None and s.rows is not None:
        bad = set(s.bad_rows)
        keep = [i for i in range(len(s.header["sessions"])) if i not in bad]
        header: dict[str, Any] = {**s.header, "sessions": [s.header["sessions"][i] for i in keep]}
        rows = s.rows[keep]
    else:  # nothing of it can be trusted: an empty snapshot of the directory's state layout
        meta = json.loads((d / "meta.json").read_text())
        header = {"format": 1, "dtype": meta["dtype"], "widths": meta["widths"], "sessions": []}
        rows = np.zeros((0, sum(meta["widths"])), dtype=meta["dtype"])
    snapshot.write_snapshot(tmp, header, rows)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _free_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``, ... whichever does not exist yet."""
    out, k = path, 0
    while out.exists():
        k += 1
        out = path.with_name(f"{path.name}.{k}")
    return out


def describe(report: Report) -> list[str]:
    """Human lines for ``seqpred durability check``: torn tails, and what salvage would do about the damage."""
    lines = []
    for seg in report.segments:
        if seg.torn:
            lines.append(f"torn tail: the last {seg.torn} bytes of {str(seg.path)!r} (the next start truncates them)")
    if report.damaged:
        lines.append(f"sessions that lost a change: {_names(report.lost) or 'none known'}")
        if report.drop:
            lines.append(f"salvage would drop {len(report.drop)} of them, still live: {_names(report.drop)}")
        lines.append(f"salvage would keep {report.kept} sessions with every intact record")
        for u in report.unattributed:
            lines.append(f"cannot tell whose change the damage at byte {u.offset} of {str(u.path)!r} held")
    return lines
