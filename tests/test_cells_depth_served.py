"""The Depth Gated LSTM end to end: a 2-layer model trained by ``seqpred train`` (the loss falls), exported, run
by the service runtime against the NumPy network, and served over gRPC by a real server.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from service_helpers import Oracle, assert_runtime_matches_numpy, running_server, train_for

from model.export import export_run
from model.train.checkpoint import load_run
from service.client.sync import Client
from service.runtime.bundle import load_bundle
from service.runtime.onnx_runtime import Runtime


def test_trains_exports_runs_and_serves(tmp_path: Path) -> None:
    run_dir = train_for(tmp_path, "depth-gated", steps=100, layers=2)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= 5 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.75 * losses[0], losses  # ln V ≈ 3.3 at the start
    run = load_run(run_dir)
    assert run.model.cell == "depth-gated" and run.model.layers == 2 and run.tokenizer is not None
    model_dir = export_run(run_dir, tmp_path / "model")

    # the runtime: a prompt through sequence.onnx, then one step.onnx call, = the NumPy network
    rt = Runtime(load_bundle(model_dir), "cpu")
    assert rt.state_names == ["h0", "c0", "h1", "c1"]
    assert_runtime_matches_numpy(rt, run)

    # over gRPC: a session fed in two parts, and scoring
    o = Oracle(run_dir)
    with running_server(model=model_dir) as server, Client(server.target, timeout=10) as client:
        info = client.model_info()
        assert info.cell == "depth-gated" and info.layers == 2
        with client.session() as s:
            r = s.feed("def ", top_k=3)
            assert [p.id for p in r.predictions] == o.top_k(o.encode("def "), 3)
            r = s.feed("add", top_k=1)
            assert r.position == 7 and [p.id for p in r.predictions] == o.top_k(o.encode("def add"), 1)
        (sc,) = client.score(["self.x = x"])
        np.testing.assert_allclose(sc.token_logprobs, o.token_logprobs(o.encode("self.x = x")), atol=3e-5)
