"""Graph hygiene of every exported graph (covers model/export/builder.py and the graphs it builds)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from model import network
from model.config import CELLS, ModelConfig
from model.export import build_graphs
from model.export.builder import OPSET, GraphBuilder, Names, all_graphs, all_nodes

NATIVE_RECURRENT = {"LSTM", "GRU", "RNN"}


def graphs(cell: str, token: bool = True, precision: str = "fp32", layers: int = 2) -> dict[str, onnx.ModelProto]:
    rng = np.random.default_rng(0)
    if token:
        cfg = ModelConfig(cell=cell, layers=layers, hidden=4, vocab_size=6, embed=3)
    else:
        cfg = ModelConfig(cell=cell, layers=layers, hidden=4, head="mse", input_dim=3, output_dim=2)
    return build_graphs(cfg, network.init_params(cfg, rng), precision)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("token", [True, False])
def test_graph_hygiene(cell: str, token: bool) -> None:
    for kind, model in graphs(cell, token).items():
        onnx.checker.check_model(model, full_check=True)
        assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
        nodes = list(all_nodes(model.graph))
        ops = {n.op_type for n in nodes}
        assert not ops & NATIVE_RECURRENT, f"{kind}: built-in recurrent op {ops & NATIVE_RECURRENT}"
        assert ("Scan" in ops) == (kind == "sequence")
        names = [n.name for n in nodes]
        assert all(names), "every node is named"
        assert len(names) == len(set(names)), "node names are unique across graph and Scan bodies"
        assert all("/" in n for n in names), "hierarchical: scope/leaf"
        assert any(n.startswith("layer1/") for n in names)
        if kind == "sequence":
            assert sum(n.op_type == "Scan" for n in nodes) == 2  # one per layer
        inits = [i.name for g in all_graphs(model.graph) for i in g.initializer]
        assert len(inits) == len(set(inits))
        assert any(i.startswith("layer0/RT_") for i in inits)


def test_metadata_props() -> None:
    for kind, model in graphs("cifg").items():
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["format_version"] == "1"
        assert meta["cell"] == "cifg" and meta["layers"] == "2" and meta["hidden"] == "4"
        assert meta["vocab_size"] == "6" and meta["graph"] == kind and meta["precision"] == "fp32"
        assert json.loads(meta["state_names"]) == ["h0", "c0", "h1", "c1"]
        assert json.loads(meta["model_config"])["cell"] == "cifg"


def test_gate_nodes_read_like_the_cell() -> None:
    names = {n.name for n in all_nodes(graphs("lstm", layers=1)["step"].graph)}
    for leaf in ("gate_iof", "sigmoid_iof", "split_iof", "gate_c", "tanh_c", "f_c", "i_g", "c_new", "h_new"):
        assert f"layer0/{leaf}" in names
    seq = {n.name for n in all_nodes(graphs("gru", layers=1)["sequence"].graph)}
    assert {"layer0/scan", "layer0/step/gate_zr", "layer0/step/r_h", "layer0/step/gate_h"} <= seq


def test_io_signature() -> None:
    g = graphs("lstm", layers=1)
    assert [i.name for i in g["step"].graph.input] == ["tokens", "h0", "c0"]
    assert [o.name for o in g["step"].graph.output] == ["logprobs", "h0_out", "c0_out"]
    assert [i.name for i in g["sequence"].graph.input] == ["tokens", "lengths", "h0", "c0"]
    assert [o.name for o in g["sequence"].graph.output] == ["token_logprobs", "next_logprobs", "h0_out", "c0_out"]
    n = graphs("gru", token=False, layers=1)
    assert [i.name for i in n["sequence"].graph.input] == ["inputs", "lengths", "h0"]
    assert [o.name for o in n["sequence"].graph.output] == ["outputs", "h0_out"]
    batch = g["sequence"].graph.input[0].type.tensor_type.shape.dim
    assert batch[0].dim_param == "batch" and batch[1].dim_param == "time"


def test_duplicate_names_are_refused() -> None:
    gb = GraphBuilder("g", Names())
    with gb.scope("layer0"):
        gb.const("R", np.zeros(2))
        with pytest.raises(ValueError, match="duplicate"):
            gb.const("R", np.zeros(2))
