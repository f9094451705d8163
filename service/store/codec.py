"""Session states as bytes: a small header and the raw little-endian values (never pickle).

Layout (all little-endian)::

    magic "SQS1" | dtype code u8 (1 float32, 2 float16, 3 float64) | reserved u8 | K u16
    K x width u32
    the K vectors' values, one after the other

Used by the shared store (:mod:`service.store.redis`); K vectors of any widths (h, and c as wide as the cell needs).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import StoreMismatch

STATE_MAGIC = b"SQS1"
#: magic, dtype code, reserved, K; then K little-endian uint32 widths; then the K vectors' values.
_HEAD = struct.Struct("<4sBBH")
_DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("<f8")}
_CODES = {dt.str: code for code, dt in _DTYPES.items()}


def encode_state(vectors: Sequence[np.ndarray], dtype: Any = np.float32) -> bytes:
    """K state vectors (``[W_k]`` each) -> bytes: an 8-byte header, K uint32 widths, the values (little-endian).

    ``dtype`` is float32, float16 or float64 (the runtime's state dtype)."""
    dt = np.dtype(dtype).newbyteorder("<")
    code = _CODES.get(dt.str)
    if code is None:
        raise ValueError(f"state dtype: {np.dtype(dtype)} is not float32, float16 or float64")
    flat = [np.ascontiguousarray(np.asarray(v).reshape(-1), dtype=dt) for v in vectors]
    widths = struct.pack(f"<{len(flat)}I", *(len(v) for v in flat))
    return b"".join([_HEAD.pack(STATE_MAGIC, code, 0, len(flat)), widths, *(v.tobytes() for v in flat)])


def decode_state(blob: bytes, widths: Sequence[int] | None = None, dtype: Any = None) -> list[np.ndarray]:
    """Inverse of :func:`encode_state`; with ``widths``/``dtype`` given, a state of another shape or dtype raises
    :class:`~service.errors.StoreMismatch` (as does a malformed blob), naming what was found and what was wanted."""
    if len(blob) < _HEAD.size:
        raise StoreMismatch(f"state: {len(blob)} bytes, shorter than the {_HEAD.size}-byte header")
    magic, code, _, K = _HEAD.unpack_from(blob)
    if magic != STATE_MAGIC or code not in _DTYPES:
        raise StoreMismatch(f"state: bad header (magic {magic!r}, dtype code {code}); not written by seqpred")
    dt = _DTYPES[code]
    off = _HEAD.size + 4 * K
    if len(blob) < off:
        raise StoreMismatch(f"state: {len(blob)} bytes, too short for the widths of {K} vectors")
    got = list(struct.unpack_from(f"<{K}I", blob, _HEAD.size))
    if len(blob) != off + sum(got) * dt.itemsize:
        raise StoreMismatch(f"state: {len(blob)} bytes, but the header promises {K} vectors of widths {got} ({dt})")
    if widths is not None and got != list(widths):
        raise StoreMismatch(f"state: vectors of widths {got}, but this model's state has widths {list(widths)}")
    if dtype is not None and dt != np.dtype(dtype).newbyteorder("<"):
        raise StoreMismatch(f"state: stored as {dt.name}, but this model's state is {np.dtype(dtype).name}")
    out: list[np.ndarray] = []
    for w in got:
        out.append(np.frombuffer(blob, dtype=dt, count=w, offset=off).astype(dt.newbyteorder("="), copy=True))
        off += w * dt.itemsize
    return out
