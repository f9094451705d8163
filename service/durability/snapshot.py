"""The on-disk format of state snapshots (``snap-NNNNNNNNNNNN.bin``), with a checksum per session so that damage
names the byte and the session it hit. No I/O policy here.

Format 2 (written)::

    MAGIC2 <u64 len(header)> header (JSON) <u32 crc32 of all before>
    rows                                    [n, sum(widths)] raw little-endian values, one row per session
    <u32 crc32(row)> * n <u32 crc32 of those n checksums>

The header lists the sessions ``[principal, id, position, created (wall)]`` in row order, the state ``dtype`` and
``widths``. Format 1 (read only; written before the per-row checksums) is ``MAGIC1 <u64 len(header)> header rows
<u32 crc32 of all before>``. Never pickled: rows are read back with ``np.frombuffer``.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.durability.wal import fsync_dir

MAGIC1 = b"SEQPRED-SNAPSHOT-1\n"
MAGIC2 = b"SEQPRED-SNAPSHOT-2\n"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class SnapshotDamage(ValueError):
    """A snapshot that is not what was written: ``offset`` is the first byte known bad (or the start of the part
    whose checksum fails), ``why`` says what."""

    def __init__(self, offset: int, why: str) -> None:
        super().__init__(f"damaged at byte {offset} ({why})")
        self.offset, self.why = offset, why


@dataclass
class Snapshot:
    """What a snapshot file holds. ``bad_rows``: rows whose checksum fails (lenient reads only); ``damage``: the
    first problem found (None when the file is intact); ``header`` is None when the session list is unreadable."""

    header: dict[str, Any] | None
    rows: np.ndarray | None
    bad_rows: list[int] = field(default_factory=list)
    damage: SnapshotDamage | None = None


def write_snapshot(path: Path, header: dict[str, Any], rows: np.ndarray) -> int:
    """Write a snapshot atomically (temporary file, fsync, rename, fsync of the directory); returns its bytes."""
    head = json.dumps(header, separators=(",", ":")).encode()
    data = np.ascontiguousarray(rows, dtype=np.dtype(header["dtype"]).newbyteorder("<"))
    first = MAGIC2 + _U64.pack(len(head)) + head
    raw = data.view(np.uint8).reshape(len(data), data.shape[1] * data.itemsize)
    crcs = np.fromiter((zlib.crc32(raw[i].data) for i in range(len(raw))), dtype="<u4", count=len(raw)).tobytes()
    parts: list[bytes | memoryview] = [first, _U32.pack(zlib.crc32(first)), data.reshape(-1).view(np.uint8).data]
    parts += [crcs, _U32.pack(zlib.crc32(crcs))]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(p)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return sum(len(p) for p in parts)


def read_snapshot(path: Path) -> tuple[dict[str, Any], np.ndarray]:
    """``(header, rows [n, sum(widths)])``; SnapshotDamage (a ValueError) naming the first bad byte otherwise."""
    snap = inspect_snapshot(path)
    if snap.damage is not None:
        raise snap.damage
    assert snap.header is not None and snap.rows is not None
    return snap.header, snap.rows


def inspect_snapshot(path: Path) -> Snapshot:
    """Read a snapshot, keeping whatever is intact: the rows of a format-2 file are checked one by one."""
    data = path.read_bytes()
    if data.startswith(MAGIC1):
        return _inspect_v1(data)
    if not data.startswith(MAGIC2):
        return Snapshot(None, None, damage=SnapshotDamage(0, "not a seqpred snapshot: bad magic"))
    m = len(MAGIC2)
    if len(data) < m + 12:
        return Snapshot(None, None, damage=SnapshotDamage(m, f"cut short at {len(data)} bytes"))
    (hlen,) = _U64.unpack_from(data, m)
    h_end = m + 8 + hlen
    if h_end + 4 > len(data) or zlib.crc32(data[:h_end]) != _U32.unpack_from(data, h_end)[0]:
        return Snapshot(None, None, damage=SnapshotDamage(m, "the header's checksum does not match"))
    try:
        header, dtype, n, width = _header(data[m + 8 : h_end])
    except (ValueError, KeyError, TypeError) as e:
        return Snapshot(None, None, damage=SnapshotDamage(m + 8, f"an unreadable header: {e}"))
    r0 = h_end + 4
    row_bytes = width * dtype.itemsize
    c0 = r0 + n * row_bytes
    if len(data) != c0 + 4 * n + 4:
        bad = SnapshotDamage(min(len(data), c0), f"{len(data)} bytes where {c0 + 4 * n + 4} were written")
        return Snapshot(header, None, list(range(n)), bad)
    crcs = data[c0 : c0 + 4 * n]
    if zlib.crc32(crcs) != _U32.unpack_from(data, c0 + 4 * n)[0]:
        return Snapshot(header, None, list(range(n)), SnapshotDamage(c0, "the row checksums' checksum does not match"))
    want = np.frombuffer(crcs, dtype="<u4")
    bad_rows = [i for i in range(n) if zlib.crc32(data[r0 + i * row_bytes : r0 + (i + 1) * row_bytes]) != want[i]]
    rows = np.frombuffer(data, dtype=dtype, count=n * width, offset=r0).reshape(n, width)
    damage = None
    if bad_rows:
        i = bad_rows[0]
        who = header["sessions"][i]
        damage = SnapshotDamage(r0 + i * row_bytes, f"the state of session {who[1]!r} (row {i}) fails its checksum")
    return Snapshot(header, rows.astype(dtype.newbyteorder("=")), bad_rows, damage)


def _header(raw: bytes) -> tuple[dict[str, Any], np.dtype[Any], int, int]:
    header = json.loads(raw)
    dtype = np.dtype(header["dtype"]).newbyteorder("<")
    return header, dtype, len(header["sessions"]), int(sum(header["widths"]))


def _inspect_v1(data: bytes) -> Snapshot:
    m = len(MAGIC1)
    if len(data) < m + 12 or zlib.crc32(data[:-4]) != _U32.unpack(data[-4:])[0]:
        # one checksum over the whole file: the damage is somewhere in it
        return Snapshot(None, None, damage=SnapshotDamage(0, "the file's checksum does not match (format 1)"))
    (hlen,) = _U64.unpack_from(data, m)
    try:
        header, dtype, n, width = _header(data[m + 8 : m + 8 + hlen])
    except (ValueError, KeyError, TypeError) as e:
        return Snapshot(None, None, damage=SnapshotDamage(m + 8, f"an unreadable header: {e}"))
    body = data[m + 8 + hlen : -4]
    if len(body) != n * width * dtype.itemsize:
        why = f"{len(body)} bytes of state for {n} sessions of width {width}"
        return Snapshot(header, None, list(range(n)), SnapshotDamage(m + 8 + hlen, why))
    rows = np.frombuffer(body, dtype=dtype).reshape(n, width).astype(dtype.newbyteorder("="))
    return Snapshot(header, rows)
