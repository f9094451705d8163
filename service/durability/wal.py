"""The on-disk format of the session log: records and log segments. No I/O policy here (snapshots:
:mod:`service.durability.snapshot`).

A state directory holds ``meta.json`` (format, model sha256, state layout), log segments ``log-NNNNNNNNNNNN.seg``
and snapshots ``snap-NNNNNNNNNNNN.bin``. Segment numbers only grow; snapshot ``n`` holds every live session as it
was when segment ``n`` was opened, so recovery loads the newest snapshot ``n`` and replays segments ``>= n``.
Salvage moves damaged files into ``damaged/`` (never deleted; no name there matches a segment or snapshot).

A segment is a sequence of records, each ``<u32 length><u32 crc32(payload)>payload`` (little-endian), payload::

    <u8 kind><f64 wall time><u16 len(principal)><u16 len(id)>principal id  (UTF-8)
    ADVANCE, PART: <u64 position after><u32 n><u32 token> * n
    CLOSE:   <u8 reason>
    CREATE, RESET: <u32 then>         (tokens the same request feeds next: the start counts only with them)
    UNDO:    nothing                  (written by a recovery: the session's start whose tokens never came, and its
                                       request's PART records not committed, are void)
    COMMIT:  nothing                  (the session's PART records so far count)

PART is an ADVANCE made by a unary request that makes several (a ``Predict`` with ``generate``): it counts only
once a COMMIT, or any other record of the session, follows; a crash before that voids the whole request.

A crash can leave the last record torn (cut short, or its checksum failing because its bytes never reached the
disk): :func:`scan` stops at the first bad record and reports where. A bad record that well-framed records follow
(:func:`resync` finds the next one) is damage, not a torn write.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CREATE, RESET, ADVANCE, CLOSE, UNDO, PART, COMMIT = 1, 2, 3, 4, 5, 6, 7
KINDS = (CREATE, RESET, ADVANCE, CLOSE, UNDO, PART, COMMIT)
REASONS = ("end", "close", "idle", "lifetime")
_REASON_CODE = {r: i for i, r in enumerate(REASONS)}

_HEAD = struct.Struct("<II")  # length, crc32
_COMMON = struct.Struct("<BdHH")  # kind, wall, len(principal), len(id)
_ADV = struct.Struct("<QI")  # position after, n
_U32 = struct.Struct("<I")
#: A record longer than this is corruption, not data (a request holds at most a few thousand tokens).
MAX_RECORD = 1 << 26

SEGMENT_RE = re.compile(r"^log-(\d{12})\.seg$")
SNAPSHOT_RE = re.compile(r"^snap-(\d{12})\.bin$")


@dataclass(frozen=True)
class Record:
    """One logged change of session ``(principal, session_id)``; ``tokens``/``position`` for ADVANCE and PART,
    ``reason`` for CLOSE, ``then`` for CREATE and RESET."""

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


def encode_advance(
    wall: float, principal: str, session_id: str, tokens: np.ndarray | int, position: int, part: bool = False
) -> bytes:
    """An ADVANCE record, or with ``part`` a PART record (see the module docstring)."""
    if isinstance(tokens, int):
        body = _ADV.pack(position, 1) + _U32.pack(tokens)
    else:
        body = _ADV.pack(position, len(tokens)) + np.asarray(tokens, dtype="<u4").tobytes()
    return _pack(PART if part else ADVANCE, wall, principal, session_id, body)


def encode_commit(wall: float, principal: str, session_id: str) -> bytes:
    return _pack(COMMIT, wall, principal, session_id)


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
    elif kind in (ADVANCE, PART):
        position, n = _ADV.unpack_from(payload, o)
        o += _ADV.size
        tokens = np.frombuffer(payload, dtype="<u4", count=n, offset=o).astype(np.int64)
        rest = 4 * n
        rec = Record(kind, wall, principal, session_id, tokens, position)
    elif kind in (UNDO, COMMIT):
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


def well_framed(data: bytes, o: int) -> bool:
    """Whether a whole, checksummed, decodable record starts at byte ``o`` of ``data``."""
    if len(data) - o < _HEAD.size + _COMMON.size:
        return False
    length, crc = _HEAD.unpack_from(data, o)
    p = o + _HEAD.size
    if not _COMMON.size <= length <= min(MAX_RECORD, len(data) - p) or data[p] not in KINDS:
        return False
    payload = data[p : p + length]
    if zlib.crc32(payload) != crc:
        return False
    try:
        decode(payload)
    except (ValueError, struct.error, UnicodeDecodeError, IndexError):
        return False
    return True


def resync(data: bytes, bad: int) -> int | None:
    """The first byte after ``bad`` (where a record failed) at which a well-framed record starts, or None: then the
    bad record is the last thing in ``data`` (a torn tail, when ``data`` is the newest segment)."""
    for o in range(bad + 1, len(data) - _HEAD.size - _COMMON.size + 1):
        if well_framed(data, o):
            return o
    return None


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
