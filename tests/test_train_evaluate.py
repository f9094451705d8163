"""Evaluation and sampling."""

from __future__ import annotations

import numpy as np
import pytest

from model import network as N
from model.config import ModelConfig
from model.errors import ConfigError
from model.train.evaluate import eval_streams, evaluate, generate, sample_next, summary, token_nll


def test_untrained_model_scores_near_uniform(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", hidden=8, vocab_size=16, embed=4)
    p = N.init_params(cfg, rng)
    p["head/W"][:] = 0  # exactly uniform predictions
    res = evaluate(cfg, p, rng.integers(0, 16, 1000), batch=4, seq_len=32)
    assert abs(res.nats_per_token - np.log(16)) < 1e-5 and res.tokens == res.total == 4 * 249 and res.complete
    assert res.streams == 4 and res.stderr is not None and res.stderr < 1e-5


def test_evaluate_equals_direct_log_probs(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="gru", hidden=8, vocab_size=10, embed=4)
    p = N.init_params(cfg, rng)
    ids = rng.integers(0, 10, 101)
    res = evaluate(cfg, p, ids, batch=1, seq_len=13)
    logp, _ = N.log_probs(cfg, p, ids[None, :-1], N.zero_state(cfg, 1))
    direct = -logp[0, np.arange(100), ids[1:]].mean()
    assert res.tokens == 100 and abs(res.nats_per_token - direct) < 1e-5 and res.stderr is None


def test_token_nll_is_the_training_loss_without_its_gradient(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", hidden=8, vocab_size=50, embed=4)
    out = (rng.standard_normal((50, 7, 3)) * 5).astype(np.float32)
    y = rng.integers(0, 50, (3, 7))
    loss, _ = N.loss_and_dout(cfg, out, y, None)
    nll = token_nll(out, y)
    assert nll.shape == (7, 3) and abs(nll.mean() - loss) < 1e-5
    expect = -N.log_softmax(out.astype(np.float64))[y.T, np.arange(7)[:, None], np.arange(3)[None, :]]
    np.testing.assert_allclose(nll, expect, atol=1e-5)


def test_a_sample_is_spread_over_the_split_and_extends_the_same_streams(rng: np.random.Generator) -> None:
    """A bounded sample takes the head of each of the B contiguous streams of the whole split (not a prefix of
    the text); a larger sample extends the same streams; its score equals scoring those streams directly."""
    ids = np.arange(10_000)
    full = eval_streams(ids, 4, 16)
    assert full.shape == (4, 2500) and full[1, 0] == 2500
    small, big = eval_streams(ids, 4, 16, max_tokens=400), eval_streams(ids, 4, 16, max_tokens=800)
    assert small.shape == (4, 100) and big.shape == (4, 200)
    np.testing.assert_array_equal(small, full[:, :100])
    np.testing.assert_array_equal(big[:, :100], small)
    assert eval_streams(ids, 4, 16, max_tokens=20_000).shape == full.shape
    assert eval_streams(ids, 32, 16, max_tokens=100).shape == (5, 20)  # each stream keeps >= seq_len + 1 tokens
    cfg = ModelConfig(cell="lstm", hidden=8, vocab_size=20, embed=4)
    p = N.init_params(cfg, rng)
    text = rng.integers(0, 20, 5_000)
    res = evaluate(cfg, p, text, batch=4, seq_len=16, max_tokens=400)
    S = eval_streams(text, 4, 16, max_tokens=400)
    logp, _ = N.log_probs(cfg, p, S[:, :-1], N.zero_state(cfg, 4))
    nll = -np.take_along_axis(logp, S[:, 1:, None], axis=2)[..., 0]  # [B, n-1]
    assert res.tokens == 4 * 99 and abs(res.nats_per_token - nll.mean()) < 1e-5
    means = nll.mean(axis=1)
    assert res.stderr is not None and abs(res.stderr - means.std(ddof=1) / 2) < 1e-5


def test_stop_ends_at_a_window_boundary_with_progress(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="gru", hidden=8, vocab_size=20, embed=4)
    p = N.init_params(cfg, rng)
    ids = rng.integers(0, 20, 4_001)
    seen: list[tuple[int, int]] = []
    res = evaluate(cfg, p, ids, batch=4, seq_len=100, progress=lambda n, t: seen.append((n, t)), stop=lambda: True)
    assert (res.tokens, res.total, res.complete) == (400, 3996, False)
    assert seen == [(400, 3996)]
    seen.clear()
    whole = evaluate(cfg, p, ids, batch=4, seq_len=100, progress=lambda n, t: seen.append((n, t)))
    assert whole.complete and [n for n, _ in seen] == [*range(400, 4000, 400), 3996]
    with pytest.raises(ConfigError, match="max_tokens: must be >= 0"):
        evaluate(cfg, p, ids, max_tokens=-1)


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
