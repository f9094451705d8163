"""service/store/codec.py: states round-trip bit-exactly, the bytes are the documented layout, misfits are refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import StoreMismatch
from service.store.codec import decode_state, encode_state

WIDTHS = [4, 4, 6]


@settings(max_examples=50, deadline=None)
@given(
    widths=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    dtype=st.sampled_from([np.float32, np.float16, np.float64]),
    seed=st.integers(0, 2**31),
)
def test_state_round_trips_bit_exactly(widths: list[int], dtype: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    vs = [rng.standard_normal(w).astype(dtype) for w in widths]
    blob = encode_state(vs, dtype)
    assert len(blob) == 8 + 4 * len(widths) + sum(widths) * np.dtype(dtype).itemsize
    out = decode_state(blob, widths, dtype)
    assert [o.dtype for o in out] == [np.dtype(dtype)] * len(widths)
    for a, b in zip(vs, out, strict=True):
        assert a.tobytes() == b.tobytes()


def test_state_is_raw_little_endian_float32_after_the_header() -> None:
    v = np.array([1.5, -2.0], dtype=np.float32)
    blob = encode_state([v])
    assert blob[:4] == b"SQS1"
    assert blob[-8:] == v.astype("<f4").tobytes()


@pytest.mark.parametrize(
    ("mutate", "widths", "dtype", "match"),
    [
        (lambda b: b[:5], None, None, "shorter than"),
        (lambda b: b"XXXX" + b[4:], None, None, "bad header"),
        (lambda b: b[:-1], None, None, "header promises"),
        (lambda b: b, [4, 4, 5], None, r"widths \[4, 4, 6\].*widths \[4, 4, 5\]"),
        (lambda b: b, None, np.float16, "stored as float32"),
    ],
)
def test_decode_refuses_misfits(mutate: Callable[[bytes], bytes], widths: Any, dtype: Any, match: str) -> None:
    blob = encode_state([np.zeros(w, np.float32) for w in WIDTHS])
    with pytest.raises(StoreMismatch, match=match):
        decode_state(mutate(blob), widths, dtype)


def test_encode_refuses_integer_states() -> None:
    with pytest.raises(ValueError, match="int32"):
        encode_state([np.zeros(3, np.int32)], np.int32)
