"""FGR, full gate recurrence (model/cells/fgr.py): BPTT through the gate recurrence and the cell path against
float64 finite differences, and its relation to the peephole LSTM."""

from __future__ import annotations

import numpy as np
from gradcheck import numeric_grad, rel_error

from model import network as N
from model.cells import get_cell
from model.config import ModelConfig

TOL = 1e-6


def test_bptt_through_gate_recurrence_and_cell_path(rng: np.random.Generator) -> None:
    """T = 6 from a random non-zero state [h; c; i; o; f]: every parameter (Rg and P included), h0 and all 4H
    rows of the initial state, with a loss on the outputs and on the final state."""
    cfg = ModelConfig(cell="fgr", layers=1, hidden=3, head="mse", input_dim=2, output_dim=2)
    p = N.init_params(cfg, rng, np.float64)
    for k in p:
        p[k] = p[k] + rng.standard_normal(p[k].shape) * 0.4
    B, T, H = 2, 6, 3
    x, y = rng.standard_normal((B, T, 2)), rng.standard_normal((B, T, 2))
    c0 = np.concatenate([rng.standard_normal((B, H)), rng.random((B, 3 * H))], axis=1)  # gates lie in (0, 1)
    s0 = [(rng.standard_normal((B, H)), c0)]
    proj = [(rng.standard_normal((B, H)), rng.standard_normal((B, 4 * H)))]

    def loss() -> float:
        f = N.forward(cfg, p, x, s0)
        (h, c), (ph, pc) = f.state[0], proj[0]
        return N.loss_and_dout(cfg, f.out, y, None)[0] + float((h * ph).sum() + (c * pc).sum())

    f = N.forward(cfg, p, x, s0)
    grads, ds0 = N.backward(cfg, p, f, N.loss_and_dout(cfg, f.out, y, None)[1], proj)
    for k in p:
        assert rel_error(grads[k], numeric_grad(loss, p[k])) < TOL, k
    dh0, dc0 = ds0[0]
    assert dc0 is not None and dc0.shape == (B, 4 * H)
    assert rel_error(dh0, numeric_grad(loss, s0[0][0])) < TOL
    assert rel_error(dc0, numeric_grad(loss, c0)) < TOL
    # both paths carry real error: the old cell and the previous gates, and Rg is learned from it
    assert np.abs(dc0[:, :H]).min() > 0 and np.abs(dc0[:, H:]).max() > 1e-3
    assert np.abs(grads["layer0/Rg"]).min() > 0


def test_without_gate_recurrence_it_is_the_peephole_lstm(rng: np.random.Generator) -> None:
    """Rg = 0: h' and c' are the peephole LSTM's, and the state's rows H.. hold that step's i, o, f."""
    fgr, peep = get_cell("fgr"), get_cell("peephole")
    H, B = 4, 3
    p = fgr.init(2, H, rng, 1.0, np.float64)
    p["P"] = rng.standard_normal(3 * H)
    p["Rg"][:] = 0.0
    ax, h = rng.standard_normal((4 * H, B)), rng.standard_normal((H, B))
    c = np.concatenate([rng.standard_normal((H, B)), rng.random((3 * H, B))])
    h2, s2, _ = fgr.forward(p, ax.copy(), h, c)
    hp, cp, cache = peep.forward({"R": p["R"], "P": p["P"]}, ax.copy(), h, c[:H])
    np.testing.assert_allclose(h2, hp, rtol=0, atol=1e-14)
    np.testing.assert_allclose(s2[:H], cp, rtol=0, atol=1e-14)
    np.testing.assert_allclose(s2[H:], cache[0][: 3 * H], rtol=0, atol=1e-14)  # peephole's i, o, f


def test_the_previous_gates_change_the_step(rng: np.random.Generator) -> None:
    fgr = get_cell("fgr")
    H, B = 4, 2
    p = fgr.init(2, H, rng, 1.0, np.float64)
    ax, h, cm = rng.standard_normal((4 * H, B)), rng.standard_normal((H, B)), rng.standard_normal((H, B))
    a, _, _ = fgr.forward(p, ax.copy(), h, np.concatenate([cm, np.zeros((3 * H, B))]))
    b, _, _ = fgr.forward(p, ax.copy(), h, np.concatenate([cm, np.ones((3 * H, B))]))
    assert np.abs(a - b).max() > 1e-3
