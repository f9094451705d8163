"""The Greff variants end to end: trained by ``seqpred train`` (the loss falls), exported, and served.

Every variant trains a tiny model on a repetitive text and is then exported and run by the service runtime
against the NumPy network on the trained parameters; one variant is also served over gRPC by a real server.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from service_helpers import CORPUS, assert_runtime_matches_numpy, oracle, running_server, tiny_model, train_for

from model.cells.greff import GREFF_CELLS
from model.config import ModelConfig
from model.export import export_run
from model.network import forward, init_params, loss_and_dout, zero_state
from model.train.checkpoint import load_run
from service.client.sync import Client
from service.runtime.bundle import load_bundle
from service.runtime.onnx_runtime import Runtime


def _nats(cfg: ModelConfig, params: dict[str, np.ndarray], ids: np.ndarray) -> float:
    """Mean next-token cross-entropy of ``ids`` ``[1, T]`` from the zero state."""
    f = forward(cfg, params, ids[:, :-1], zero_state(cfg, 1))
    return loss_and_dout(cfg, f.out, ids[:, 1:], None)[0]


@pytest.mark.parametrize("cell", list(GREFF_CELLS))
def test_trains_exports_and_runs_in_the_service(cell: str, tmp_path: Path) -> None:
    run_dir = train_for(tmp_path, cell, steps=60)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    run = load_run(run_dir)
    assert run.model.cell == cell and run.tokenizer is not None
    # the trained model against its own initialisation (train seeds init_params with default_rng(seed=0))
    text = np.array(run.tokenizer.encode(CORPUS[:400]), dtype=np.int64)[None, :]
    init = init_params(run.model, np.random.default_rng(0))
    before, after = (_nats(run.model, p, text) for p in (init, run.params))
    assert after < before - 0.5, (before, after)
    rt = Runtime(load_bundle(export_run(run_dir, tmp_path / f"model-{cell}")), "cpu")
    assert rt.state_names == ["h0", "c0"]
    assert_runtime_matches_numpy(rt, run)


def test_a_variant_is_served_over_grpc() -> None:
    o = oracle("noaf", 1)
    with running_server(model=tiny_model("noaf", 1)) as server, Client(server.target, timeout=10) as client:
        assert client.model_info().cell == "noaf"
        with client.session() as s:
            r = s.feed("def ", top_k=3)
            assert [p.id for p in r.predictions] == o.top_k(o.encode("def "), 3)
            r = s.feed("add", top_k=1)
            assert r.position == 7 and [p.id for p in r.predictions] == o.top_k(o.encode("def add"), 1)
        (sc,) = client.score(["self.x = x"])
        np.testing.assert_allclose(sc.token_logprobs, o.token_logprobs(o.encode("self.x = x")), atol=3e-5)
