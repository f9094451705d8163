"""The real-valued input path with the MSE head learns the adding problem (a short run)."""

from __future__ import annotations

import numpy as np

from model import network as N
from model.config import ModelConfig
from model.data.tasks import ADDING_BASELINE_MSE, adding_problem
from model.train import optim


def test_lstm_beats_the_adding_baseline_at_T20() -> None:
    rng = np.random.default_rng(0)
    cfg = ModelConfig(cell="lstm", hidden=24, head="mse", input_dim=2, output_dim=1)
    p = N.init_params(cfg, rng)
    oc = optim.OptimConfig()
    s = optim.init_state(oc, p)
    T, B = 20, 32
    w = np.zeros((B, T), dtype=np.float32)
    w[:, -1] = 1  # only the last step is scored
    for _ in range(400):
        x, y = adding_problem(rng, B, T)
        tgt = np.repeat(y[:, None, :], T, axis=1)
        f = N.forward(cfg, p, x, N.zero_state(cfg, B))
        _, dout = N.loss_and_dout(cfg, f.out, tgt, w)
        g, _ = N.backward(cfg, p, f, dout)
        optim.clip_by_global_norm(g, 1.0)
        optim.step(oc, p, g, s, lr=1e-2)
    x, y = adding_problem(np.random.default_rng(1), 512, T)
    pred = N.forward(cfg, p, x, N.zero_state(cfg, 512)).out[0, -1]
    mse = float(((pred - y[:, 0]) ** 2).mean())
    assert mse < ADDING_BASELINE_MSE / 5, mse
