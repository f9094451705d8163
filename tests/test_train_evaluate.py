"""Evaluation and sampling."""

from __future__ import annotations

import numpy as np

from model import network as N
from model.config import ModelConfig
from model.train.evaluate import evaluate, generate, sample_next, summary


def test_untrained_model_scores_near_uniform(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", hidden=8, vocab_size=16, embed=4)
    p = N.init_params(cfg, rng)
    p["head/W"][:] = 0  # exactly uniform predictions
    nats, n = evaluate(cfg, p, rng.integers(0, 16, 1000), batch=4, seq_len=32)
    assert abs(nats - np.log(16)) < 1e-5 and n == 4 * 249


def test_evaluate_equals_direct_log_probs(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="gru", hidden=8, vocab_size=10, embed=4)
    p = N.init_params(cfg, rng)
    ids = rng.integers(0, 10, 101)
    nats, n = evaluate(cfg, p, ids, batch=1, seq_len=13)
    logp, _ = N.log_probs(cfg, p, ids[None, :-1], N.zero_state(cfg, 1))
    direct = -logp[0, np.arange(100), ids[1:]].mean()
    assert n == 100 and abs(nats - direct) < 1e-5


def test_summary() -> None:
    s = summary(np.log(2.0))
    assert abs(s["bits_per_token"] - 1.0) < 1e-12 and abs(s["perplexity"] - 2.0) < 1e-12


def test_sampling_controls(rng: np.random.Generator) -> None:
    logp = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert sample_next(logp, rng, temperature=0) == 0
    assert {sample_next(logp, rng, top_k=2) for _ in range(200)} == {0, 1}
    assert {sample_next(logp, rng, top_p=0.7) for _ in range(200)} == {0, 1}
    counts = np.bincount([sample_next(logp, rng) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_generate_is_seeded(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="cifg", hidden=8, vocab_size=10, embed=4)
    p = N.init_params(cfg, rng)
    a = generate(cfg, p, np.array([1, 2]), 15, np.random.default_rng(7))
    b = generate(cfg, p, np.array([1, 2]), 15, np.random.default_rng(7))
    assert a == b and len(a) == 15 and all(0 <= t < 10 for t in a)
