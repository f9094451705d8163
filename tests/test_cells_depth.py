"""The Depth Gated LSTM (model/cells/depth.py, model/layer_depth.py): its step with the lower cell, BPTT through
time *and* across layers against float64 finite differences, and behavioural checks that the depth path is real.
"""

from __future__ import annotations

import numpy as np
import pytest
from chunking import run_in_chunks
from gradcheck import numeric_grad, rel_error
from hypothesis import given, settings
from hypothesis import strategies as st

from model import network as N
from model.cells import get_cell
from model.cells.depth import DepthGatedCell
from model.config import ModelConfig

TOL = 1e-6


def _cfg(head: str, layers: int, H: int = 3) -> ModelConfig:
    if head == "softmax":
        return ModelConfig(cell="depth-gated", layers=layers, hidden=H, vocab_size=5, embed=3)
    return ModelConfig(cell="depth-gated", layers=layers, hidden=H, head="mse", input_dim=3, output_dim=2)


def _random_state(cfg: ModelConfig, B: int, rng: np.random.Generator) -> N.State:
    return [(rng.standard_normal((B, cfg.hidden)), rng.standard_normal((B, cfg.hidden))) for _ in range(cfg.layers)]


def _inputs(cfg: ModelConfig, B: int, T: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if cfg.token_input:
        return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
    return rng.standard_normal((B, T, cfg.input_dim)), rng.standard_normal((B, T, cfg.output_dim))


def test_step_with_lower_cell_matches_finite_differences(rng: np.random.Generator) -> None:
    """Every input of one step (ax, h, c, the lower cell) and R, w_cd, w_ld, from random non-zero values."""
    cell = get_cell("depth-gated")
    assert isinstance(cell, DepthGatedCell)
    X, H, B = 4, 3, 2
    p = cell.init(X, H, rng, 1.0, np.float64)
    for k in p:
        p[k] = p[k] + rng.standard_normal(p[k].shape) * 0.5
    ax, h, c, low = (rng.standard_normal(s) for s in ((5 * H, B), (H, B), (H, B), (H, B)))
    wh, wc = rng.standard_normal((H, B)), rng.standard_normal((H, B))

    def loss() -> float:
        h2, c2, _ = cell.forward(p, ax.copy(), h.copy(), c.copy(), low=low.copy())
        return float((h2 * wh).sum() + (c2 * wc).sum())

    _, _, cache = cell.forward(p, ax.copy(), h.copy(), c.copy(), low=low.copy())
    dax, dh, dc, dlow, dD = cell.backward_low(p, cache, wh, wc)
    assert dlow is not None
    assert rel_error(dax[: 4 * H] @ h.T, numeric_grad(loss, p["R"])) < TOL
    assert rel_error(dD, numeric_grad(loss, p["D"])) < TOL
    for analytic, x in ((dax, ax), (dh, h), (dc, c), (dlow, low)):
        assert rel_error(analytic, numeric_grad(loss, x)) < TOL
    assert np.abs(dD).min() > 0  # both vectors matter once there is a lower cell


@pytest.mark.parametrize(
    ("head", "layers", "fold"),
    [("softmax", 3, True), ("softmax", 2, False), ("mse", 3, False)],  # test_network covers 2 layers too
)
def test_stacked_bptt_matches_finite_differences(
    head: str, layers: int, fold: bool, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 and 3 layers, T = 5, random non-zero h0/c0, every parameter (D and the d rows included) and state,
    with layer 0's input projection folded into the embedding table or not."""
    if not fold:
        monkeypatch.setattr(N, "FOLD_MAX_UNIQUE", 0)
    cfg = _cfg(head, layers)
    p = N.init_params(cfg, rng, np.float64)
    for k in p:
        p[k] = p[k] + rng.standard_normal(p[k].shape) * 0.4
    B, T = 2, 5
    x, y = _inputs(cfg, B, T, rng)
    w = rng.random((B, T))
    s0 = _random_state(cfg, B, rng)
    proj = _random_state(cfg, B, rng)

    def loss() -> float:
        f = N.forward(cfg, p, x, s0)
        total, _ = N.loss_and_dout(cfg, f.out, y, w)
        for (h, c), (ph, pc) in zip(f.state, proj, strict=True):
            assert c is not None and pc is not None
            total += float((h * ph).sum() + (c * pc).sum())
        return total

    f = N.forward(cfg, p, x, s0)
    assert (f.fold is not None) == fold
    _, dout = N.loss_and_dout(cfg, f.out, y, w)
    grads, ds0 = N.backward(cfg, p, f, dout, proj)
    for k in p:
        assert rel_error(grads[k], numeric_grad(loss, p[k])) < TOL, k
    for (h, c), (dh, dc) in zip(s0, ds0, strict=True):
        assert c is not None and dc is not None
        assert rel_error(dh, numeric_grad(loss, h)) < TOL
        assert rel_error(dc, numeric_grad(loss, c)) < TOL
    # layer 0 has no lower cell: its depth gate has no effect; above it, the gate is live
    H = cfg.hidden
    assert not grads["layer0/D"].any() and not grads["layer0/W"][4 * H :].any() and not grads["layer0/b"][4 * H :].any()
    for l in range(1, layers):
        assert np.abs(grads[f"layer{l}/D"]).min() > 0 and np.abs(grads[f"layer{l}/b"][4 * H :]).min() > 0


def _as_lstm(cfg: ModelConfig, p: dict[str, np.ndarray]) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """The plain LSTM with the i, o, f, c blocks of a depth-gated network's parameters."""
    lcfg = ModelConfig(**{**cfg.to_dict(), "cell": "lstm"})
    H = cfg.hidden
    out = {}
    for k, v in p.items():
        if k.endswith("/D"):
            continue
        out[k] = v[: 4 * H] if k.endswith(("/W", "/b")) else v
    return lcfg, out


@pytest.mark.parametrize("head", ["softmax", "mse"])
def test_closed_depth_gate_is_a_plain_lstm(head: str, rng: np.random.Generator) -> None:
    """d ≈ 0 (b_d = -60, w_cd = w_ld = 0): every layer equals the plain LSTM; opening the gate changes them."""
    cfg = _cfg(head, layers=3, H=4)
    p = N.init_params(cfg, rng, np.float64)
    H = cfg.hidden
    for l in range(cfg.layers):
        p[f"layer{l}/b"][4 * H :] = -60.0
    x, _ = _inputs(cfg, 2, 6, rng)
    s0 = _random_state(cfg, 2, rng)
    lcfg, lp = _as_lstm(cfg, p)
    closed, plain = N.forward(cfg, p, x, s0), N.forward(lcfg, lp, x, s0)
    np.testing.assert_allclose(closed.out, plain.out, rtol=0, atol=1e-12)
    for (h1, c1), (h2, c2) in zip(closed.state, plain.state, strict=True):
        np.testing.assert_allclose(h1, h2, rtol=0, atol=1e-12)
        np.testing.assert_allclose(c1, c2, rtol=0, atol=1e-12)
    # an open gate above layer 0 adds the lower cell: c^1_T differs by about c^0_T, layer 0 is unchanged
    p[f"layer{1}/b"][4 * H :] = 60.0
    opened = N.forward(cfg, p, x, s0)
    np.testing.assert_allclose(opened.state[0][1], plain.state[0][1], rtol=0, atol=1e-12)
    assert not np.allclose(opened.state[1][1], plain.state[1][1], atol=1e-3)
    assert not np.allclose(opened.out, plain.out, atol=1e-3)


def test_one_layer_is_exactly_the_lstm(rng: np.random.Generator) -> None:
    """Layer 0 has no lower cell (c^{-1} = 0): whatever its d weights, a 1-layer network is the plain LSTM."""
    cfg = _cfg("softmax", layers=1, H=4)
    p = {k: v + rng.standard_normal(v.shape) for k, v in N.init_params(cfg, rng, np.float64).items()}
    x, _ = _inputs(cfg, 3, 7, rng)
    s0 = _random_state(cfg, 3, rng)
    lcfg, lp = _as_lstm(cfg, p)
    np.testing.assert_array_equal(N.forward(cfg, p, x, s0).out, N.forward(lcfg, lp, x, s0).out)


@settings(max_examples=15, deadline=None)
@given(
    head=st.sampled_from(["softmax", "mse"]),
    T=st.integers(2, 10),
    cuts=st.lists(st.integers(1, 9), max_size=4),
    seed=st.integers(0, 2**16),
)
def test_chunked_run_equals_unsplit_run(head: str, T: int, cuts: list[int], seed: int) -> None:
    """3 layers: splitting anywhere and carrying (h, c) per layer gives exactly the unsplit run."""
    rng = np.random.default_rng(seed)
    cfg = _cfg(head, layers=3, H=4)
    p = {k: v + rng.standard_normal(v.shape) * 0.3 for k, v in N.init_params(cfg, rng, np.float64).items()}
    x, _ = _inputs(cfg, 3, T, rng)
    s0 = _random_state(cfg, 3, rng)
    whole = N.forward(cfg, p, x, s0)
    out, state = run_in_chunks(cfg, p, x, s0, cuts)
    np.testing.assert_allclose(out, whole.out, rtol=0, atol=1e-12)
    for (h1, c1), (h2, c2) in zip(state, whole.state, strict=True):
        np.testing.assert_allclose(h1, h2, rtol=0, atol=1e-12)
        np.testing.assert_allclose(c1, c2, rtol=0, atol=1e-12)
