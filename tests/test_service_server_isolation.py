"""One client's heavy request does not stall the others: a real ``seqpred serve`` subprocess (default flags, the
shipped model) runs a Score of several seconds while health checks and one-token Predicts on another session are
answered within 0.5 s, and the Score's results are bit-equal to offline ``sequence.onnx`` scoring."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.runtime.bundle import load_bundle
from service.runtime.onnx_runtime import Runtime
from service.settings import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
#: The bound the issue sets for a health check or a one-token Predict while a large Score runs.
INTERACTIVE_BOUND_S = 0.5


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not (DEFAULT_MODEL_DIR / "model.json").is_file():
        pytest.skip("the shipped default model is not installed")
    log = tmp_path_factory.mktemp("isolation") / "serve.log"
    cmd = [sys.executable, "-m", "model.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"on port (\d+)", log.read_text(errors="replace"))):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        yield int(m.group(1))
    finally:
        proc.terminate()
        proc.wait(30)


def _old_chunks(lengths: list[int], max_rows: int = 256, max_tokens: int = 65_536) -> list[list[int]]:
    """How Score grouped sequences into sequence.onnx calls before it was chunked (sorted by length, greedy)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out, i = [], 0
    while i < len(order):
        n = 1
        while i + n < len(order) and n < max_rows and lengths[order[i + n]] * (n + 1) <= max_tokens:
            n += 1
        out.append(order[i : i + n])
        i += n
    return out


def test_a_large_score_leaves_health_and_other_sessions_responsive(port: int) -> None:
    rng = np.random.default_rng(7)
    V = Runtime(load_bundle(DEFAULT_MODEL_DIR), "cpu").config.vocab_size
    lengths = [int(n) for n in rng.integers(2048, 4097, 80)]  # ~245k tokens: seconds of work on two cores
    seqs = [rng.integers(0, V, n) for n in lengths]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub, health = pb_grpc.SeqPredStub(ch), health_pb2_grpc.HealthStub(ch)
        sid = stub.Predict(pb.StreamRequest(tokens=[1, 2, 3]), timeout=30).session_id
        got: dict[str, object] = {}

        def score() -> None:
            req = pb.ScoreRequest(sequences=[pb.Sequence(tokens=s.tolist()) for s in seqs], top_k=3)
            got["resp"] = stub.Score(req, timeout=300)
            got["end"] = time.perf_counter()

        t = threading.Thread(target=score)
        t.start()
        time.sleep(0.3)  # the request is on the server
        probes: list[tuple[float, float, float]] = []  # (start, health seconds, predict seconds)
        pos = 3
        while t.is_alive() and len(probes) < 20:
            t0 = time.perf_counter()
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=60).status
            t1 = time.perf_counter()
            r = stub.Predict(pb.StreamRequest(session_id=sid, tokens=[5], top_k=5), timeout=60)
            t2 = time.perf_counter()
            pos += 1
            assert status == health_pb2.HealthCheckResponse.SERVING and r.position == pos
            probes.append((t0, t1 - t0, t2 - t1))
            time.sleep(0.1)
        t.join(300)
    during = [p for p in probes if p[0] < float(got["end"])]  # type: ignore[arg-type]
    worst_health, worst_predict = max(p[1] for p in during), max(p[2] for p in during)
    assert worst_health < INTERACTIVE_BOUND_S, f"health check took {worst_health:.2f} s during a Score"
    assert worst_predict < INTERACTIVE_BOUND_S, f"one-token Predict took {worst_predict:.2f} s during a Score"
    assert len(during) >= 3, f"the Score finished too soon to test anything ({len(probes)} probes)"

    # the results, bit for bit, against sequence.onnx run offline on the groups Score always formed
    resp: pb.ScoreResponse = got["resp"]  # type: ignore[assignment]
    rt = Runtime(load_bundle(DEFAULT_MODEL_DIR), "cpu")
    for group in _old_chunks(lengths):
        T = max(lengths[k] for k in group)
        tokens = np.zeros((len(group), T), dtype=np.int64)
        for r, k in enumerate(group):
            tokens[r, : lengths[k]] = seqs[k]
        tl, nl = rt.score(tokens, np.array([lengths[k] for k in group], dtype=np.int64))
        for r, k in enumerate(group):
            s = resp.scores[k]
            assert s.num_tokens == lengths[k]
            want = tl[r, : lengths[k] - 1].astype(np.float32)
            assert np.array_equal(np.array(s.token_logprobs, dtype=np.float32), want)
            assert [p.id for p in s.predictions] == np.argsort(-nl[r], kind="stable")[:3].tolist()
