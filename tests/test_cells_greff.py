"""The Greff et al. (2015) peephole-LSTM variants (covers model/cells/greff.py).

Each variant is checked to differ from the peephole LSTM exactly as specified, against the existing ``peephole``
cell (model/cells/lstm.py, an independent implementation) and a direct transcription of the equations; its
layout and initialisation; and its BPTT through a whole layer against float64 finite differences. The step
gradient checks, the 2-layer network checks and the export parity tests parametrize over ``CELLS`` and so cover
these cells too.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import numeric_grad, rel_error

from model import network as N
from model.cells import get_cell
from model.cells.base import Array, Params
from model.cells.greff import GREFF_CELLS, GreffCell
from model.config import CELLS, ModelConfig

X, H, B = 3, 4, 5
OPEN = 50.0  # σ(50) = 1 - 2e-22: a gate held open, exactly 1 in float64 up to rounding


def _sig(x: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-x))


def _random(cell: GreffCell, rng: np.random.Generator) -> tuple[Params, Array, Array, Array]:
    """Parameters with non-zero peepholes, and an input term, h and c, all random."""
    p = cell.init(X, H, rng, 1.0, np.float64)
    for k in p:
        p[k] = p[k] + rng.standard_normal(p[k].shape) * 0.5
    ax = rng.standard_normal((cell.G * H, B))
    return p, ax, rng.standard_normal((H, B)), rng.standard_normal((H, B))


def _reference(cell: GreffCell, p: Params, ax: Array, h: Array, c: Array) -> tuple[Array, Array]:
    """The module docstring's equations, transcribed without buffers or in-place tricks."""
    pre = {g: ax[k * H : (k + 1) * H] + p["R"][k * H : (k + 1) * H] @ h for k, g in enumerate(cell.gates)}
    P = {g: p["P"][k * H : (k + 1) * H, None] for k, g in enumerate(cell.peepholes)}
    i = _sig(pre["i"] + P["i"] * c) if "i" in pre else 1.0
    f = _sig(pre["f"] + P["f"] * c) if "f" in pre else 1.0
    g = np.tanh(pre["c"]) if cell.input_act else pre["c"]
    c2 = f * c + i * g
    o = _sig(pre["o"] + P["o"] * c2) if "o" in pre else 1.0
    return o * (np.tanh(c2) if cell.output_act else c2), c2


def test_names_and_layouts() -> None:
    assert tuple(GREFF_CELLS) == ("nig", "nfg", "nog", "niaf", "noaf")
    assert CELLS[CELLS.index("cifg") + 1 : CELLS.index("cifg") + 6] == tuple(GREFF_CELLS)
    layout = {n: (c.gates, c.peepholes, c.G) for n, c in GREFF_CELLS.items()}
    assert layout == {
        "nig": ("ofc", "of", 3),
        "nfg": ("ioc", "io", 3),
        "nog": ("ifc", "if", 3),
        "niaf": ("iofc", "iof", 4),
        "noaf": ("iofc", "iof", 4),
    }
    for name, cell in GREFF_CELLS.items():
        assert get_cell(name) is cell and cell.has_c and cell.c_width(H) == H
        assert cell.shapes(X, H) == {
            "W": (cell.G * H, X),
            "R": (cell.G * H, H),
            "b": (cell.G * H,),
            "P": (len(cell.peepholes) * H,),
        }


@pytest.mark.parametrize("name", list(GREFF_CELLS))
def test_init_forget_bias_and_zero_peepholes(name: str, rng: np.random.Generator) -> None:
    cell = GREFF_CELLS[name]
    p = cell.init(X, H, rng, 1.5, np.float32)
    assert all(v.dtype == np.float32 for v in p.values())
    assert np.all(p["P"] == 0)
    want = np.zeros(cell.G * H)
    if "f" in cell.gates:  # nfg has no forget gate, so no forget bias
        k = cell.gates.index("f")
        want[k * H : (k + 1) * H] = 1.5
    np.testing.assert_array_equal(p["b"], want)


