"""The Depth Gated LSTM's graphs (model/export/depth.py and its plumbing in step.py / sequence.py): 3-layer
parity with the NumPy model and with ``onnx.reference.ReferenceEvaluator``, the cross-layer wiring, and the
native oracle's clean refusal. (The generic per-cell parity tests in test_export_cells.py cover 1-2 layers.)
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator
from test_export_cells import assert_close, numpy_sequence, perturbed_params, random_state, run, state_feeds

from model import network
from model.config import ModelConfig
from model.errors import ConfigError
from model.export import build_graphs
from model.export.native import native_sequence_model, native_step_model


def _case(token: bool, layers: int = 3, H: int = 5, B: int = 4, T: int = 6, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    if token:
        cfg = ModelConfig(cell="depth-gated", layers=layers, hidden=H, vocab_size=70, embed=4)
        x = rng.integers(0, 70, (B, T))
    else:
        cfg = ModelConfig(cell="depth-gated", layers=layers, hidden=H, head="mse", input_dim=3, output_dim=2)
        x = rng.normal(0.0, 1.0, (B, T, 3)).astype(np.float32)
    p = perturbed_params(cfg, rng, scale=0.5)
    lengths = np.array([T, 0, 2, T - 1])[:B]
    return cfg, p, x, lengths, random_state(cfg, B, rng)


def _ref(model: object, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in model.graph.output]  # type: ignore[attr-defined]
    return dict(zip(names, ReferenceEvaluator(model).run(None, feeds), strict=True))


@pytest.mark.parametrize("token", [True, False])
def test_three_layer_graphs_match_numpy_and_the_reference_evaluator(token: bool) -> None:
    cfg, p, x, lengths, state = _case(token)
    g = build_graphs(cfg, p)
    key = "tokens" if token else "inputs"
    feeds = {key: x, "lengths": lengths, **state_feeds(state)}
    seq = run(g["sequence"], feeds)
    assert_close(seq, numpy_sequence(cfg, p, x, lengths, state))
    assert_close(_ref(g["sequence"], feeds), seq)
    step_feeds = {key: x[:, 0], **state_feeds(state)}
    step = run(g["step"], step_feeds)
    fwd = network.forward(cfg, p, x[:, :1], state)
    want = {"logprobs": network.log_softmax(fwd.out[:, 0], axis=0).T} if token else {"output": fwd.out[:, 0].T}
    for l, (h, c) in enumerate(fwd.state):
        want[f"h{l}_out"], want[f"c{l}_out"] = h, c
    assert_close(step, want)
    assert_close(_ref(g["step"], step_feeds), step)


def test_layers_read_the_cell_below() -> None:
    """Layer 0 is the plain LSTM step (no d); layer l > 0 reads c_{l-1}': c{l-1}_out in the step graph, one more
    scan input (the layer below's c sequence) in the sequence graph."""
    cfg, p, *_ = _case(True, layers=3)
    g = build_graphs(cfg, p)
    inits = {i.name for i in g["step"].graph.initializer}
    assert "layer1/w_cd" in inits and "layer2/w_ld" in inits
    assert not any(n.startswith("layer0/") and n.endswith(("w_cd", "w_ld", "_d")) for n in inits)
    nodes = g["step"].graph.node
    for l in (1, 2):
        readers = {n.name for n in nodes if f"c{l - 1}_out" in n.input}
        assert any(r.startswith(f"layer{l}/") for r in readers), readers
    scans = [n for n in g["sequence"].graph.node if n.op_type == "Scan"]
    counts = [next(a.i for a in n.attribute if a.name == "num_scan_inputs") for n in scans]
    assert counts == [1, 4, 4]  # tokens | AX_iof, AX_c, AX_d, the cells below


def test_native_oracle_refuses_depth_gated() -> None:
    cfg, p, *_ = _case(True, layers=2)
    for build in (native_sequence_model, native_step_model):
        with pytest.raises(ConfigError, match="cell: 'depth-gated' has no native ONNX operator"):
            build(cfg, p)
