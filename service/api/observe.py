"""Every ``seqpred.v1`` request observed by a gRPC server interceptor (:class:`Observer`): a request id, a latency
histogram and counter by method and status code, an access log line, and an OpenTelemetry span when tracing is on.
The servicer knows nothing of it; health and reflection RPCs pass untouched.

* **Request id**: the RPC's ``x-request-id`` metadata when it is 1-128 printable ASCII characters, else 16 random hex
  digits. It comes back in the trailing metadata (``x-request-id``) of every ``seqpred.v1`` RPC, and every error
  *status* (a failed unary RPC, a stream ended by the server) carries it at the end of its message:
  ``... [request id ID]``. In-band errors of a ``Stream`` keep their message; they echo the request's own
  ``request_id`` field.
* **The unit observed is one request**: a unary RPC (from the handler's start to its return), or one request of a
  ``Stream`` (from reading the ``StreamRequest`` to writing its final response; a generation streamed token by
  token is one request). Its status code is the RPC's for a unary RPC; for a stream request the code of its in-band
  error (``OK`` without one), or the status that ended the stream while the request was open (``CANCELLED`` when the
  client went away). An RPC refused before its handler runs (``--max-concurrent-rpcs``, an oversized message) is
  not observed.
* **Access log** (``--access-log``): one INFO line per request on the logger ``seqpred.access`` with the fields
  ``method``, ``session``, ``tokens`` (the request's tokens: ids, or its text's tokens; summed over a Score's
  sequences), ``generated``, ``status``, ``latency_ms``, ``request_id``, ``peer``, ``seq`` (a stream request's own
  ``request_id`` field, when set) and ``error`` (the message, when the status is not OK).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service.api.tracing import SERVICE, Tracing
from service.logs import ACCESS_LOGGER
from service.metrics import FastHistogram, RpcStats
from service.security.auth import behavior_of, method_handler

KEY = "x-request-id"
MAX_ID_CHARS = 128
PREFIX = f"/{SERVICE}/"
_EOF = grpc.aio.EOF
_now = time.perf_counter
access = logging.getLogger(ACCESS_LOGGER)


def request_id_of(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The ``x-request-id`` of ``metadata`` when usable, else a new one (16 hex digits)."""
    for k, v in metadata or ():
        if k == KEY and isinstance(v, str) and 0 < len(v) <= MAX_ID_CHARS and v.isascii() and v.isprintable():
            return v
    return os.urandom(8).hex()


def _tokens(m: Any, count_text: Callable[[str], int | None]) -> int | None:
    if m.__class__ is pb.StreamRequest or m.__class__ is pb.Sequence:
        return len(m.tokens) if m.tokens else count_text(m.text) if m.text else 0
    if m.__class__ is pb.ScoreRequest:
        counts = [_tokens(s, count_text) for s in m.sequences]
        return None if None in counts else sum(c or 0 for c in counts)
    return None


def text_counter(encode: Callable[[str], Any]) -> Callable[[str], int | None]:
    """Counts a text's tokens with the model's tokenizer (None should it raise); for the access log."""

    def count(text: str) -> int | None:
        try:
            return len(encode(text))
        except Exception:  # the request itself reports what is wrong with the text
            return None

    return count


def _failure(e: BaseException) -> tuple[str, str]:
    """Code name and message for a handler that raised ``e`` (an abort is observed before it raises)."""
    if isinstance(e, asyncio.CancelledError):
        return "CANCELLED", "the client went away"
    return "UNKNOWN", f"{type(e).__name__}: {e}"


class _Context:
    """The servicer's view of one RPC's context: ``abort`` observes the open request (before the status leaves, so
    that whoever sees the error also finds it counted) and appends the request id to the message."""

    __slots__ = ("_ctx", "name", "obs", "rid", "span", "t0")

    def __init__(self, ctx: grpc.aio.ServicerContext, rid: str, obs: Observer, name: str) -> None:
        self._ctx, self.rid, self.obs, self.name = ctx, rid, obs, name
        self.t0 = 0.0  # when the open request began; 0: none open
        self.span: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self.finish(code.name, details)
        await self._ctx.abort(code, f"{details} [request id {self.rid}]", ((KEY, self.rid), *trailing_metadata))

    def finish(self, code: str, message: str, resp: Any = None) -> None:
        """Observe the open request (if any) with ``code``."""
        if self.t0:
            self.obs.done(self.name, code, _now() - self.t0, self, self.request(), resp, self.span, message)
            self.t0, self.span = 0.0, None

    def request(self) -> Any:
        raise NotImplementedError

    def generated(self, resp: Any) -> int:
        return len(getattr(resp, "generated", ()))


