"""The Clockwork RNN's exported step (model/export/clockwork.py): the step counter in the graphs' state advances,
wraps and gates the modules exactly like the NumPy cell, in the step and the sequence graph, fp32 and fp16."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import numpy_helper

from model import network
from model.cells.clockwork import block_mask
from model.config import ModelConfig
from model.export import build_graphs, make_session
from model.export.builder import all_nodes

TOL = 1e-5


def run(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = make_session(model.SerializeToString())
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def case(rng: np.random.Generator) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    cfg = ModelConfig(cell="clockwork", layers=2, hidden=4, vocab_size=6, embed=3)  # 4 modules: counter mod 8
    p = {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in network.init_params(cfg, rng).items()}
    return cfg, p


def test_step_counter_advances_wraps_and_gates_the_modules(rng: np.random.Generator) -> None:
    cfg, p = case(rng)
    counters = np.array([[0.0], [1.0], [2.0], [6.0], [7.0]], np.float32)
    B = len(counters)
    feeds = {"tokens": rng.integers(0, 6, B)}
    for l in range(2):
        feeds[f"h{l}"] = rng.normal(0, 0.5, (B, 4)).astype(np.float32)
        feeds[f"c{l}"] = counters
    got = run(build_graphs(cfg, p)["step"], feeds)
    for l in range(2):
        np.testing.assert_array_equal(got[f"c{l}_out"], [[1.0], [2.0], [3.0], [7.0], [0.0]])
        # module k (one unit each here) ticks when the counter is divisible by 2^k, else keeps h exactly
        for b, n in enumerate(counters[:, 0].astype(int)):
            for k in range(4):
                held = got[f"h{l}_out"][b, k] == feeds[f"h{l}"][b, k]
                assert held == (n % 2**k != 0), (l, b, k)
    state = [(feeds[f"h{l}"], counters) for l in range(2)]
    lp, fs = network.log_probs(cfg, p, feeds["tokens"][:, None], state)
    np.testing.assert_allclose(got["logprobs"], lp[:, 0], atol=TOL)
    for l, (h, c) in enumerate(fs):
        np.testing.assert_allclose(got[f"h{l}_out"], h, atol=TOL)
        np.testing.assert_array_equal(got[f"c{l}_out"], c)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_step_by_step_past_the_wrap_equals_sequence_and_numpy(precision: str, rng: np.random.Generator) -> None:
    """20 steps (the counter wraps at 8 twice) through step.onnx = one sequence.onnx call = NumPy; the counter
    stays an exact integer, in float16 too."""
    cfg, p = case(rng)
    g = build_graphs(cfg, p, precision)
    B, T = 3, 20
    x = rng.integers(0, 6, (B, T))
    zero = network.zero_state(cfg, B)
    zero_feeds = {k: v for l, (h, c) in enumerate(zero) for k, v in ((f"h{l}", h), (f"c{l}", c))}
    cur = dict(zero_feeds)
    step = make_session(g["step"].SerializeToString())
    names = [o.name for o in step.get_outputs()]
    for t in range(T):
        out = dict(zip(names, step.run(None, {"tokens": x[:, t], **cur}), strict=True))
        cur = {k: out[f"{k}_out"] for k in cur}
        np.testing.assert_array_equal(cur["c0"], np.full((B, 1), (t + 1) % 8))
    seq = run(g["sequence"], {"tokens": x, "lengths": np.full(B, T), **zero_feeds})
    _, fs = network.log_probs(cfg, p, x, zero)
    tol = TOL if precision == "fp32" else 5e-3
    for l, (h, c) in enumerate(fs):
        np.testing.assert_array_equal(seq[f"c{l}_out"], c)
        np.testing.assert_array_equal(cur[f"c{l}"], c)
        np.testing.assert_allclose(seq[f"h{l}_out"], h, atol=tol)
        np.testing.assert_allclose(cur[f"h{l}"], h, atol=tol)


def test_graph_masks_r_and_gates_with_where(rng: np.random.Generator) -> None:
    """The exported RT is block triangular even if the checkpoint is not; the clock is Round/Floor/Equal/Where."""
    cfg, p = case(rng)
    p["layer0/R"] = p["layer0/R"] + 1.0  # non-zero everywhere: the export must drop the forbidden blocks
    g = build_graphs(cfg, p)["step"]
    RT = next(i for i in g.graph.initializer if i.name == "layer0/RT_h")
    np.testing.assert_array_equal(numpy_helper.to_array(RT) != 0, block_mask(4).T)
    ops = {n.op_type for n in all_nodes(g.graph)}
    assert {"Round", "Floor", "Equal", "Where"} <= ops and not ops & {"Loop", "If", "Scan"}
