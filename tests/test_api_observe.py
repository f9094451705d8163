"""The observing interceptor on a real server: request ids (echoed in trailing metadata and in error statuses),
latency histograms and counters by model, method and code (scraped from the metrics HTTP endpoint), and the
access log (captured in process, and from a real ``seqpred serve --access-log`` process)."""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import running_server, status_message, tiny_model

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.client import Client, RequestError

MODEL = tiny_model().name  # the model label: the model directory's name
HEX16 = re.compile(r"[0-9a-f]{16}")
RID = (("x-request-id", "req-42"),)


def trailing_id(call_or_error: Any) -> str:
    return str(dict(call_or_error.trailing_metadata() or ())["x-request-id"])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from the metrics endpoint."""
    body = urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def rpc_labels(method: str, code: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model": MODEL, "method": method, "code": code, **more}.items()))


class Stream:
    """One bidi stream: ``send`` returns every response to one request."""

    _END = object()

    def __init__(self, stub: pb_grpc.SeqPredStub, metadata: Any = None) -> None:
        self.q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.call = stub.Stream(iter(self.q.get, self._END), metadata=metadata)

    def send(self, **kw: Any) -> list[pb.StreamResponse]:
        self.q.put(pb.StreamRequest(**kw))
        out = [next(self.call)]
        while not out[-1].final:
            out.append(next(self.call))
        return out

    def close(self) -> None:
        self.q.put(self._END)
        for _ in self.call:
            pass


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with running_server(metrics_port=0, max_message_bytes=4096) as st:
        yield st


@pytest.fixture(scope="module")
def logged() -> Iterator[Any]:
    """With the access log, so that every request takes the interceptor's full path."""
    with running_server(metrics_port=0, access_log=True, on_unknown="error") as st:  # "aλ" is refused below
        yield st


@pytest.fixture(scope="module")
def stub(server: Any) -> Iterator[pb_grpc.SeqPredStub]:
    with grpc.insecure_channel(server.target) as ch:
        yield pb_grpc.SeqPredStub(ch)


def test_request_id_is_echoed_in_trailing_metadata(stub: pb_grpc.SeqPredStub) -> None:
    _, call = stub.Predict.with_call(pb.StreamRequest(text="ab"), metadata=RID)
    assert trailing_id(call) == "req-42"
    _, call = stub.GetModelInfo.with_call(pb.GetModelInfoRequest())
    assert HEX16.fullmatch(trailing_id(call))  # none sent: one is made up
    for bad in ("x" * 129, ""):  # too long, or empty: replaced (gRPC itself only lets printable ASCII through)
        _, call = stub.GetModelInfo.with_call(pb.GetModelInfoRequest(), metadata=(("x-request-id", bad),))
        assert HEX16.fullmatch(trailing_id(call))
    s = Stream(stub, metadata=RID)
    s.send(text="ab")
    s.close()
    assert trailing_id(s.call) == "req-42"


def test_request_id_is_in_error_statuses_not_in_band(stub: pb_grpc.SeqPredStub) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(pb.StreamRequest(tokens=[10_000]), metadata=RID)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().endswith(f"is out of range [0, {stub_vocab(stub)}) [request id req-42]")
    assert trailing_id(e.value) == "req-42"
    with pytest.raises(grpc.RpcError) as e:
        stub.Score(pb.ScoreRequest())
    assert status_message(e.value) == "sequences: empty; send at least one sequence"  # the generated id, echoed
    s = Stream(stub, metadata=RID)
    (r,) = s.send(tokens=[10_000], request_id=7)  # in-band: the request's own request_id, the message unchanged
    assert r.request_id == 7 and r.error.message.endswith(f"out of range [0, {stub_vocab(stub)})")
    s.close()


def stub_vocab(stub: pb_grpc.SeqPredStub) -> int:
    return int(stub.GetModelInfo(pb.GetModelInfoRequest()).vocab_size)


def test_the_client_library_reports_the_request_id(server: Any) -> None:
    with Client(server.target, timeout=10) as c, pytest.raises(RequestError) as e:
        c.get_session("gone")
    assert HEX16.fullmatch(e.value.request_id)
    assert e.value.message.startswith("session_id: no live session 'gone'") and "request id" not in e.value.message
    assert str(e.value).endswith(f" [request id {e.value.request_id}]")


