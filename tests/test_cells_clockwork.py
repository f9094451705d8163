"""The Clockwork RNN (model/cells/clockwork.py): the module rule, modules that really hold their value between
ticks, the step counter carried across chunks and wrapping, and the block-triangular R kept through training."""

from __future__ import annotations

import numpy as np
import pytest
from chunking import run_in_chunks
from gradcheck import numeric_grad, rel_error
from hypothesis import given, settings
from hypothesis import strategies as st

from model import network as N
from model.cells import get_cell
from model.cells.clockwork import block_mask, cycle, modules
from model.config import ModelConfig
from model.train import optim

TOL = 1e-6


@pytest.mark.parametrize(("H", "M"), [(128, 8), (256, 8), (16, 8), (100, 5), (12, 6), (7, 7), (4, 4), (11, 1), (1, 1)])
def test_module_rule(H: int, M: int) -> None:
    """M = the largest divisor of H not above 8; periods 1 .. 2^(M-1), the counter kept modulo 2^(M-1)."""
    assert modules(H) == M and cycle(H) == 2 ** (M - 1)
    assert get_cell("clockwork").c_width(H) == 1


def test_each_module_holds_between_its_ticks(rng: np.random.Generator) -> None:
    """Module k changes exactly at the steps t with t mod 2^k == 0 and keeps its value in between."""
    cell = get_cell("clockwork")
    H, B, T = 8, 2, 40  # 8 modules of one unit, periods 1 .. 128
    p = cell.init(3, H, rng, 0.0, np.float64)
    h, c = rng.standard_normal((H, B)), np.zeros((1, B))
    for t in range(T):
        ax = rng.standard_normal((H, B))
        h2, c2, _ = cell.forward(p, ax, h, c)
        for k in range(H):
            if t % 2**k == 0:
                assert np.all(h2[k] != h[k]), (t, k)  # a tick: tanh of a fresh random input
            else:
                np.testing.assert_array_equal(h2[k], h[k])
        np.testing.assert_array_equal(c2, np.full((1, B), (t + 1) % 128))
        h, c = h2, c2


def test_rows_with_different_counters_tick_independently(rng: np.random.Generator) -> None:
    cell = get_cell("clockwork")
    H = 4  # 4 modules of one unit, periods 1, 2, 4, 8
    p = cell.init(2, H, rng, 0.0, np.float64)
    h = rng.standard_normal((H, 4))
    c = np.array([[0.0, 1.0, 2.0, 7.0]])
    h2, c2, _ = cell.forward(p, rng.standard_normal((H, 4)), h, c)
    ticked = h2 != h
    np.testing.assert_array_equal(ticked[:, 0], [True, True, True, True])  # t = 0: every module
    np.testing.assert_array_equal(ticked[:, 1], [True, False, False, False])
    np.testing.assert_array_equal(ticked[:, 2], [True, True, False, False])
    np.testing.assert_array_equal(ticked[:, 3], [True, False, False, False])
    np.testing.assert_array_equal(c2, [[1.0, 2.0, 3.0, 0.0]])  # 7 + 1 wraps at N = 8


def _cfg(H: int = 4, layers: int = 2) -> ModelConfig:
    return ModelConfig(cell="clockwork", layers=layers, hidden=H, vocab_size=5, embed=3)


