"""Stream cutting for stateful TBPTT and evaluation windows."""

from __future__ import annotations

import numpy as np
import pytest

from model.data.streams import eval_windows, make_streams, window
from model.errors import DataError


def test_windows_continue_each_stream() -> None:
    ids = np.arange(103)
    S = make_streams(ids, 4, 5)
    assert S.shape == (4, 25)
    x, y, nxt = window(S, 0, 5)
    np.testing.assert_array_equal(x[1], np.arange(25, 30))
    np.testing.assert_array_equal(y, x + 1)
    x2, _, _ = window(S, nxt, 5)
    np.testing.assert_array_equal(x2[:, 0], x[:, -1] + 1)


def test_epoch_wraps_to_zero() -> None:
    S = make_streams(np.arange(40), 2, 4)  # 20 per stream: windows at 0, 4, 8, 12 then wrap
    pos, seen = 0, []
    for _ in range(5):
        seen.append(pos)
        _, _, pos = window(S, pos, 4)
    assert seen == [0, 4, 8, 12, 0]


def test_eval_windows_cover_every_token_once() -> None:
    S = make_streams(np.arange(50), 2, 1)
    ys = np.concatenate([y for _, y in eval_windows(S, 7)], axis=1)
    np.testing.assert_array_equal(ys, S[:, 1:])


def test_too_small_corpus() -> None:
    with pytest.raises(DataError, match=r"has 10 tokens, fewer than batch \* \(seq_len \+ 1\) = 12"):
        make_streams(np.arange(10), 2, 5)
