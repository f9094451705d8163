"""swap01 equals NumPy's own transposed copy for every shape, dtype and stride pattern."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.layout import MAX_ROW_BYTES, swap01


@settings(max_examples=200, deadline=None)
@given(
    shape=st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(0, 80)),
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.float16]),
    view=st.sampled_from(["plain", "step0", "step1", "swapped", "last_strided"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_swap01_equals_numpy_transpose_copy(shape: tuple[int, int, int], dtype: type, view: str, seed: int) -> None:
    base: np.ndarray = (
        np.random.default_rng(seed).standard_normal((2 * shape[0], 2 * shape[1], 2 * shape[2])).astype(dtype)
    )
    a = {
        "plain": base[: shape[0], : shape[1], : shape[2]],
        "step0": base[::2, : shape[1], : shape[2]],
        "step1": base[: shape[0], ::2, : shape[2]],
        "swapped": base[: shape[1], : shape[0], : shape[2]].transpose(1, 0, 2),
        "last_strided": base[: shape[0], : shape[1], ::2],
    }[view]
    got = swap01(a)
    want = np.ascontiguousarray(a.transpose(1, 0, 2))
    assert got.flags.c_contiguous
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_rows_of_one_element_and_long_rows_take_their_paths() -> None:
    a = np.arange(24, dtype=np.float32).reshape(4, 6, 1)[:, :, ::1]
    np.testing.assert_array_equal(swap01(a), a.transpose(1, 0, 2))
    long_row = MAX_ROW_BYTES // 4 + 1
    b = np.arange(2 * 3 * long_row, dtype=np.float32).reshape(2, 3, long_row)
    np.testing.assert_array_equal(swap01(b), b.transpose(1, 0, 2))


def test_rejects_arrays_that_are_not_3d() -> None:
    with pytest.raises(ValueError, match=r"3-D array, got shape \(2, 3\)"):
        swap01(np.zeros((2, 3)))
