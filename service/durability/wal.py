"""The on-disk formats of durable sessions: log records, log segments and state snapshots. No I/O policy here.

A state directory holds ``meta.json`` (format, model sha256, state layout), log segments ``log-NNNNNNNNNNNN.seg``
and snapshots ``snap-NNNNNNNNNNNN.bin``. Segment numbers only grow; snapshot ``n`` holds every live session as it
was when segment ``n`` was opened, so recovery loads the newest snapshot ``n`` and replays segments ``>= n``.

A segment is a sequence of records, each ``<u32 length><u32 crc32(payload)>payload`` (little-endian), payload::

    <u8 kind><f64 wall time><u16 len(principal)><u16 len(id)>principal id  (UTF-8)
    ADVANCE: <u64 position after><u32 n><u32 token> * n
    CLOSE:   <u8 reason>
    CREATE, RESET: <u32 then>         (tokens the same request feeds next: the start counts only with them)
    UNDO:    nothing                  (written by a recovery: the session's start whose tokens never came is void)

A crash can leave the last record torn (short, or with a checksum that does not match): :func:`scan` stops at
the first bad record and reports where, so the caller can truncate the tail.

A snapshot is ``MAGIC <u64 len(header)> header (JSON) rows <u32 crc32 of all before>``; the header lists the
sessions ``[principal, id, position, created (wall)]`` in row order, the state ``dtype`` and ``widths``; the rows
are one array ``[n, sum(widths)]`` of raw little-endian values (each session's state tensors side by side). Never
pickled: read back with ``np.frombuffer``.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CREATE, RESET, ADVANCE, CLOSE, UNDO = 1, 2, 3, 4, 5
REASONS = ("end", "close", "idle", "lifetime")
_REASON_CODE = {r: i for i, r in enumerate(REASONS)}

_HEAD = struct.Struct("<II")  # length, crc32
_COMMON = struct.Struct("<BdHH")  # kind, wall, len(principal), len(id)
_ADV = struct.Struct("<QI")  # position after, n
_U32 = struct.Struct("<I")
#: A record longer than this is corruption, not data (a request holds at most a few thousand tokens).
MAX_RECORD = 1 << 26

SNAP_MAGIC = b"SEQPRED-SNAPSHOT-1\n"
SEGMENT_RE = re.compile(r"^log-(\d{12})\.seg$")
SNAPSHOT_RE = re.compile(r"^snap-(\d{12})\.bin$")


@dataclass(frozen=True)
class Record:
    """One logged change of session ``(principal, session_id)``; ``tokens``/``position`` for ADVANCE, ``reason``
    for CLOSE, ``then`` for CREATE and RESET."""

    kind: int
    wall: float
    principal: str
    session_id: str
    tokens: np.ndarray | None = None
    position: int = 0
    reason: str = ""
    then: int = 0


def _pack(kind: int, wall: float, principal: str, session_id: str, tail: bytes = b"") -> bytes:
    p, s = principal.encode(), session_id.encode()
    payload = _COMMON.pack(kind, wall, len(p), len(s)) + p + s + tail
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def encode_create(wall: float, principal: str, session_id: str, then: int = 0) -> bytes:
    return _pack(CREATE, wall, principal, session_id, _U32.pack(then))


def encode_reset(wall: float, principal: str, session_id: str, then: int = 0) -> bytes:
    return _pack(RESET, wall, principal, session_id, _U32.pack(then))


def encode_advance(wall: float, principal: str, session_id: str, tokens: np.ndarray | int, position: int) -> bytes:
    if isinstance(tokens, int):
        body = _ADV.pack(position, 1) + _U32.pack(tokens)
    else:
        body = _ADV.pack(position, len(tokens)) + np.asarray(tokens, dtype="<u4").tobytes()
    return _pack(ADVANCE, wall, principal, session_id, body)


def encode_undo(wall: float, principal: str, session_id: str) -> bytes:
    return _pack(UNDO, wall, principal, session_id)


def encode_close(wall: float, principal: str, session_id: str, reason: str) -> bytes:
    return _pack(CLOSE, wall, principal, session_id, bytes([_REASON_CODE[reason]]))


def decode(payload: bytes) -> Record:
    """One record from its payload (checksum already verified); ValueError when malformed."""
    kind, wall, lp, ls = _COMMON.unpack_from(payload, 0)
    o = _COMMON.size
    principal = payload[o : o + lp].decode()
    session_id = payload[o + lp : o + lp + ls].decode()
    o += lp + ls
    if kind in (CREATE, RESET):
        rest = 4
        rec = Record(kind, wall, principal, session_id, then=_U32.unpack_from(payload, o)[0])
    elif kind == ADVANCE:
        position, n = _ADV.unpack_from(payload, o)
        o += _ADV.size
        tokens = np.frombuffer(payload, dtype="<u4", count=n, offset=o).astype(np.int64)
        rest = 4 * n
        rec = Record(kind, wall, principal, session_id, tokens, position)
    elif kind == UNDO:
        rest = 0
        rec = Record(kind, wall, principal, session_id)
    elif kind == CLOSE:
        rest = 1
        rec = Record(kind, wall, principal, session_id, reason=REASONS[payload[o]])
    else:
        raise ValueError(f"unknown record kind {kind}")
    if o + rest != len(payload):
        raise ValueError(f"record of kind {kind} has {len(payload) - o - rest} stray bytes")
    return rec


@dataclass(frozen=True)
class Scan:
    """The records of one segment up to its first bad one: ``good`` bytes are valid; ``problem`` says why the
    rest (``size - good`` bytes) is not, or is empty when the whole segment is valid."""

    records: list[Record]
    good: int
    size: int
    problem: str


def scan(data: bytes) -> Scan:
    """Decode a segment's bytes, stopping at the first short, oversized, corrupt or malformed record."""
    records: list[Record] = []
    o, n = 0, len(data)
    problem = ""
    while o < n:
        if n - o < _HEAD.size:
            problem = f"a torn record header ({n - o} bytes)"
            break
        length, crc = _HEAD.unpack_from(data, o)
        if length > MAX_RECORD:
            problem = f"a record length of {length} bytes"
            break
        if n - o - _HEAD.size < length:
            problem = f"a torn record ({n - o - _HEAD.size} of {length} bytes)"
            break
        payload = data[o + _HEAD.size : o + _HEAD.size + length]
        if zlib.crc32(payload) != crc:
            problem = "a checksum mismatch"
            break
        try:
            records.append(decode(payload))
        except (ValueError, struct.error, UnicodeDecodeError, IndexError) as e:
            problem = f"a malformed record ({e})"
            break
        o += _HEAD.size + length
    return Scan(records, o, n, problem)


