"""The gRPC handlers: protobuf in, :class:`~service.engine.core.Engine` call, protobuf out. Nothing else lives here.

Errors: a :class:`~service.errors.ServiceError` raised for one request of a ``Stream`` becomes that request's
in-band ``StreamResponse.error`` (the stream stays open); in unary RPCs it becomes the RPC's status. Code and
message come from :mod:`service.errors`, the one mapping. A draining server ends streams with UNAVAILABLE; a bug
ends the RPC with INTERNAL. Request bytes that do not parse as the RPC's message get INVALID_ARGUMENT (in-band in a
``Stream``, which stays open), not gRPC's own UNKNOWN: :func:`add_to_server` registers the servicer with lenient
deserializers that hand a :class:`BadMessage` to the handler instead of raising.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.engine.core import Engine
from service.engine.requests import GenerateSpec, Reply, Request
from service.errors import CODE_NUMBERS, MalformedMessage, ServiceError, ShuttingDown, status_name
from service.security.auth import behavior_of, current_principal, method_handler

log = logging.getLogger("seqpred.servicer")
_exp = math.exp


def to_request(m: pb.StreamRequest, principal: str = "") -> Request:
    gen = None
    if m.HasField("generate"):
        g = m.generate
        gen = GenerateSpec(
            max_tokens=g.max_tokens,
            temperature=g.temperature if g.HasField("temperature") else 1.0,
            top_k=g.top_k,
            top_p=g.top_p if g.HasField("top_p") else 1.0,
            seed=g.seed if g.HasField("seed") else None,
        )
    return Request(m.session_id, m.tokens, m.text, m.start, m.end, m.top_k, m.score, gen, m.request_id, principal)


class Converter:
    """Engine replies -> protobuf, with the vocabulary's texts at hand."""

    def __init__(self, token_texts: list[str]) -> None:
        self.texts = token_texts

    def add_tokens(self, field: Any, ids: list[int], lps: list[float]) -> None:
        """Append Token messages for ``ids``/``lps`` to a repeated field."""
        texts, add = self.texts, field.add
        for i, lp in zip(ids, lps, strict=True):
            add(id=i, text=texts[i], logprob=lp, prob=_exp(lp))

    def reply(self, r: Reply) -> pb.StreamResponse:
        resp = pb.StreamResponse(session_id=r.session_id, position=r.position, final=r.final)
        if r.request_id:
            resp.request_id = r.request_id
        if r.ended:
            resp.ended = True
        if r.top_ids is not None and r.top_logprobs is not None:
            self.add_tokens(resp.predictions, r.top_ids, r.top_logprobs)
        if r.token_logprobs is not None:
            resp.token_logprobs.extend(r.token_logprobs.tolist())
        if r.generated:
            texts, add = self.texts, resp.generated.add
            for t, lp in r.generated:
                add(id=t, text=texts[t], logprob=lp, prob=_exp(lp))
        return resp


class BadMessage:
    """Stands in for a request whose bytes did not parse, so that the handler can answer INVALID_ARGUMENT."""

    __slots__ = ("error", "request_id", "session_id")

    def __init__(self, type_name: str, problem: BaseException) -> None:
        self.error = MalformedMessage(f"request: not a valid {type_name} message ({problem})")
        self.session_id = ""
        self.request_id = 0


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    cls = getattr(parse, "__self__", None)
    type_name = cls.DESCRIPTOR.full_name if cls is not None else "request"

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as e:  # DecodeError: corrupt wire format, bad UTF-8 in a string, ...
            return BadMessage(type_name, e)

    return deserialize


def _refuse_bad(behavior: Callable[..., Any], count: Callable[[BaseException], None]) -> Callable[..., Any]:
    async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.__class__ is BadMessage:
            count(request.error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request.error))
        return await behavior(request, context)

    return checked


