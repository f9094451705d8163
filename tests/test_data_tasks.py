"""Synthetic tasks: shapes, structure, the adding baseline, determinism and argument checks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from model.data.tasks import (
    ADDING_BASELINE_MSE,
    adding_problem,
    copy_task,
    copy_task_vocab,
    remember_first,
    remember_first_vocab,
)
from model.errors import ConfigError


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("T", [2, 3, 10, 51])
def test_adding_shapes_markers_and_target(T: int) -> None:
    x, y = adding_problem(rng(T), 64, T)
    assert x.shape == (64, T, 2) and x.dtype == np.float32
    assert y.shape == (64, 1) and y.dtype == np.float32
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values <= 1)).all()
    assert set(np.unique(markers).tolist()) <= {0.0, 1.0}
    half = T // 2
    np.testing.assert_array_equal(markers[:, :half].sum(axis=1), 1.0)
    np.testing.assert_array_equal(markers[:, half:].sum(axis=1), 1.0)
    np.testing.assert_allclose(y[:, 0], (values * markers).sum(axis=1), rtol=1e-6)


def test_adding_marker_positions_cover_each_half() -> None:
    T = 8
    x, _ = adding_problem(rng(1), 2000, T)
    pos = np.argwhere(x[..., 1] == 1.0)[:, 1]
    assert set(pos.tolist()) == set(range(T))


def test_adding_baseline_mse_is_one_sixth() -> None:
    _, y = adding_problem(rng(2), 200_000, 10)
    mse = float(np.mean((y.astype(np.float64) - 1.0) ** 2))
    assert abs(mse - 1 / 6) < 0.01
    assert abs(ADDING_BASELINE_MSE - 1 / 6) < 1e-3


@pytest.mark.parametrize(("lag", "k"), [(1, 2), (5, 4), (30, 3)])
def test_remember_first_structure(lag: int, k: int) -> None:
    inputs, targets, weights = remember_first(rng(lag), 128, lag, n_symbols=k)
    for a, dt in ((inputs, np.int64), (targets, np.int64), (weights, np.float32)):
        assert a.shape == (128, lag + 1) and a.dtype == dt
    assert remember_first_vocab(k) == 2 * k
    assert ((inputs[:, 0] >= 0) & (inputs[:, 0] < k)).all()
    assert ((inputs[:, 1:] >= k) & (inputs[:, 1:] < 2 * k)).all()
    np.testing.assert_array_equal(targets[:, -1], inputs[:, 0])
    np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])
    np.testing.assert_array_equal(weights[:, -1], 1.0)
    np.testing.assert_array_equal(weights[:, :-1], 0.0)
    assert len(np.unique(inputs[:, 0])) == k  # every key occurs in 128 draws


@pytest.mark.parametrize(("length", "delay", "k"), [(1, 0, 1), (10, 5, 8), (3, 20, 4)])
def test_copy_task_structure(length: int, delay: int, k: int) -> None:
    inputs, targets, weights = copy_task(rng(length + delay), 32, length, delay, n_symbols=k)
    total = 2 * length + delay + 1
    for a, dt in ((inputs, np.int64), (targets, np.int64), (weights, np.float32)):
        assert a.shape == (32, total) and a.dtype == dt
    blank, delim = k, k + 1
    assert copy_task_vocab(k) == k + 2
    symbols = inputs[:, :length]
    assert ((symbols >= 0) & (symbols < k)).all()
    np.testing.assert_array_equal(inputs[:, length : length + delay], blank)
    np.testing.assert_array_equal(inputs[:, length + delay], delim)
    np.testing.assert_array_equal(inputs[:, length + delay + 1 :], blank)
    np.testing.assert_array_equal(targets[:, -length:], symbols)
    np.testing.assert_array_equal(targets[:, :-length], blank)
    np.testing.assert_array_equal(weights[:, -length:], 1.0)
    np.testing.assert_array_equal(weights[:, :-length], 0.0)
    assert (inputs < copy_task_vocab(k)).all() and (targets < copy_task_vocab(k)).all()


def test_same_seed_same_batch_different_seed_different_batch() -> None:
    for make in (
        lambda g: adding_problem(g, 16, 20),
        lambda g: remember_first(g, 16, 10),
        lambda g: copy_task(g, 16, 5, 3),
    ):
        a, b, c = make(rng(7)), make(rng(7)), make(rng(8))
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
        assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(
    ("call", "name", "bad"),
    [
        (lambda: adding_problem(rng(), 0, 10), "batch", "0"),
        (lambda: adding_problem(rng(), 4, 1), "T", "1"),
        (lambda: adding_problem(rng(), 4, 2.5), "T", "2.5"),  # type: ignore[arg-type]
        (lambda: adding_problem(rng(), True, 10), "batch", "True"),
        (lambda: remember_first(rng(), 4, 0), "lag", "0"),
        (lambda: remember_first(rng(), 4, 3, n_symbols=0), "n_symbols", "0"),
        (lambda: remember_first(rng(), -1, 3), "batch", "-1"),
        (lambda: copy_task(rng(), 4, 0, 3), "length", "0"),
        (lambda: copy_task(rng(), 4, 2, -1), "delay", "-1"),
        (lambda: copy_task(rng(), 4, 2, 1, n_symbols=0), "n_symbols", "0"),
        (lambda: remember_first_vocab(0), "n_symbols", "0"),
        (lambda: copy_task_vocab(-2), "n_symbols", "-2"),
        (lambda: adding_problem(np.random.RandomState(0), 4, 10), "rng", "RandomState"),  # type: ignore[arg-type]
    ],
)
def test_invalid_arguments_raise_config_error(call: Callable[[], object], name: str, bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        call()
    msg = str(err.value)
    assert msg.startswith(f"{name}:") and bad in msg, msg
