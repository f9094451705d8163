"""fp16 and int8 exports (covers model/export/precision.py).

Tolerances measured on random models (2 layers, H=32, V=20, 4 x 30 tokens, 4 seeds per cell): fp16 moved any
token log-prob by at most 1.6e-3 and the mean by at most 1.1e-4 nats; int8 (dynamic, per-channel weights)
by at most 0.31 (the RNN; 0.06-0.17 for the gated cells) and the mean by at most 6.4e-3 nats. The bounds
below leave about 3x margin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from model import network
from model.config import CELLS, ModelConfig
from model.data.tokenizers import CharTokenizer
from model.export import build_graphs, export_model, load_model_dir, make_session
from model.export.builder import all_graphs, all_nodes

BOUNDS = {"fp16": (5e-3, 3e-4), "int8": (1.0, 0.02)}  # (max abs per token, |mean change|) in nats


def run(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = make_session(model.SerializeToString())
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def case(cell: str, seed: int = 0) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cfg = ModelConfig(cell=cell, layers=2, hidden=32, vocab_size=20, embed=8)
    p = {k: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32) for k, v in network.init_params(cfg, rng).items()}
    B, T = 4, 30
    feeds = {"tokens": rng.integers(0, 20, (B, T)), "lengths": np.array([T, T, 17, 1])}
    for s in ["h0", "c0", "h1", "c1"] if cfg.has_c else ["h0", "h1"]:
        feeds[s] = rng.normal(0, 0.3, (B, 32 if s[0] == "h" else cfg.c_width)).astype(np.float32)
    return cfg, p, feeds


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("cell", CELLS)
def test_reduced_precision_is_close_to_fp32(cell: str, precision: str) -> None:
    cfg, p, feeds = case(cell, seed=CELLS.index(cell))
    ref = run(build_graphs(cfg, p)["sequence"], feeds)
    got = run(build_graphs(cfg, p, precision)["sequence"], feeds)
    max_abs, mean_tol = BOUNDS[precision]
    d = got["token_logprobs"] - ref["token_logprobs"]
    assert float(np.abs(d).max()) <= max_abs
    assert abs(float(d.sum()) / float((feeds["lengths"] - 1).sum())) <= mean_tol
    for k in ref:
        assert got[k].dtype == np.float32 and got[k].shape == ref[k].shape


def test_fp16_keeps_float32_io_and_int64() -> None:
    cfg, p, _ = case("lstm")
    for model in build_graphs(cfg, p, "fp16").values():
        io = list(model.graph.input) + list(model.graph.output)
        assert {v.type.tensor_type.elem_type for v in io} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
        inits = [i for g in all_graphs(model.graph) for i in g.initializer]
        assert {i.data_type for i in inits} <= {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64}
        names = [n.name for n in all_nodes(model.graph)]
        assert len(names) == len(set(names))
        assert {p.key: p.value for p in model.metadata_props}["precision"] == "fp16"


def test_int8_quantizes_the_scan_bodies() -> None:
    cfg, p, _ = case("gru")
    seq = build_graphs(cfg, p, "int8")["sequence"]
    scans = [n for n in seq.graph.node if n.op_type == "Scan"]
    body_ops = {n.op_type for s in scans for n in all_nodes(s.attribute[0].g)}
    assert "MatMulInteger" in body_ops and "MatMul" not in body_ops
    names = [n.name for n in all_nodes(seq.graph)]
    assert len(names) == len(set(names)) and all(names)
    assert not {n.op_type for n in all_nodes(seq.graph)} & {"LSTM", "GRU", "RNN"}
    assert {p.key: p.value for p in seq.metadata_props}["precision"] == "int8"


def test_int8_model_dir_loads(tmp_path: Path) -> None:
    cfg, p, feeds = case("cifg")
    tok = CharTokenizer(list("abcdefghijklmnopqrs"))  # 19 characters + <unk>
    out = export_model(cfg, p, tok, {}, tmp_path / "m8", "int8")
    md = load_model_dir(out)
    assert md.precision == "int8"
    sess = make_session(md.step_path)
    step_feeds = {k: v for k, v in feeds.items() if k not in ("tokens", "lengths")}
    res = sess.run(None, {"tokens": feeds["tokens"][:, 0], **step_feeds})
    assert res[0].shape == (4, 20) and np.isfinite(res[0]).all()
