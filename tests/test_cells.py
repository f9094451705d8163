"""Every cell's step backward against float64 finite differences, from random non-zero states."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import numeric_grad, rel_error

from model.cells import get_cell
from model.cells.base import step_grads
from model.config import CELLS
from model.errors import ConfigError

TOL = 1e-6


@pytest.mark.parametrize("name", CELLS)
def test_step_backward_matches_finite_differences(name: str, rng: np.random.Generator) -> None:
    cell = get_cell(name)
    X, H, B = 5, 4, 3
    p = cell.init(X, H, rng, 1.0, np.float64)
    for k in p:  # non-trivial values everywhere (peepholes and biases start at 0)
        p[k] = p[k] + rng.standard_normal(p[k].shape) * 0.5
    ax = rng.standard_normal((cell.G * H, B))
    h = rng.standard_normal((H, B))
    C = cell.c_width(H)  # H for the LSTM family; fgr 4H ([c; i; o; f]); clockwork 1 (its step counter)
    c = rng.standard_normal((C, B)) if cell.has_c else None
    wh, wc = rng.standard_normal((H, B)), rng.standard_normal((C, B))  # random projection loss

    def loss() -> float:
        h2, c2, _ = cell.forward(p, ax.copy(), h.copy(), None if c is None else c.copy())
        return float((h2 * wh).sum() + (0.0 if c2 is None else (c2 * wc).sum()))

    _, _, cache = cell.forward(p, ax.copy(), h.copy(), None if c is None else c.copy())
    dax, dh, dc, grads = step_grads(cell, p, cache, h, wh, wc if cell.has_c else None)
    assert set(grads) == set(p) - {"W", "b"}
    for k, g in grads.items():
        assert rel_error(g, numeric_grad(loss, p[k])) < TOL, k
    assert rel_error(dax, numeric_grad(loss, ax)) < TOL
    assert rel_error(dh, numeric_grad(loss, h)) < TOL
    if c is not None:
        assert dc is not None
        assert rel_error(dc, numeric_grad(loss, c)) < TOL


@pytest.mark.parametrize("name", CELLS)
def test_shapes_follow_onnx_layout(name: str, rng: np.random.Generator) -> None:
    cell = get_cell(name)
    p = cell.init(7, 5, rng, 1.0, np.float32)
    assert {k: v.shape for k, v in p.items()} == cell.shapes(7, 5)
    G = {
        "rnn": 1,
        "lstm": 4,
        "peephole": 4,
        "cifg": 3,
        "nig": 3,
        "nfg": 3,
        "nog": 3,
        "niaf": 4,
        "noaf": 4,
        "depth-gated": 5,
        "gru": 3,
        "gru-lbr": 3,
        "fgr": 4,
        "clockwork": 1,
    }[name]
    GR = 4 if name == "depth-gated" else G  # the depth gate has no recurrent weights
    assert p["W"].shape == (G * 5, 7) and p["R"].shape == (GR * 5, 5)
    assert all(v.dtype == np.float32 for v in p.values())


def test_forget_bias_sits_in_the_onnx_f_block(rng: np.random.Generator) -> None:
    H = 6
    b = get_cell("lstm").init(3, H, rng, 1.0, np.float64)["b"]
    assert np.all(b[2 * H : 3 * H] == 1.0)  # ONNX order i, o, f, c
    assert np.all(b[: 2 * H] == 0) and np.all(b[3 * H :] == 0)
    b0 = get_cell("lstm").init(3, H, rng, 0.0, np.float64)["b"]
    assert np.all(b0 == 0)


def test_cifg_forget_gate_is_one_minus_input(rng: np.random.Generator) -> None:
    """CIFG equals an LSTM whose forget pre-activation makes f = 1 - i exactly."""
    X, H, B = 3, 4, 2
    cifg, lstm = get_cell("cifg"), get_cell("lstm")
    p = cifg.init(X, H, rng, 0.0, np.float64)
    p["R"] = rng.standard_normal(p["R"].shape)
    ax = rng.standard_normal((3 * H, B))
    h, c = rng.standard_normal((H, B)), rng.standard_normal((H, B))
    h2, c2, cache = cifg.forward(p, ax, h, c)
    i = cache[0][:H]
    # f = 1 - i = σ(-a_i): an LSTM with the f block set to minus the i block reproduces it
    R4 = np.concatenate([p["R"][: 2 * H], -p["R"][:H], p["R"][2 * H :]])
    ax4 = np.concatenate([ax[: 2 * H], -ax[:H], ax[2 * H :]])
    h2l, c2l, _ = lstm.forward({"R": R4}, ax4, h, c)
    np.testing.assert_allclose(h2, h2l, atol=1e-12)
    np.testing.assert_allclose(c2, c2l, atol=1e-12)
    assert np.all((i > 0) & (i < 1))


def test_gru_update_convention(rng: np.random.Generator) -> None:
    """h' = (1 - z) h~ + z h: a saturated z = 1 keeps the old state (ONNX/PyTorch convention)."""
    H, B = 4, 2
    for name in ("gru", "gru-lbr"):
        cell = get_cell(name)
        p = cell.init(3, H, rng, 0.0, np.float64)
        ax = rng.standard_normal((3 * H, B))
        ax[:H] = 50.0  # z -> 1
        h = rng.standard_normal((H, B))
        h2, _, _ = cell.forward(p, ax, h, None)
        np.testing.assert_allclose(h2, h, atol=1e-12)


def test_unknown_cell_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="cell: unknown cell 'lstmx'"):
        get_cell("lstmx")
