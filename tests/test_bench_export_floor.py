"""The export benchmark's floor graph: valid, runs on the same feeds as sequence.onnx, refuses other models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from harness.export_floor import floor_sequence_model  # noqa: E402

from model import network  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.export import build_graphs, make_session  # noqa: E402


def _sequence(layers: int = 1, cell: str = "lstm") -> onnx.ModelProto:
    cfg = ModelConfig(cell=cell, layers=layers, hidden=8, vocab_size=7, embed=3)
    return build_graphs(cfg, network.init_params(cfg, np.random.default_rng(0)), "fp32")["sequence"]


def test_floor_keeps_the_interface_and_drops_the_cell_math() -> None:
    ours = _sequence()
    floor = floor_sequence_model(ours)
    rng = np.random.default_rng(1)
    B, T = 3, 5
    feeds = {
        "tokens": rng.integers(0, 7, (B, T)),
        "lengths": np.array([5, 2, 0], np.int64),
        "h0": rng.standard_normal((B, 8)).astype(np.float32),
        "c0": rng.standard_normal((B, 8)).astype(np.float32),
    }
    want = make_session(ours.SerializeToString()).run(None, feeds)
    got = make_session(floor.SerializeToString()).run(None, feeds)
    assert [g.shape for g in got] == [w.shape for w in want]
    body = next(a.g for n in floor.graph.node if n.op_type == "Scan" for a in n.attribute if a.name == "body")
    ops = [n.op_type for n in body.node]
    assert ops == ["Gather", "Gemm", "Sigmoid", "Slice", "Slice", "Identity", "Identity"]
    assert not {"Mul", "Add", "Tanh", "LSTM"} & set(ops)
    # the original graph is left as it was
    assert (
        sum(
            n.op_type == "Mul"
            for n in next(
                a.g for n in ours.graph.node if n.op_type == "Scan" for a in n.attribute if a.name == "body"
            ).node
        )
        == 3
    )


@pytest.mark.parametrize(("layers", "cell", "problem"), [(2, "lstm", "found 2"), (1, "gru", "LSTM body")])
def test_floor_refuses_graphs_it_does_not_model(layers: int, cell: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        floor_sequence_model(_sequence(layers, cell))
