"""The Depth Gated LSTM end to end: a 2-layer model trained by ``seqpred train`` (the loss falls), exported, run
by the service runtime against the NumPy network, and served over gRPC by a real server.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from service_helpers import CORPUS, Oracle, running_server

from model.checkpoint import load_run
from model.cli import main
from model.export import export_run
from model.network import forward, log_softmax, zero_state
from service.bundle import load_bundle
from service.client import Client
from service.runtime import Runtime


def _train(tmp_path: Path, steps: int) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "run"
    argv = [
        "train", "--corpus", str(corpus), "--cell", "depth-gated", "--layers", "2", "--steps", str(steps),
        "--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "16", "--lr", "1e-2", "--warmup", "2",
        "--eval-every", "1000", "--eval-tokens", "200", "--threads", "1", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    return out


def test_trains_exports_runs_and_serves(tmp_path: Path) -> None:
    run_dir = _train(tmp_path, steps=100)
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
    ids = np.array(run.tokenizer.encode("for i in range"), dtype=np.int64)
    T = len(ids)
    mem = rt.new_state_memory(2)
    slot = np.array([1])
    mem.zero(1)
    seq = rt.sequence(mem, slot, ids[None, : T - 1], np.array([T - 1]))
    step = rt.step(mem, slot, ids[T - 1 :])
    f = forward(run.model, run.params, ids[None, :], zero_state(run.model, 1))
    want = log_softmax(f.out[:, :, 0], axis=0).T  # [T, V]
    assert seq.token_logprobs is not None and seq.next_logprobs is not None and step.logprobs is not None
    np.testing.assert_allclose(seq.token_logprobs[0], want[np.arange(T - 2), ids[1 : T - 1]], atol=3e-5)
    np.testing.assert_allclose(seq.next_logprobs[0], want[T - 2], atol=3e-5)
    np.testing.assert_allclose(step.logprobs[0], want[T - 1], atol=3e-5)
    got = mem.read(1)
    for g, w in zip(got, [x[0] for hc in f.state for x in hc if x is not None], strict=True):
        np.testing.assert_allclose(g, w, atol=3e-5)

    # over gRPC: a session fed in two parts, and scoring
    o = Oracle(run_dir)
    with running_server(model=model_dir) as server, Client(server.target, timeout=10) as client:
        info = client.model_info()
        assert info["cell"] == "depth-gated" and info["layers"] == 2
        with client.session() as s:
            r = s.feed("def ", top_k=3)
            assert [p.id for p in r.predictions] == o.top_k(o.encode("def "), 3)
            r = s.feed("add", top_k=1)
            assert r.position == 7 and [p.id for p in r.predictions] == o.top_k(o.encode("def add"), 1)
        (sc,) = client.score(["self.x = x"])
        np.testing.assert_allclose(sc.token_logprobs, o.token_logprobs(o.encode("self.x = x")), atol=3e-5)