class _Capture:
    """Takes the generated registration's handlers instead of a server."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, handlers


def add_to_server(servicer: SeqPredServicer, server: grpc.aio.Server) -> None:
    """``add_SeqPredServicer_to_server`` with lenient request deserializers (see the module docstring)."""
    cap = _Capture()
    pb_grpc.add_SeqPredServicer_to_server(servicer, cap)
    handlers = {}
    for name, h in cap.handlers.items():
        behavior = behavior_of(h)
        if not h.request_streaming:  # a stream checks each message it reads, in _stream
            behavior = _refuse_bad(behavior, servicer.engine.count_error)
        handlers[name] = method_handler(h, behavior, _lenient(h.request_deserializer))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(cap.service, handlers),))
    server.add_registered_method_handlers(cap.service, handlers)


def error_response(m: pb.StreamRequest | BadMessage, e: ServiceError) -> pb.StreamResponse:
    name = status_name(e)
    return pb.StreamResponse(
        session_id=e.session_id or m.session_id,
        request_id=m.request_id,
        final=True,
        error=pb.Error(code=CODE_NUMBERS[name], code_name=name, message=str(e)),
    )


def _duration(seconds: float | None) -> Duration | None:
    if seconds is None:
        return None
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _timestamp(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


class SeqPredServicer(pb_grpc.SeqPredServicer):
    """Thin handlers over an :class:`Engine`; see the proto for every RPC's contract."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conv = Converter(engine.token_texts)
        m = engine.metrics
        self._count = (lambda rpc: m.requests.labels(rpc).inc()) if m is not None else (lambda rpc: None)

    async def _abort(self, context: grpc.aio.ServicerContext, e: BaseException) -> None:
        self.engine.count_error(e)
        if isinstance(e, ServiceError):
            await context.abort(grpc.StatusCode[status_name(e)], str(e))
        log.exception("internal error", exc_info=e)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")

    async def Stream(
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        self._count("Stream")
        batcher = self.engine.batcher
        batcher.open_rpcs += 1
        try:
            await self._stream(context)
        finally:
            batcher.open_rpcs -= 1

    async def _stream(self, context: grpc.aio.ServicerContext) -> None:
        # context.read/write rather than iterating requests and yielding responses: faster per message here
        engine, conv = self.engine, self.conv
        read, write, EOF = context.read, context.write, grpc.aio.EOF
        principal = current_principal()
        while True:
            m = await read()
            if m is EOF:
                return
            if m.__class__ is BadMessage:
                engine.count_error(m.error)
                await write(error_response(m, m.error))
                continue
            try:
                if not m.HasField("generate"):
                    await write(conv.reply(await engine.request(to_request(m, principal))))
                else:
                    async for r in engine.generate(to_request(m, principal)):
                        await write(conv.reply(r))
            except ShuttingDown as e:
                await self._abort(context, e)
            except ServiceError as e:
                engine.count_error(e)
                await write(error_response(m, e))
            except Exception as e:
                await self._abort(context, e)

    async def Predict(self, request: pb.StreamRequest, context: grpc.aio.ServicerContext) -> pb.StreamResponse:
        self._count("Predict")
        self.engine.batcher.open_rpcs += 1
        try:
            return await self._predict(request, context)
        finally:
            self.engine.batcher.open_rpcs -= 1

    async def _predict(self, request: pb.StreamRequest, context: grpc.aio.ServicerContext) -> pb.StreamResponse:
        try:
            r = to_request(request, current_principal())
            if r.generate is None:
                return self.conv.reply(await self.engine.request(r))
            generated: list[tuple[int, float]] = []
            last: Reply | None = None
            first_scores = None
            async for rep in self.engine.generate(r, unary=True):
                generated += rep.generated
                if last is None:
                    first_scores = rep.token_logprobs
                last = rep
            assert last is not None
            last.generated = generated
            last.token_logprobs = first_scores
            return self.conv.reply(last)
        except Exception as e:
            await self._abort(context, e)
            raise  # unreachable: abort raises

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        self._count("Score")
        self.engine.batcher.open_rpcs += 1
        try:
            seqs = [(s.tokens, s.text) for s in request.sequences]
            results = await self.engine.score(seqs, request.top_k)
        except Exception as e:
            await self._abort(context, e)
            raise
        finally:
            self.engine.batcher.open_rpcs -= 1
        out = pb.ScoreResponse()
        for res in results:
            s = out.scores.add(num_tokens=res.num_tokens, total_logprob=res.total_logprob)
            s.token_logprobs.extend(res.token_logprobs.tolist())
            if res.top_ids is not None and res.top_logprobs is not None:
                self.conv.add_tokens(s.predictions, res.top_ids, res.top_logprobs)
        return out

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseSessionResponse:
        self._count("CloseSession")
        try:
            pos = await self.engine.aclose(request.session_id, current_principal())
        except Exception as e:
            await self._abort(context, e)
            raise
        return pb.CloseSessionResponse(session_id=request.session_id, position=pos)

    async def GetSession(self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext) -> pb.SessionInfo:
        self._count("GetSession")
        try:
            v = await self.engine.aget(request.session_id, current_principal())
        except Exception as e:
            await self._abort(context, e)
            raise
        return pb.SessionInfo(
            session_id=v.session_id,
            position=v.position,
            created=_timestamp(v.created),
            last_active=_timestamp(v.last_active),
            time_left=_duration(v.time_left),
        )

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        self._count("GetModelInfo")
        info = self.engine.model_info()
        info["idle_timeout"] = _duration(info["idle_timeout"])
        info["max_lifetime"] = _duration(info["max_lifetime"])
        return pb.ModelInfo(**info)