# -- snapshots ---------------------------------------------------------------------------------------------------


def write_snapshot(path: Path, header: dict[str, Any], rows: np.ndarray) -> int:
    """Write a snapshot atomically (temporary file, fsync, rename, fsync of the directory); returns its bytes."""
    head = json.dumps(header, separators=(",", ":")).encode()
    data = np.ascontiguousarray(rows, dtype=np.dtype(header["dtype"]).newbyteorder("<"))
    body = data.reshape(-1).view(np.uint8).data
    parts: list[bytes | memoryview] = [SNAP_MAGIC, struct.pack("<Q", len(head)), head, body]
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(p)
        f.write(struct.pack("<I", crc))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return len(SNAP_MAGIC) + 8 + len(head) + data.nbytes + 4


def read_snapshot(path: Path) -> tuple[dict[str, Any], np.ndarray]:
    """``(header, rows [n, sum(widths)])``; ValueError naming the problem when the file is not a valid snapshot."""
    data = path.read_bytes()
    m = len(SNAP_MAGIC)
    if len(data) < m + 12 or data[:m] != SNAP_MAGIC:
        raise ValueError("not a seqpred snapshot (bad magic or too short)")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise ValueError("checksum mismatch")
    (hlen,) = struct.unpack_from("<Q", data, m)
    header = json.loads(data[m + 8 : m + 8 + hlen])
    dtype = np.dtype(header["dtype"]).newbyteorder("<")
    n, width = len(header["sessions"]), int(sum(header["widths"]))
    body = data[m + 8 + hlen : -4]
    if len(body) != n * width * dtype.itemsize:
        raise ValueError(f"{len(body)} bytes of state for {n} sessions of width {width}")
    rows = np.frombuffer(body, dtype=dtype).reshape(n, width).astype(dtype.newbyteorder("="))
    return header, rows


# -- directory layout --------------------------------------------------------------------------------------------


def segment_path(directory: Path, n: int) -> Path:
    return directory / f"log-{n:012d}.seg"


def snapshot_path(directory: Path, n: int) -> Path:
    return directory / f"snap-{n:012d}.bin"


def numbered(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """The files of ``directory`` whose names match ``pattern``, by number."""
    out = []
    for p in directory.iterdir():
        m = pattern.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