@pytest.mark.parametrize("which", ["server", "logged"])
def test_metrics_by_model_method_and_code(which: str, request: pytest.FixtureRequest) -> None:
    st = request.getfixturevalue(which)
    with grpc.insecure_channel(st.target) as ch:
        check_metrics(st.server.metrics_port, pb_grpc.SeqPredStub(ch))


def check_metrics(port: int, stub: pb_grpc.SeqPredStub) -> None:
    before = scrape(port)
    for _ in range(3):
        stub.Predict(pb.StreamRequest(text="ab"))
    with pytest.raises(grpc.RpcError):
        stub.Predict(pb.StreamRequest(tokens=[10_000]))
    s = Stream(stub)
    s.send(text="def ")
    s.send(tokens=[1], top_k=2)
    s.send(tokens=[10_000])  # in-band INVALID_ARGUMENT
    assert len(s.send(tokens=[1], generate=pb.GenerateParams(max_tokens=3))) == 3  # one request, 3 responses
    s.close()
    stub.Score(pb.ScoreRequest(sequences=[pb.Sequence(text="ab")]))
    after = scrape(port)

    def delta(name: str, labels: tuple[tuple[str, str], ...]) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    want = {
        ("Predict", "OK"): 3,
        ("Predict", "INVALID_ARGUMENT"): 1,
        ("Stream", "OK"): 3,
        ("Stream", "INVALID_ARGUMENT"): 1,
        ("Score", "OK"): 1,
    }
    for (method, code), n in want.items():
        assert delta("seqpred_rpc_requests_total", rpc_labels(method, code)) == n, (method, code)
        assert delta("seqpred_rpc_duration_seconds_count", rpc_labels(method, code)) == n, (method, code)
        assert delta("seqpred_rpc_duration_seconds_sum", rpc_labels(method, code)) > 0
        assert delta("seqpred_rpc_duration_seconds_bucket", rpc_labels(method, code, le="+Inf")) == n
        assert delta("seqpred_rpc_duration_seconds_bucket", rpc_labels(method, code, le="60.0")) == n
    assert not any(k[0].startswith("seqpred_rpc_") and ("method", "Check") in k[1] for k in after)  # health: none


def test_what_grpc_refuses_before_the_handler_is_not_observed(server: Any, stub: pb_grpc.SeqPredStub) -> None:
    before = scrape(server.server.metrics_port)
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(pb.StreamRequest(text="a" * 5000))  # over --max-message-bytes
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "request id" not in e.value.details()
    after = scrape(server.server.metrics_port)
    assert {k: v for k, v in after.items() if k[0].startswith("seqpred_rpc_")} == {
        k: v for k, v in before.items() if k[0].startswith("seqpred_rpc_")
    }


def test_a_stream_cut_mid_request_is_counted_cancelled(server: Any, stub: pb_grpc.SeqPredStub) -> None:
    port = server.server.metrics_port
    key = ("seqpred_rpc_requests_total", rpc_labels("Stream", "CANCELLED"))
    before = scrape(port).get(key, 0.0)
    s = Stream(stub)
    s.q.put(pb.StreamRequest(text="ab", generate=pb.GenerateParams(max_tokens=1024)))
    next(s.call)
    s.call.cancel()
    deadline = time.monotonic() + 30
    while scrape(port).get(key, 0.0) != before + 1:
        assert time.monotonic() < deadline, "the cancelled request was not counted"
        time.sleep(0.05)


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.name == "seqpred.access"]  # type: ignore[attr-defined]


def test_access_log_line_per_request(logged: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="seqpred.access")
    with grpc.insecure_channel(logged.target) as ch:
        check_access_log(pb_grpc.SeqPredStub(ch), caplog)


