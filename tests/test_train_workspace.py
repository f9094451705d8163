"""Per-thread scratch buffers: reused while a name keeps its shape and dtype, never shared between threads."""

from __future__ import annotations

import threading

import numpy as np

from model.train.workspace import Workspace, for_this_thread


def test_a_name_keeps_its_buffer_while_shape_and_dtype_match() -> None:
    ws = Workspace()
    a = ws.empty("a", (3, 4), np.float32)
    assert ws.empty("a", (3, 4), np.float32) is a
    b = ws.empty("a", (4, 3), np.float32)
    assert b is not a and b.shape == (4, 3)
    c = ws.empty("a", (4, 3), np.float64)
    assert c is not b and c.dtype == np.float64
    assert ws.empty("other", (4, 3), np.float64) is not c
    assert ws.nbytes == c.nbytes + 4 * 3 * 8


def test_zeros_clears_a_reused_buffer() -> None:
    ws = Workspace()
    ws.empty("z", (5,), np.float32)[:] = 7.0
    z = ws.zeros("z", (5,), np.float32)
    np.testing.assert_array_equal(z, np.zeros(5, np.float32))


def test_each_thread_has_its_own() -> None:
    mine = for_this_thread()
    assert for_this_thread() is mine
    seen: list[Workspace] = []
    t = threading.Thread(target=lambda: seen.append(for_this_thread()))
    t.start()
    t.join()
    assert seen and seen[0] is not mine
