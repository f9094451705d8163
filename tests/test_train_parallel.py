"""Batch sharding over threads gives the unsharded loss, gradients and state."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from model import network as N
from model.config import ModelConfig
from model.train.parallel import sharded_grads


@pytest.mark.parametrize("shards", [2, 3])
@pytest.mark.parametrize("cell", ["lstm", "gru-lbr"])
def test_sharded_equals_unsharded(cell: str, shards: int, rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell=cell, layers=2, hidden=8, vocab_size=13, embed=4)
    p = N.init_params(cfg, rng, np.float64)
    B, T = 7, 5
    x, y = rng.integers(0, 13, (B, T)), rng.integers(0, 13, (B, T))
    w = rng.random((B, T))
    s0 = [(rng.standard_normal((B, 8)), rng.standard_normal((B, 8)) if cfg.has_c else None) for _ in range(2)]
    l1, g1, st1 = sharded_grads(cfg, p, x, y, s0, None, 1, weights=w)
    with ThreadPoolExecutor(shards) as pool:
        l2, g2, st2 = sharded_grads(cfg, p, x, y, s0, pool, shards, weights=w)
    assert l2 == pytest.approx(l1, rel=1e-12)
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-10, atol=1e-13, err_msg=k)
    for (h1, c1), (h2, c2) in zip(st1, st2, strict=True):  # equal up to the GEMMs' summation order
        np.testing.assert_allclose(h2, h1, rtol=1e-12, atol=1e-15)
        if c1 is not None:
            np.testing.assert_allclose(c2, c1, rtol=1e-12, atol=1e-15)


def test_sharded_dropout_is_reproducible(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", layers=2, hidden=8, vocab_size=13, embed=4, dropout=0.3)
    p = N.init_params(cfg, rng)
    x, y = rng.integers(0, 13, (6, 5)), rng.integers(0, 13, (6, 5))
    s0 = N.zero_state(cfg, 6)
    with ThreadPoolExecutor(2) as pool:
        a = sharded_grads(cfg, p, x, y, s0, pool, 2, rng=np.random.default_rng(1))
        b = sharded_grads(cfg, p, x, y, s0, pool, 2, rng=np.random.default_rng(1))
    assert a[0] == b[0]
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k])
