"""The gRPC handlers: protobuf in, :class:`~service.engine.Engine` call, protobuf out. Nothing else lives here.

Errors: a :class:`~service.errors.ServiceError` raised for one request of a ``Stream`` becomes that request's
in-band ``StreamResponse.error`` (the stream stays open); in unary RPCs it becomes the RPC's status. Code and
message come from :mod:`service.errors`, the one mapping. A draining server ends streams with UNAVAILABLE; a bug
ends the RPC with INTERNAL.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.engine import Engine, GenerateSpec, Reply, Request
from service.errors import CODE_NUMBERS, ServiceError, ShuttingDown, status_name

log = logging.getLogger("seqpred.servicer")
_exp = math.exp


def to_request(m: pb.StreamRequest) -> Request:
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
    return Request(m.session_id, m.tokens, m.text, m.start, m.end, m.top_k, m.score, gen, m.request_id)


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


def error_response(m: pb.StreamRequest, e: ServiceError) -> pb.StreamResponse:
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
        while True:
            m = await read()
            if m is EOF:
                return
            try:
                if not m.HasField("generate"):
                    await write(conv.reply(await engine.request(to_request(m))))
                else:
                    async for r in engine.generate(to_request(m)):
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
            r = to_request(request)
            if r.generate is None:
                return self.conv.reply(await self.engine.request(r))
            generated: list[tuple[int, float]] = []
            last: Reply | None = None
            first_scores = None
            async for rep in self.engine.generate(r):
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
            pos = self.engine.close(request.session_id)
        except Exception as e:
            await self._abort(context, e)
            raise
        return pb.CloseSessionResponse(session_id=request.session_id, position=pos)

    async def GetSession(self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext) -> pb.SessionInfo:
        self._count("GetSession")
        try:
            v = self.engine.get(request.session_id)
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