@settings(max_examples=20, deadline=None)
@given(T=st.integers(2, 40), cuts=st.lists(st.integers(1, 39), max_size=5), seed=st.integers(0, 2**16))
def test_chunked_from_zero_state_equals_unsplit_and_the_counter_wraps(T: int, cuts: list[int], seed: int) -> None:
    """What streaming relies on: the counter in the carried state makes any chunking give the unsplit run, also
    past the counter's wrap (H = 4: N = 8)."""
    rng = np.random.default_rng(seed)
    cfg = _cfg()
    p = N.init_params(cfg, rng, np.float64)
    x = rng.integers(0, 5, (3, T))
    whole = N.forward(cfg, p, x, N.zero_state(cfg, 3, np.float64))
    out, state = run_in_chunks(cfg, p, x, N.zero_state(cfg, 3, np.float64), cuts)
    np.testing.assert_allclose(out, whole.out, rtol=0, atol=1e-12)  # GEMM sizes differ
    for (h1, c1), (h2, c2) in zip(state, whole.state, strict=True):
        np.testing.assert_allclose(h1, h2, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(c1, np.full((3, 1), T % 8))


def test_bptt_over_several_cycles_matches_finite_differences(rng: np.random.Generator) -> None:
    """T = 11 from counters 0, 3, 6 (H = 4, N = 8): every parameter, h0, and the (zero) gradient of the counter."""
    cfg = ModelConfig(cell="clockwork", layers=2, hidden=4, head="mse", input_dim=3, output_dim=2)
    p = N.init_params(cfg, rng, np.float64)
    for k in p:
        p[k] = p[k] + rng.standard_normal(p[k].shape) * 0.3 * (block_mask(4) if k.endswith("/R") else 1.0)
    B, T = 3, 11
    x, y = rng.standard_normal((B, T, 3)), rng.standard_normal((B, T, 2))
    s0 = [(rng.standard_normal((B, 4)), np.array([[0.0], [3.0], [6.0]])) for _ in range(2)]

    def loss() -> float:
        return N.loss_and_dout(cfg, N.forward(cfg, p, x, s0).out, y, None)[0]

    f = N.forward(cfg, p, x, s0)
    grads, ds0 = N.backward(cfg, p, f, N.loss_and_dout(cfg, f.out, y, None)[1])
    for k in p:
        assert rel_error(grads[k], numeric_grad(loss, p[k])) < TOL, k
    for (h, c), (dh, dc) in zip(s0, ds0, strict=True):
        assert rel_error(dh, numeric_grad(loss, h)) < TOL
        assert dc is not None and not dc.any() and not numeric_grad(loss, c).any()


def test_training_keeps_r_block_triangular(rng: np.random.Generator) -> None:
    """Zero blocks at init, exactly zero gradient there, so Adam never moves them; the allowed blocks do learn."""
    cfg = _cfg(H=8, layers=1)  # 8 modules of one unit
    p = N.init_params(cfg, rng)
    mask = block_mask(8)
    assert not p["layer0/R"][~mask].any() and p["layer0/R"][mask].all()
    oc = optim.OptimConfig()
    st_ = optim.init_state(oc, p)
    R0 = p["layer0/R"].copy()
    for _ in range(3):
        x, y = rng.integers(0, 5, (4, 20)), rng.integers(0, 5, (4, 20))
        # h0 != 0: in 20 steps the slow modules tick only at t = 0, and learn only from h0 there
        s0 = [(rng.standard_normal((4, 8)).astype(np.float32), np.zeros((4, 1), np.float32))]
        f = N.forward(cfg, p, x, s0)
        grads, _ = N.backward(cfg, p, f, N.loss_and_dout(cfg, f.out, y, None)[1])
        assert not grads["layer0/R"][~mask].any()
        optim.step(oc, p, grads, st_, 1e-2)
    assert not p["layer0/R"][~mask].any()
    assert np.abs(p["layer0/R"] - R0)[mask].min() > 0


def test_the_lower_blocks_are_never_read(rng: np.random.Generator) -> None:
    """Non-zero values where the mask forbids a connection (e.g. a hand-edited checkpoint) change nothing."""
    cell = get_cell("clockwork")
    p = cell.init(3, 8, rng, 0.0, np.float64)
    h, c, ax = rng.standard_normal((8, 2)), np.zeros((1, 2)), rng.standard_normal((8, 2))
    want, _, _ = cell.forward(p, ax, h, c)
    p["R"] = p["R"] + rng.standard_normal((8, 8)) * ~block_mask(8)
    got, _, _ = cell.forward(p, ax, h, c)
    np.testing.assert_array_equal(got, want)
