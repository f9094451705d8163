"""Optional OpenTelemetry tracing (``--otel-endpoint``; the ``seqpred[otel]`` extra): one SERVER span per observed
request (see :mod:`service.api.observe`), exported over OTLP/gRPC in batches.

A span continues the caller's trace when the RPC's metadata carries a W3C ``traceparent`` (and ``tracestate``).
Its name is ``seqpred.v1.SeqPred/METHOD``; its attributes are ``rpc.system`` (``grpc``), ``rpc.service``,
``rpc.method``, ``rpc.grpc.status_code`` (the number) and ``seqpred.model``, ``seqpred.request_id``,
``seqpred.session_id``, ``seqpred.tokens`` when known; a failed request's span has status ERROR with the message.
Without the flag nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.errors import CODE_NUMBERS, SettingsError

SERVICE = "seqpred.v1.SeqPred"


def _otel_missing(e: ImportError) -> SettingsError:
    return SettingsError(
        f"--otel-endpoint: OpenTelemetry is not installed ({e.name or e}); pip install 'seqpred[otel]'"
    )


class Tracing:
    """A tracer provider of its own (the process-wide one is left alone) around one span exporter."""

    def __init__(self, exporter: Any, model: str, *, batch: bool = True) -> None:
        """``exporter``: any OpenTelemetry ``SpanExporter`` (tests pass the SDK's in-memory one with
        ``batch=False``, so that a span is exported when it ends)."""
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.trace import SpanKind, Status, StatusCode
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as e:
            raise _otel_missing(e) from None
        self.provider = TracerProvider(resource=Resource.create({"service.name": "seqpred"}))
        self.provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("seqpred.service")
        self.model = model
        self._propagator = TraceContextTextMapPropagator()
        self._server = SpanKind.SERVER
        self._status, self._error = Status, StatusCode.ERROR

    @classmethod
    def to_endpoint(cls, endpoint: str, model: str) -> Tracing:
        """Export to an OTLP/gRPC collector, e.g. ``http://localhost:4317`` (``https://`` for TLS)."""
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as e:
            raise _otel_missing(e) from None
        return cls(OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://")), model)

    def start(self, method: str, metadata: Sequence[tuple[str, Any]] | None, start_ns: int | None = None) -> Any:
        """A started span for one request of ``method`` (its parent from the metadata's ``traceparent``)."""
        carrier = {k: v for k, v in metadata or () if k in ("traceparent", "tracestate") and isinstance(v, str)}
        parent = self._propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(f"{SERVICE}/{method}", context=parent, kind=self._server, start_time=start_ns)
        span.set_attribute("rpc.system", "grpc")
        span.set_attribute("rpc.service", SERVICE)
        span.set_attribute("rpc.method", method)
        span.set_attribute("seqpred.model", self.model)
        return span

    def end(self, span: Any, code: str, message: str, fields: Mapping[str, Any]) -> None:
        """End ``span`` with the request's status code name, error message and known fields."""
        span.set_attribute("rpc.grpc.status_code", CODE_NUMBERS.get(code, 2))
        for key in ("request_id", "session", "tokens"):
            value = fields.get(key)
            if value not in (None, ""):
                span.set_attribute("seqpred.session_id" if key == "session" else f"seqpred.{key}", value)
        if code != "OK":
            span.set_status(self._status(self._error, f"{code}: {message}" if message else code))
        span.end()

    def shutdown(self) -> None:
        """Export what is pending and stop."""
        self.provider.shutdown()
