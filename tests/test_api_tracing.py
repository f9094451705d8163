"""OpenTelemetry tracing (the ``[otel]`` extra): one SERVER span per request, recorded by the SDK's in-memory
exporter on a real server, continuing the caller's trace; and ``--otel-endpoint`` exporting over OTLP/gRPC to a
collector (a real gRPC server speaking the OTLP trace service). Skipped when the extra is not installed."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from service_helpers import running_server, settings, tiny_model

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc")

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.api.tracing import Tracing
from service.errors import SettingsError
from service.server import SeqpredServer, ServerThread

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = (("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"), ("x-request-id", "req-7"))


@pytest.fixture
def traced() -> Iterator[tuple[Any, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    with ServerThread(settings(), tracing=Tracing(exporter, tiny_model().name, batch=False)) as st:
        yield st, exporter


def test_one_span_per_request_continuing_the_callers_trace(traced: tuple[Any, InMemorySpanExporter]) -> None:
    st, exporter = traced
    with grpc.insecure_channel(st.target) as ch:
        stub = pb_grpc.SeqPredStub(ch)
        r = stub.Predict(pb.StreamRequest(text="def "), metadata=PARENT)
        with pytest.raises(grpc.RpcError):
            stub.Predict(pb.StreamRequest(tokens=[10_000]))
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        call = stub.Stream(iter(q.get, None))
        for req in (
            pb.StreamRequest(text="ab"),
            pb.StreamRequest(tokens=[1], generate=pb.GenerateParams(max_tokens=3)),
        ):
            q.put(req)
            while not next(call).final:
                pass
        q.put(None)
        list(call)
    ok, bad, s1, s2 = exporter.get_finished_spans()
    assert ok.name == "seqpred.v1.SeqPred/Predict" and ok.kind.name == "SERVER"
    assert format(ok.context.trace_id, "032x") == TRACE_ID  # the caller's trace goes on
    assert ok.parent is not None and format(ok.parent.span_id, "016x") == "00f067aa0ba902b7"
    attrs = dict(ok.attributes or {})
    assert attrs["rpc.system"] == "grpc" and attrs["rpc.service"] == "seqpred.v1.SeqPred"
    assert attrs["rpc.method"] == "Predict" and attrs["rpc.grpc.status_code"] == 0
    assert attrs["seqpred.request_id"] == "req-7" and attrs["seqpred.session_id"] == r.session_id
    assert attrs["seqpred.tokens"] == 4 and attrs["seqpred.model"] == tiny_model().name
    assert ok.status.is_ok and ok.resource.attributes["service.name"] == "seqpred"
    assert bad.parent is None and dict(bad.attributes or {})["rpc.grpc.status_code"] == 3
    assert bad.status.status_code.name == "ERROR" and "INVALID_ARGUMENT" in (bad.status.description or "")
    assert [s.name for s in (s1, s2)] == ["seqpred.v1.SeqPred/Stream"] * 2  # one span per request of a stream
    assert s1.end_time is not None and s2.start_time is not None and s1.end_time <= s2.start_time


class Collector(otlp_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[otlp.ExportTraceServiceRequest] = []
        self.got = threading.Event()

    def Export(self, request: otlp.ExportTraceServiceRequest, context: Any) -> otlp.ExportTraceServiceResponse:
        self.requests.append(request)
        self.got.set()
        return otlp.ExportTraceServiceResponse()


def test_otel_endpoint_exports_over_otlp() -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    otlp_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("localhost:0")
    server.start()
    try:
        with running_server(otel_endpoint=f"http://localhost:{port}") as st, grpc.insecure_channel(st.target) as ch:
            pb_grpc.SeqPredStub(ch).Predict(pb.StreamRequest(text="ab"), metadata=PARENT)
        # leaving the block stopped the server, which exports what is pending
        assert collector.got.wait(30), "nothing reached the collector"
        spans = [
            (span, rs.resource)
            for req in collector.requests
            for rs in req.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        (span, resource), *_ = spans
        assert span.name == "seqpred.v1.SeqPred/Predict" and span.trace_id.hex() == TRACE_ID
        assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "seqpred"
    finally:
        server.stop(0)


def test_without_the_extra_the_flag_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(SettingsError) as e:
        SeqpredServer(settings(otel_endpoint="http://localhost:4317"))
    assert str(e.value).startswith("--otel-endpoint: OpenTelemetry is not installed (")
    assert str(e.value).endswith("); pip install 'seqpred[otel]'")