class _UnaryContext(_Context):
    __slots__ = ("req",)

    def __init__(self, ctx: grpc.aio.ServicerContext, rid: str, obs: Observer, name: str, req: Any) -> None:
        super().__init__(ctx, rid, obs, name)
        self.req = req

    def request(self) -> Any:
        return self.req


class _StreamContext(_Context):
    """Times each request of the stream: from the read that returned it to its final response."""

    __slots__ = ("_read", "_write", "metadata", "msg", "ok", "streamed", "tracing")

    def __init__(self, ctx: grpc.aio.ServicerContext, rid: str, obs: Observer, name: str, metadata: Any) -> None:
        super().__init__(ctx, rid, obs, name)
        self._read, self._write = ctx.read, ctx.write
        self.metadata, self.tracing = metadata, obs.tracing
        self.msg: Any = None
        self.streamed = 0  # tokens generated in the open request's earlier responses (access log only)
        # the common case, an OK answer with neither access log nor tracing, is one histogram update and no more
        plain = obs.stats is not None and not obs.access_log and obs.tracing is None
        self.ok: FastHistogram | None = obs.stats.histogram(name, "OK") if plain and obs.stats is not None else None

    async def read(self) -> Any:
        m = await self._read()
        if m is not _EOF:
            self.t0, self.msg = _now(), m
            if self.tracing is not None:
                self.span = self.tracing.start(self.name, self.metadata)
        return m

    async def write(self, resp: Any) -> None:
        if resp.final:
            if resp.HasField("error"):
                self.finish(resp.error.code_name, resp.error.message, resp)
            elif self.ok is not None and self.t0:
                self.ok.observe(_now() - self.t0)
                self.t0 = 0.0
            else:
                self.finish("OK", "", resp)
            self.streamed = 0
        elif self.obs.access_log:
            self.streamed += len(resp.generated)
        await self._write(resp)

    def request(self) -> Any:
        return self.msg

    def generated(self, resp: Any) -> int:
        return self.streamed + len(getattr(resp, "generated", ()))


class Observer(grpc.aio.ServerInterceptor):
    """Request ids, :class:`RpcStats`, the access log and tracing for every ``seqpred.v1`` RPC (module docstring).

    Put it first in the server's interceptors, so that it also sees the requests that authentication refuses.
    """

    def __init__(
        self,
        stats: RpcStats | None,
        *,
        access_log: bool = False,
        tracing: Tracing | None = None,
        count_text: Callable[[str], int | None] | None = None,
    ) -> None:
        self.stats = stats
        self.access_log = access_log
        self.tracing = tracing
        self.count_text = count_text or (lambda text: None)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(PREFIX) or handler.request_streaming != handler.response_streaming:
            return handler
        name = method[len(PREFIX) :]
        metadata = handler_call_details.invocation_metadata
        behavior = behavior_of(handler)
        wrapped = self._stream if handler.request_streaming else self._unary
        return method_handler(handler, wrapped(name, metadata, behavior))

    def _unary(self, name: str, metadata: Any, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            ctx = _UnaryContext(context, request_id_of(metadata), self, name, request)
            ctx.t0 = _now()
            context.set_trailing_metadata(((KEY, ctx.rid),))
            if self.tracing is not None:
                ctx.span = self.tracing.start(name, metadata)
            try:
                resp = await behavior(request, ctx)
            except BaseException as e:
                ctx.finish(*_failure(e))  # no-op after an abort: observed there
                raise
            ctx.finish("OK", "", resp)
            return resp

        return observed

    def _stream(self, name: str, metadata: Any, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def observed(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            ctx = _StreamContext(context, request_id_of(metadata), self, name, metadata)
            context.set_trailing_metadata(((KEY, ctx.rid),))
            try:
                return await behavior(request_iterator, ctx)
            except BaseException as e:
                ctx.finish(*_failure(e))  # the request open when the stream broke, if any
                raise

        return observed

    def done(
        self, name: str, code: str, seconds: float, ctx: _Context, req: Any, resp: Any, span: Any, message: str
    ) -> None:
        """One request answered: histogram, access log line, span."""
        if self.stats is not None:
            self.stats.observe(name, code, seconds)
        if not self.access_log and span is None:
            return
        fields: dict[str, Any] = {
            "method": name,
            "session": getattr(resp, "session_id", "") or getattr(req, "session_id", ""),
            "tokens": _tokens(req, self.count_text),
            "generated": ctx.generated(resp),
            "status": code,
            "latency_ms": round(seconds * 1e3, 3),
            "request_id": ctx.rid,
        }
        if span is not None and self.tracing is not None:
            self.tracing.end(span, code, message, fields)
        if self.access_log:
            fields["peer"] = ctx.peer()
            seq = getattr(req, "request_id", 0)
            if seq:
                fields["seq"] = seq
            if code != "OK":
                fields["error"] = message
            access.info("request", extra={"fields": fields})
