"""The asyncio client (``grpc.aio``): :class:`AsyncClient` and :class:`AsyncSession`, twins of the blocking
:class:`~service.client.sync.Client` and :class:`~service.client.sync.Session`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.client.types import (
    ModelInfo,
    Prediction,
    RequestError,
    Result,
    SequenceScore,
    SessionInfo,
    auth_metadata,
    check_response,
    make_request,
    merge_result,
    rpc_error,
    to_model_info,
    to_prediction,
    to_result,
    to_scores,
    to_sequences,
    to_session_info,
)

__all__ = ["AsyncClient", "AsyncSession"]


class AsyncSession:
    """The asyncio twin of :class:`~service.client.sync.Session`."""

    def __init__(
        self, stub: pb_grpc.SeqPredStub, session_id: str = "", end_on_exit: bool = False, metadata: Any = None
    ) -> None:
        self.session_id = session_id
        self.end_on_exit = end_on_exit
        self._call: Any = stub.Stream(metadata=metadata)
        self._unfinished = False

    async def _read(self) -> pb.StreamResponse:
        resp = await self._call.read()
        if resp is grpc.aio.EOF:
            self._unfinished = False
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "stream closed by the server")
        if resp.final:
            self._unfinished = False
        if resp.session_id:
            self.session_id = resp.session_id
        return resp

    async def _send(self, req: pb.StreamRequest) -> AsyncIterator[pb.StreamResponse]:
        try:
            while self._unfinished:  # a previous generation was abandoned: skip the rest of its responses
                await self._read()
            if not req.session_id and self.session_id:
                req.session_id = self.session_id
            await self._call.write(req)
            self._unfinished = True
            while self._unfinished:
                yield check_response(await self._read())
        except grpc.RpcError as e:
            raise rpc_error(e) from None

    async def request(self, req: pb.StreamRequest) -> Result:
        acc: Result | None = None
        async for resp in self._send(req):
            acc = merge_result(acc, resp)
        assert acc is not None
        return acc

    async def feed(
        self,
        text: str | None = None,
        tokens: Sequence[int] | None = None,
        *,
        top_k: int = 5,
        score: bool = False,
        start: bool = False,
        end: bool = False,
    ) -> Result:
        return await self.request(
            make_request(text=text, tokens=tokens, top_k=top_k, score=score, start=start, end=end)
        )

    async def generate(
        self,
        n: int,
        *,
        prompt: str | None = None,
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[Prediction]:
        req = make_request(text=prompt, generate=n, temperature=temperature, gen_top_k=top_k, top_p=top_p, seed=seed)
        async for resp in self._send(req):
            for t in resp.generated:
                yield to_prediction(t)

    async def reset(self) -> Result:
        return await self.request(make_request(session_id=self.session_id, start=True))

    async def end(self) -> Result:
        return await self.request(make_request(end=True))

    async def close(self) -> None:
        if self.end_on_exit and self.session_id:
            with contextlib.suppress(RequestError):
                await self.end()
        await self._call.done_writing()
        while await self._call.read() is not grpc.aio.EOF:
            pass

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(grpc.RpcError):
            await self.close()


class AsyncClient:
    """asyncio client (``grpc.aio``); create it inside the event loop that uses it."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = None,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        if channel is None:
            channel = (
                grpc.aio.insecure_channel(target)
                if credentials is None
                else grpc.aio.secure_channel(target, credentials)
            )
        self.channel = channel
        self.stub = pb_grpc.SeqPredStub(self.channel)
        self.timeout = timeout
        self.metadata = auth_metadata(token)

    def session(self, session_id: str = "", *, end_on_exit: bool = False) -> AsyncSession:
        return AsyncSession(self.stub, session_id, end_on_exit, self.metadata)

    async def predict(self, text: str | None = None, tokens: Sequence[int] | None = None, **kw: Any) -> Result:
        try:
            resp = await self.stub.Predict(
                make_request(text=text, tokens=tokens, **kw), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise rpc_error(e) from None
        return to_result(resp)

    async def score(self, sequences: Sequence[str | Sequence[int]], top_k: int = 0) -> list[SequenceScore]:
        try:
            resp = await self.stub.Score(
                pb.ScoreRequest(sequences=to_sequences(sequences), top_k=top_k),
                timeout=self.timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as e:
            raise rpc_error(e) from None
        return to_scores(resp)

    async def close_session(self, session_id: str) -> int:
        try:
            resp = await self.stub.CloseSession(
                pb.CloseSessionRequest(session_id=session_id), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise rpc_error(e) from None
        return int(resp.position)

    async def get_session(self, session_id: str) -> SessionInfo:
        try:
            return to_session_info(
                await self.stub.GetSession(
                    pb.GetSessionRequest(session_id=session_id), timeout=self.timeout, metadata=self.metadata
                )
            )
        except grpc.RpcError as e:
            raise rpc_error(e) from None

    async def model_info(self) -> ModelInfo:
        try:
            return to_model_info(
                await self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self.metadata)
            )
        except grpc.RpcError as e:
            raise rpc_error(e) from None

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
