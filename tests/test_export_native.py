"""Independent oracles: our explicit-gate graphs = onnxruntime's native LSTM/GRU/RNN operators, and
``onnx.reference.ReferenceEvaluator`` = onnxruntime (covers model/export/native.py).

The native graphs (time-major; CIFG = LSTM with input_forget=1 and a zero f block; GRU B = [Wb, Rb] with
Rb_h = our Rb for gru-lbr; a Greff variant = LSTM with its removed gate held open by a +50 bias, or an
identity activation as Affine(1, 0)) share only the input/scoring tail with ours, so a mistake in a cell's equations,
gate order or weight regrouping shows up here even if the NumPy model had the same mistake.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

from model import network
from model.config import CELLS, ModelConfig
from model.export import build_graphs, make_session
from model.export.native import OP, native_sequence_model, native_step_model

TOL = 1e-5


def run(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = make_session(model.SerializeToString())
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def case(cell: str, token: bool, seed: int, layers: int = 2, H: int = 7, B: int = 4, T: int = 6) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    if token:
        cfg = ModelConfig(cell=cell, layers=layers, hidden=H, vocab_size=9, embed=5)
        x = rng.integers(0, 9, (B, T))
    else:
        cfg = ModelConfig(cell=cell, layers=layers, hidden=H, head="mse", input_dim=3, output_dim=2)
        x = rng.normal(0.0, 1.0, (B, T, 3)).astype(np.float32)
    p = {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in network.init_params(cfg, rng).items()}
    feeds: dict[str, np.ndarray] = {"tokens" if token else "inputs": x}
    for l in range(layers):
        feeds[f"h{l}"] = rng.normal(0, 0.5, (B, H)).astype(np.float32)
        if cfg.has_c:
            feeds[f"c{l}"] = rng.normal(0, 0.5, (B, cfg.c_width)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B)  # the native ops reject length 0
    lengths[0] = T
    return cfg, p, feeds, lengths


def assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=TOL, rtol=0, err_msg=k)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("token", [True, False])
def test_sequence_matches_native_operator(cell: str, token: bool) -> None:
    if cell not in OP:
        pytest.skip(f"{cell} has no native ONNX operator")
    cfg, p, feeds, lengths = case(cell, token, seed=CELLS.index(cell))
    feeds["lengths"] = lengths
    assert_close(run(build_graphs(cfg, p)["sequence"], feeds), run(native_sequence_model(cfg, p), feeds))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("token", [True, False])
def test_step_matches_native_operator(cell: str, token: bool) -> None:
    if cell not in OP:
        pytest.skip(f"{cell} has no native ONNX operator")
    cfg, p, feeds, _ = case(cell, token, seed=10 + CELLS.index(cell))
    x = feeds.pop("tokens" if token else "inputs")
    feeds["tokens" if token else "inputs"] = x[:, 0]
    assert_close(run(build_graphs(cfg, p)["step"], feeds), run(native_step_model(cfg, p), feeds))


def test_native_graphs_use_the_native_operators() -> None:
    """Guards the oracle itself: it must not be built from our explicit ops."""
    cfg, p, _, _ = case("gru-lbr", True, seed=0)
    ops = {n.op_type for n in native_sequence_model(cfg, p).graph.node}
    assert "GRU" in ops and "Scan" not in ops


@pytest.mark.parametrize("cell", CELLS)
def test_reference_evaluator_agrees_on_step(cell: str) -> None:
    cfg, p, feeds, _ = case(cell, True, seed=20 + CELLS.index(cell))
    feeds["tokens"] = feeds["tokens"][:, 0]
    model = build_graphs(cfg, p)["step"]
    ref = ReferenceEvaluator(model)
    names = [o.name for o in model.graph.output]
    got = dict(zip(names, ref.run(None, feeds), strict=True))
    assert_close(got, run(model, feeds))


@pytest.mark.parametrize("cell", ["lstm", "gru", "nig", "niaf"])
def test_reference_evaluator_agrees_on_sequence(cell: str) -> None:
    """The Scan graph too (V > 64 exercises the GatherND paths that replace GatherElements)."""
    rng = np.random.default_rng(5)
    cfg = ModelConfig(cell=cell, layers=1, hidden=6, vocab_size=70, embed=4)
    p = {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in network.init_params(cfg, rng).items()}
    feeds = {"tokens": rng.integers(0, 70, (3, 5)), "lengths": np.array([5, 2, 0])}
    feeds.update({s: rng.normal(0, 0.5, (3, 6)).astype(np.float32) for s in (["h0", "c0"] if cfg.has_c else ["h0"])})
    model = build_graphs(cfg, p)["sequence"]
    got = dict(zip([o.name for o in model.graph.output], ReferenceEvaluator(model).run(None, feeds), strict=True))
    assert_close(got, run(model, feeds))