@pytest.mark.parametrize("name", list(GREFF_CELLS))
def test_forward_follows_the_equations(name: str, rng: np.random.Generator) -> None:
    cell = GREFF_CELLS[name]
    p, ax, h, c = _random(cell, rng)
    h2, c2, _ = cell.forward(p, ax.copy(), h.copy(), c.copy())
    want_h, want_c = _reference(cell, p, ax, h, c)
    np.testing.assert_allclose(c2, want_c, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h2, want_h, rtol=0, atol=1e-12)


def test_nothing_removed_is_the_peephole_cell(rng: np.random.Generator) -> None:
    """The generic cell with no ablation reproduces model/cells/lstm.py's peephole LSTM, forward and backward."""
    full, peep = GreffCell("full"), get_cell("peephole")
    p, ax, h, c = _random(full, rng)
    h2, c2, cache = full.forward(p, ax.copy(), h, c)
    h2p, c2p, cachep = peep.forward(p, ax.copy(), h, c)
    np.testing.assert_allclose(h2, h2p, rtol=0, atol=1e-13)
    np.testing.assert_allclose(c2, c2p, rtol=0, atol=1e-13)
    dh2, dc2 = rng.standard_normal((H, B)), rng.standard_normal((H, B))
    got, want = full.backward(p, cache, dh2, dc2), peep.backward(p, cachep, dh2, dc2)
    for a, b in zip(got[:3], want[:3], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
    np.testing.assert_allclose(got[4]["P"], want[4]["P"], rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["nig", "nfg", "nog"])
def test_removed_gate_is_a_peephole_gate_held_open(name: str, rng: np.random.Generator) -> None:
    """nig/nfg/nog = the peephole LSTM whose i/f/o block has zero weights and a +50 bias (σ = 1)."""
    cell = GREFF_CELLS[name]
    p, ax, h, c = _random(cell, rng)
    have = {g: k for k, g in enumerate(cell.gates)}
    blocks = [ax[have[g] * H : (have[g] + 1) * H] if g in have else np.full((H, B), OPEN) for g in "iofc"]
    ax4 = np.concatenate(blocks)
    R4 = np.concatenate([p["R"][have[g] * H : (have[g] + 1) * H] if g in have else np.zeros((H, H)) for g in "iofc"])
    peep = {g: k for k, g in enumerate(cell.peepholes)}
    P3 = np.concatenate([p["P"][peep[g] * H : (peep[g] + 1) * H] if g in peep else np.zeros(H) for g in "iof"])
    h2, c2, _ = cell.forward(p, ax.copy(), h, c)
    h2p, c2p, _ = get_cell("peephole").forward({"R": R4, "P": P3}, ax4, h, c)
    np.testing.assert_allclose(c2, c2p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h2, h2p, rtol=0, atol=1e-12)


def test_nog_output_is_tanh_of_the_cell(rng: np.random.Generator) -> None:
    p, ax, h, c = _random(GREFF_CELLS["nog"], rng)
    h2, c2, _ = GREFF_CELLS["nog"].forward(p, ax, h, c)
    np.testing.assert_array_equal(h2, np.tanh(c2))


def test_noaf_output_is_the_gated_cell_without_tanh(rng: np.random.Generator) -> None:
    """Same parameters: noaf's c' is the peephole LSTM's, and h' = o∘c' where the peephole LSTM has o∘tanh(c')."""
    p, ax, h, c = _random(GREFF_CELLS["noaf"], rng)
    h2, c2, _ = GREFF_CELLS["noaf"].forward(p, ax.copy(), h, c)
    h2p, c2p, _ = get_cell("peephole").forward(p, ax.copy(), h, c)
    np.testing.assert_allclose(c2, c2p, rtol=0, atol=1e-13)
    o = h2p / np.tanh(c2p)
    assert np.all((o > 0) & (o < 1))
    np.testing.assert_allclose(h2, o * c2, rtol=1e-10, atol=1e-12)
    assert np.abs(h2).max() > 1.0 or np.abs(c2).max() > 1.0  # unbounded, unlike o∘tanh(c')


def test_niaf_candidate_is_the_pre_activation(rng: np.random.Generator) -> None:
    """With the forget gate shut (f = 0) and the input gate open (i = 1), c' is the candidate itself:
    the raw pre-activation for niaf, its tanh for the peephole LSTM."""
    niaf = GREFF_CELLS["niaf"]
    p, ax, h, c = _random(niaf, rng)
    p["P"][:] = 0.0  # so that i and f do not see c
    ax[:H], ax[2 * H : 3 * H] = OPEN, -OPEN  # blocks i, o, f, c
    ax[3 * H :] *= 3.0  # pre-activations well beyond tanh's range
    pre_c = ax[3 * H :] + p["R"][3 * H :] @ h
    _, c2, _ = niaf.forward(p, ax.copy(), h, c)
    _, c2p, _ = get_cell("peephole").forward(p, ax.copy(), h, c)
    np.testing.assert_allclose(c2, pre_c, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c2p, np.tanh(pre_c), rtol=0, atol=1e-12)
    assert np.abs(c2).max() > 1.0


def test_nfg_never_forgets(rng: np.random.Generator) -> None:
    """f = 1: with the input gate shut, the cell is carried over unchanged whatever c is."""
    nfg = GREFF_CELLS["nfg"]
    p, ax, h, c = _random(nfg, rng)
    p["P"][:H] = 0.0
    ax[:H] = -OPEN  # blocks i, o, c
    _, c2, _ = nfg.forward(p, ax, h, 10.0 * c)
    np.testing.assert_allclose(c2, 10.0 * c, rtol=0, atol=1e-12)


def test_nig_writes_the_whole_candidate(rng: np.random.Generator) -> None:
    """i = 1: with the forget gate shut, c' is the full candidate tanh(a_c + R_c h)."""
    nig = GREFF_CELLS["nig"]
    p, ax, h, c = _random(nig, rng)
    p["P"][H:] = 0.0  # blocks o, f, c; peepholes o, f
    ax[H : 2 * H] = -OPEN
    _, c2, _ = nig.forward(p, ax.copy(), h, c)
    np.testing.assert_allclose(c2, np.tanh(ax[2 * H :] + p["R"][2 * H :] @ h), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(GREFF_CELLS))
def test_sequence_bptt_matches_finite_differences(name: str, rng: np.random.Generator) -> None:
    """T = 6 steps of a 1-layer network from random non-zero h0 and c0, peepholes of order 1: W, R, b, P, the
    inputs' path and the initial state, with a loss on every output and on the final h and c."""
    cfg = ModelConfig(cell=name, layers=1, hidden=H, head="mse", input_dim=X, output_dim=2)
    p = N.init_params(cfg, rng, np.float64)
    for k in p:
        p[k] = p[k] + rng.standard_normal(p[k].shape) * (1.0 if k.endswith("/P") else 0.5)
    T = 6
    x, y = rng.standard_normal((B, T, X)), rng.standard_normal((B, T, 2))
    s0 = [(rng.standard_normal((B, H)), rng.standard_normal((B, H)))]
    wh, wc = rng.standard_normal((B, H)), rng.standard_normal((B, H))

    def loss() -> float:
        f = N.forward(cfg, p, x, s0)
        ((hT, cT),) = f.state
        assert cT is not None
        return N.loss_and_dout(cfg, f.out, y, None)[0] + float((hT * wh).sum() + (cT * wc).sum())

    f = N.forward(cfg, p, x, s0)
    _, dout = N.loss_and_dout(cfg, f.out, y, None)
    grads, ((dh0, dc0),) = N.backward(cfg, p, f, dout, [(wh, wc)])
    assert "layer0/P" in grads
    for k in p:
        assert rel_error(grads[k], numeric_grad(loss, p[k])) < 1e-6, k
    h0, c0 = s0[0]
    assert rel_error(dh0, numeric_grad(loss, h0)) < 1e-6
    assert dc0 is not None and rel_error(dc0, numeric_grad(loss, c0)) < 1e-6
