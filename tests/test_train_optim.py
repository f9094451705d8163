"""Optimisers, clipping and the schedule."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from model.errors import ConfigError
from model.train import optim


def test_adam_matches_the_textbook_update(rng: np.random.Generator) -> None:
    p = {"w": rng.standard_normal(5)}
    w0 = p["w"].copy()
    cfg = optim.OptimConfig()
    s = optim.init_state(cfg, p)
    m = v = np.zeros(5)
    w = w0.copy()
    for t in range(1, 4):
        g = rng.standard_normal(5)
        optim.step(cfg, p, {"w": g.copy()}, s, lr=0.01)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8 / math.sqrt(1 - 0.999**t))
    np.testing.assert_allclose(p["w"], w, rtol=1e-10)
    assert int(s["t"]) == 3


def test_sgd_momentum(rng: np.random.Generator) -> None:
    p = {"w": np.ones(3)}
    cfg = optim.OptimConfig(name="sgd", momentum=0.5)
    s = optim.init_state(cfg, p)
    optim.step(cfg, p, {"w": np.ones(3)}, s, lr=0.1)
    optim.step(cfg, p, {"w": np.ones(3)}, s, lr=0.1)
    np.testing.assert_allclose(p["w"], 1 - 0.1 * 1 - 0.1 * 1.5)


def test_adam_minimises_a_quadratic() -> None:
    p = {"w": np.array([3.0, -2.0])}
    cfg = optim.OptimConfig()
    s = optim.init_state(cfg, p)
    for _ in range(2000):
        optim.step(cfg, p, {"w": 2 * p["w"]}, s, lr=0.05)
    assert np.abs(p["w"]).max() < 1e-2


def test_clip_by_global_norm() -> None:
    g = {"a": np.array([3.0]), "b": np.array([4.0])}
    assert optim.clip_by_global_norm(g, 1.0) == pytest.approx(5.0)
    assert optim.global_norm(g) == pytest.approx(1.0)
    g2 = {"a": np.array([0.3])}
    optim.clip_by_global_norm(g2, 1.0)
    assert g2["a"][0] == 0.3


def test_schedule_warmup_then_cosine() -> None:
    lrs = [optim.lr_at(s, 1.0, warmup=10, total=110, min_lr_frac=0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55)
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


def test_unknown_optimizer() -> None:
    with pytest.raises(ConfigError, match="unknown optimizer 'adagrad'"):
        optim.OptimConfig(name="adagrad")