def check_access_log(stub: pb_grpc.SeqPredStub, caplog: pytest.LogCaptureFixture) -> None:
    r = stub.Predict(pb.StreamRequest(text="def ", generate=pb.GenerateParams(max_tokens=2)), metadata=RID)
    with pytest.raises(grpc.RpcError):
        stub.Predict(pb.StreamRequest(session_id=r.session_id, tokens=[10_000]), metadata=RID)
    s = Stream(stub)
    s.send(session_id=r.session_id, text="x", request_id=9)
    s.send(session_id=r.session_id, tokens=[1, 2], generate=pb.GenerateParams(max_tokens=3))
    s.close()
    stub.Score(pb.ScoreRequest(sequences=[pb.Sequence(text="abc"), pb.Sequence(tokens=[1, 2])]))
    with pytest.raises(grpc.RpcError):
        stub.Predict(pb.StreamRequest(text="aλ"))
    ok, bad, fed, gen, score, unknown = access_records(caplog)
    assert ok["method"] == "Predict" and ok["session"] == r.session_id and ok["status"] == "OK"
    assert (ok["tokens"], ok["generated"], ok["request_id"]) == (4, 2, "req-42")
    assert ok["latency_ms"] > 0 and ok["peer"] and "error" not in ok
    assert (bad["status"], bad["session"], bad["tokens"]) == ("INVALID_ARGUMENT", r.session_id, 1)
    assert "out of range" in bad["error"] and "request id" not in bad["error"]
    assert (fed["method"], fed["tokens"], fed["generated"], fed["seq"]) == ("Stream", 1, 0, 9)
    assert (gen["tokens"], gen["generated"], gen["status"]) == (2, 3, "OK")
    assert fed["request_id"] == gen["request_id"] and HEX16.fullmatch(gen["request_id"])  # one per stream
    assert (score["method"], score["tokens"], score["session"]) == ("Score", 5, "")
    assert (unknown["tokens"], unknown["status"]) == (2, "INVALID_ARGUMENT")  # counted as the tokenizer splits it


def test_no_access_log_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="seqpred.access")
    with running_server() as st, Client(st.target, timeout=10) as c:
        c.predict("ab")
    assert access_records(caplog) == []


def test_refused_by_auth_is_observed_with_its_request_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="seqpred.access")
    tokens = tmp_path / "tokens"
    tokens.write_text("alice:" + "a" * 20 + "\n")
    with (
        running_server(access_log=True, auth_tokens=str(tokens)) as st,
        grpc.insecure_channel(st.target) as ch,
        pytest.raises(grpc.RpcError) as e,
    ):
        pb_grpc.SeqPredStub(ch).Predict(pb.StreamRequest(text="ab"), metadata=RID)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert status_message(e.value) == "authorization: no bearer token; send the metadata 'authorization: Bearer TOKEN'"
    (rec,) = access_records(caplog)
    assert (rec["status"], rec["request_id"], rec["method"]) == ("UNAUTHENTICATED", "req-42", "Predict")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_access_log_of_a_real_server_at_any_log_level(fmt: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQPRED_")}
    argv = [sys.executable, "-c", "import sys; from model.cli import main; sys.exit(main())", "serve"]
    argv += ["--model", str(tiny_model()), "--port", "0", "--metrics-port", "-1", "--log-format", fmt]
    proc = subprocess.Popen(
        [*argv, "--log-level", "WARNING", "--access-log"], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stderr is not None
        port = None
        while port is None:
            line = proc.stderr.readline()
            assert line, "the server did not start"
            if line.startswith("seqpred: serving"):
                port = int(line.rsplit(" ", 1)[1])
        with grpc.insecure_channel(f"localhost:{port}") as ch:
            pb_grpc.SeqPredStub(ch).Predict(pb.StreamRequest(text="ab"), metadata=RID, timeout=10)
        line = proc.stderr.readline().rstrip("\n")
        if fmt == "json":
            obj = json.loads(line)
            assert (obj["logger"], obj["level"], obj["msg"], obj["method"]) == (
                "seqpred.access",
                "INFO",
                "request",
                "Predict",
            )
            assert (obj["request_id"], obj["tokens"], obj["status"]) == ("req-42", 2, "OK")
        else:
            assert re.search(
                r" INFO seqpred\.access: request method=Predict session=\S{22} tokens=2 generated=0 status=OK "
                r"latency_ms=[0-9.]+ request_id=req-42 peer=\S+$",
                line,
            ), line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
