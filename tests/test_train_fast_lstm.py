"""The trainer's batch-major LSTM path: float64 finite differences, and the same loss, gradients and final
state as the generic network for any shape, dropout, weights and either input projection."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import numeric_grad, rel_error
from hypothesis import given, settings
from hypothesis import strategies as st

from model import network as N
from model.config import ModelConfig
from model.train import fast_lstm
from model.train.parallel import batch_grads


def _generic(cfg: ModelConfig, p: N.Params, x, y, state, w, rng) -> tuple[float, N.Params, N.State]:  # type: ignore[no-untyped-def]
    fwd = N.forward(cfg, p, x, state, dropout_rng=rng)
    loss, dout = N.loss_and_dout(cfg, fwd.out, y, w)
    grads, _ = N.backward(cfg, p, fwd, dout)
    return loss, grads, fwd.state


def _state(cfg: ModelConfig, B: int, rng: np.random.Generator) -> N.State:
    return [(rng.standard_normal((B, cfg.hidden)), rng.standard_normal((B, cfg.hidden))) for _ in range(cfg.layers)]


def test_supports_plain_token_lstm_only() -> None:
    assert fast_lstm.supports(ModelConfig(cell="lstm", vocab_size=5))
    for cell in ("peephole", "cifg", "gru", "rnn"):
        assert not fast_lstm.supports(ModelConfig(cell=cell, vocab_size=5))
    assert not fast_lstm.supports(ModelConfig(cell="lstm", head="mse", input_dim=3, output_dim=2))


def test_rejects_a_config_it_does_not_run(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="gru", layers=1, hidden=4, vocab_size=5, embed=3)
    p = N.init_params(cfg, rng)
    x = rng.integers(0, 5, (2, 3))
    with pytest.raises(ValueError, match=r"cell: .*'gru'"):
        fast_lstm.batch_grads(cfg, p, x, x, N.zero_state(cfg, 2))


def test_every_gradient_matches_finite_differences(rng: np.random.Generator) -> None:
    """Two layers, T = 4, random non-zero h0/c0, loss weights; every parameter block in float64."""
    cfg = ModelConfig(cell="lstm", layers=2, hidden=4, vocab_size=5, embed=3)
    p = N.init_params(cfg, rng, np.float64)
    for k in p:
        p[k] = p[k] + rng.standard_normal(p[k].shape) * 0.3
    B, T = 2, 4
    x, y = rng.integers(0, 5, (B, T)), rng.integers(0, 5, (B, T))
    w = rng.random((B, T))
    s0 = _state(cfg, B, rng)
    _, _, grads, _ = fast_lstm.batch_grads(cfg, p, x, y, s0, w)

    def loss() -> float:
        return fast_lstm.batch_grads(cfg, p, x, y, s0, w)[0]

    for k in p:
        assert rel_error(grads[k], numeric_grad(loss, p[k])) < 1e-6, k


@settings(max_examples=40, deadline=None)
@given(
    layers=st.integers(1, 3),
    B=st.integers(1, 4),
    T=st.integers(1, 5),
    H=st.integers(1, 6),
    V=st.integers(2, 12),
    dropout=st.sampled_from([0.0, 0.4]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_equals_the_generic_network(
    layers: int, B: int, T: int, H: int, V: int, dropout: float, weighted: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    cfg = ModelConfig(cell="lstm", layers=layers, hidden=H, vocab_size=V, embed=3, dropout=dropout)
    p = N.init_params(cfg, rng, np.float64)
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    w = rng.random((B, T)) + 0.1 if weighted else None
    s0 = _state(cfg, B, rng)
    drop = dropout > 0
    l1, g1, st1 = _generic(cfg, p, x, y, s0, w, np.random.default_rng(seed) if drop else None)
    l2, wsum, g2, st2 = fast_lstm.batch_grads(cfg, p, x, y, s0, w, np.random.default_rng(seed) if drop else None)
    assert l2 == pytest.approx(l1, rel=1e-12)
    assert wsum == pytest.approx(B * T if w is None else w.sum())
    assert list(g2) == list(p)
    for k in p:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-9, atol=1e-12, err_msg=k)
    for (h1, c1), (h2, c2) in zip(st1, st2, strict=True):
        np.testing.assert_allclose(h2, h1, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c2, c1, rtol=1e-12, atol=1e-14)


def test_unfolded_input_projection_when_a_batch_has_many_distinct_tokens(rng: np.random.Generator) -> None:
    """More than FOLD_MAX_UNIQUE distinct ids: layer 0 takes the embedding rows and one GEMM instead."""
    cfg = ModelConfig(cell="lstm", layers=2, hidden=5, vocab_size=400, embed=3)
    p = N.init_params(cfg, rng, np.float64)
    B, T = 4, 80
    x = rng.permutation(400)[: B * T].reshape(B, T)
    assert len(np.unique(x)) > N.FOLD_MAX_UNIQUE
    y = rng.integers(0, 400, (B, T))
    s0 = _state(cfg, B, rng)
    l1, g1, _ = _generic(cfg, p, x, y, s0, None, None)
    l2, _, g2, _ = fast_lstm.batch_grads(cfg, p, x, y, s0)
    assert l2 == pytest.approx(l1, rel=1e-12)
    for k in p:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_float32_agrees_with_float64(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", layers=2, hidden=32, vocab_size=20, embed=8)
    p64 = N.init_params(cfg, rng, np.float64)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    x, y = rng.integers(0, 20, (4, 16)), rng.integers(0, 20, (4, 16))
    s64 = _state(cfg, 4, rng)
    s32 = [(h.astype(np.float32), c.astype(np.float32)) for h, c in s64]
    l64, _, g64, _ = fast_lstm.batch_grads(cfg, p64, x, y, s64)
    l32, _, g32, _ = fast_lstm.batch_grads(cfg, p32, x, y, s32)
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in p64:
        assert g32[k].dtype == np.float32
        assert rel_error(g32[k], g64[k]) < 1e-4, k


def test_zero_weights_are_refused(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", layers=1, hidden=4, vocab_size=5, embed=3)
    p = N.init_params(cfg, rng)
    x = rng.integers(0, 5, (2, 3))
    with pytest.raises(ValueError, match="weights"):
        fast_lstm.batch_grads(cfg, p, x, x, N.zero_state(cfg, 2), np.zeros((2, 3)))


def test_the_trainer_takes_this_path_for_lstm(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ModelConfig(cell="lstm", layers=1, hidden=4, vocab_size=5, embed=3)
    p = N.init_params(cfg, rng)
    x = rng.integers(0, 5, (2, 3))
    calls = []
    real = fast_lstm.batch_grads
    monkeypatch.setattr(fast_lstm, "batch_grads", lambda *a: calls.append(1) or real(*a))
    batch_grads(cfg, p, x, x, N.zero_state(cfg, 2))
    assert calls == [1]


def test_results_do_not_alias_the_reused_buffers(rng: np.random.Generator) -> None:
    """The workspace is reused by the next call: what a call returns must survive it unchanged."""
    cfg = ModelConfig(cell="lstm", layers=2, hidden=6, vocab_size=7, embed=3)
    p = N.init_params(cfg, rng)
    x1, x2 = rng.integers(0, 7, (3, 5)), rng.integers(0, 7, (3, 5))
    _, _, g1, s1 = fast_lstm.batch_grads(cfg, p, x1, x1, N.zero_state(cfg, 3))
    kept = ({k: v.copy() for k, v in g1.items()}, [(h.copy(), c.copy()) for h, c in s1])  # type: ignore[union-attr]
    fast_lstm.batch_grads(cfg, p, x2, x2, _state(cfg, 3, rng))
    for k in g1:
        np.testing.assert_array_equal(g1[k], kept[0][k], err_msg=k)
    for (h, c), (hk, ck) in zip(s1, kept[1], strict=True):
        np.testing.assert_array_equal(h, hk)
        np.testing.assert_array_equal(c, ck)
