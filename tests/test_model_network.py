"""The network: exact BPTT through time and down the layers, state carrying, float32 vs float64."""

from __future__ import annotations

import numpy as np
import pytest
from chunking import run_in_chunks
from gradcheck import numeric_grad, rel_error
from hypothesis import given, settings
from hypothesis import strategies as st

from model import network as N
from model.config import CELLS, ModelConfig

TOL = 1e-6


def _cfg(cell: str, head: str = "softmax", layers: int = 2) -> ModelConfig:
    if head == "softmax":
        return ModelConfig(cell=cell, layers=layers, hidden=4, vocab_size=5, embed=3)
    return ModelConfig(cell=cell, layers=layers, hidden=4, head="mse", input_dim=3, output_dim=2)


def _random_state(cfg: ModelConfig, B: int, rng: np.random.Generator) -> N.State:
    return [
        (rng.standard_normal((B, cfg.hidden)), rng.standard_normal((B, cfg.c_width)) if cfg.has_c else None)
        for _ in range(cfg.layers)
    ]


@pytest.mark.parametrize("head", ["softmax", "mse"])
@pytest.mark.parametrize("cell", CELLS)
def test_two_layer_bptt_matches_finite_differences(cell: str, head: str, rng: np.random.Generator) -> None:
    """Every parameter block and the initial states, T = 4, random non-zero h0/c0, random-projection loss."""
    cfg = _cfg(cell, head)
    p = N.init_params(cfg, rng, np.float64)
    for k in p:
        p[k] = p[k] + rng.standard_normal(p[k].shape) * 0.3
    B, T = 2, 4
    if head == "softmax":
        x, y = rng.integers(0, 5, (B, T)), rng.integers(0, 5, (B, T))
    else:
        x, y = rng.standard_normal((B, T, 3)), rng.standard_normal((B, T, 2))
    w = rng.random((B, T))
    s0 = _random_state(cfg, B, rng)
    proj = _random_state(cfg, B, rng)  # the loss also depends on the final state

    def loss() -> float:
        f = N.forward(cfg, p, x, s0)
        total, _ = N.loss_and_dout(cfg, f.out, y, w)
        for (h, c), (ph, pc) in zip(f.state, proj, strict=True):
            total += float((h * ph).sum()) + (0.0 if c is None else float((c * pc).sum()))
        return total

    f = N.forward(cfg, p, x, s0)
    _, dout = N.loss_and_dout(cfg, f.out, y, w)
    grads, ds0 = N.backward(cfg, p, f, dout, proj)
    assert list(grads) == list(p)
    for k in p:
        assert rel_error(grads[k], numeric_grad(loss, p[k])) < TOL, k
    for (h, c), (dh, dc) in zip(s0, ds0, strict=True):
        assert rel_error(dh, numeric_grad(loss, h)) < TOL
        if c is not None:
            assert dc is not None and rel_error(dc, numeric_grad(loss, c)) < TOL


@settings(max_examples=25, deadline=None)
@given(
    cell=st.sampled_from(CELLS),
    T=st.integers(2, 12),
    cuts=st.lists(st.integers(1, 11), max_size=4),
    seed=st.integers(0, 2**16),
)
def test_chunked_run_equals_unsplit_run(cell: str, T: int, cuts: list[int], seed: int) -> None:
    """Splitting a sequence anywhere and carrying the state across gives exactly the unsplit run."""
    rng = np.random.default_rng(seed)
    cfg = _cfg(cell)
    p = N.init_params(cfg, rng, np.float64)
    x = rng.integers(0, 5, (3, T))
    s0 = _random_state(cfg, 3, rng)
    whole = N.forward(cfg, p, x, s0)
    out, state = run_in_chunks(cfg, p, x, s0, cuts)
    np.testing.assert_allclose(out, whole.out, rtol=0, atol=1e-12)
    for (h1, c1), (h2, c2) in zip(state, whole.state, strict=True):
        np.testing.assert_allclose(h1, h2, rtol=0, atol=1e-12)
        if c1 is not None:
            np.testing.assert_allclose(c1, c2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_training_path_agrees_with_float64(cell: str, rng: np.random.Generator) -> None:
    """Loss within 1e-5 relative and every gradient within 1e-3 relative (float32 vs float64)."""
    cfg = ModelConfig(cell=cell, layers=2, hidden=32, vocab_size=20, embed=16)
    p64 = N.init_params(cfg, rng, np.float64)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    x, y = rng.integers(0, 20, (8, 24)), rng.integers(0, 20, (8, 24))
    results = []
    for p, dtype in ((p64, np.float64), (p32, np.float32)):
        f = N.forward(cfg, p, x, N.zero_state(cfg, 8, dtype))
        loss, dout = N.loss_and_dout(cfg, f.out, y, None)
        grads, _ = N.backward(cfg, p, f, dout)
        assert all(g.dtype == dtype for g in grads.values())
        results.append((loss, grads))
    (l64, g64), (l32, g32) = results
    assert abs(l32 - l64) / l64 < 1e-5
    for k in g64:
        assert rel_error(g32[k], g64[k]) < 1e-3, k


def test_log_probs_are_normalised_and_batch_first(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", layers=2, hidden=8, vocab_size=11, embed=4)
    p = N.init_params(cfg, rng)
    logp, state = N.log_probs(cfg, p, rng.integers(0, 11, (3, 5)), N.zero_state(cfg, 3))
    assert logp.shape == (3, 5, 11)
    np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, atol=1e-5)
    assert [s[0].shape for s in state] == [(3, 8), (3, 8)]


def test_dropout_only_when_training(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="gru", layers=2, hidden=8, vocab_size=11, embed=4, dropout=0.5)
    p = N.init_params(cfg, rng)
    x = rng.integers(0, 11, (2, 6))
    a = N.forward(cfg, p, x, N.zero_state(cfg, 2)).out
    b = N.forward(cfg, p, x, N.zero_state(cfg, 2)).out
    c = N.forward(cfg, p, x, N.zero_state(cfg, 2), dropout_rng=np.random.default_rng(0)).out
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_param_names_and_shapes(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="peephole", layers=2, hidden=6, vocab_size=9, embed=4)
    shapes = N.param_shapes(cfg)
    assert shapes == {k: v.shape for k, v in N.init_params(cfg, rng).items()}
    assert shapes["embed"] == (9, 4) and shapes["layer0/W"] == (24, 4) and shapes["layer1/W"] == (24, 6)
    assert shapes["layer0/P"] == (18,) and shapes["head/W"] == (9, 6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_folded_and_plain_embedding_paths_agree(
    cell: str, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layer 0's input projection folded with the embedding (few distinct ids) equals the plain GEMM path."""
    cfg = ModelConfig(cell=cell, layers=2, hidden=6, vocab_size=30, embed=5)
    p = N.init_params(cfg, rng, np.float64)
    x, y = rng.integers(0, 30, (4, 9)), rng.integers(0, 30, (4, 9))
    results = []
    for limit in (N.FOLD_MAX_UNIQUE, 0):
        monkeypatch.setattr(N, "FOLD_MAX_UNIQUE", limit)
        f = N.forward(cfg, p, x, N.zero_state(cfg, 4, np.float64))
        assert (f.fold is not None) == (limit > 0)
        _, dout = N.loss_and_dout(cfg, f.out, y, None)
        results.append((f.out, N.backward(cfg, p, f, dout)[0]))
    (o1, g1), (o2, g2) = results
    np.testing.assert_allclose(o1, o2, rtol=0, atol=1e-12)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=0, atol=1e-12, err_msg=k)
