"""Client library for the seqpred service: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

    from service.client import Client

    with Client("localhost:50051") as c:
        with c.session() as s:                        # one bidirectional stream, one server-side session
            r = s.feed("def __init__(self", top_k=5)  # -> Result: position, predictions, ...
            print([p.text for p in r.predictions])
            print("".join(t.text for t in s.generate(20, temperature=0.8)))
        print(c.score(["import os\\n", "import sys\\n"]))

A session lives on the server until it is ended (``end()``, ``end=True``), closed (``close_session``) or evicted
for idleness; leaving a ``with c.session()`` block only closes the stream, unless ``end_on_exit`` is set. Errors
the server reports for a request raise :class:`RequestError` with the gRPC status code and message.

Security: ``credentials`` (from :func:`service.tls.channel_credentials`) makes the channel TLS (mutual TLS with
a client certificate); ``token`` is sent as ``authorization: Bearer TOKEN`` with every RPC.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "Client",
    "Prediction",
    "RequestError",
    "Result",
    "SequenceScore",
    "Session",
]


class RequestError(Exception):
    """The server refused a request: ``code`` (a ``grpc.StatusCode``) and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str, session_id: str = "") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.session_id = session_id


@dataclass(frozen=True)
class Prediction:
    """A token with its probability under the model."""

    id: int
    text: str
    prob: float
    logprob: float


@dataclass
class Result:
    """The answer to one request (generation folded in: ``generated`` holds every token)."""

    session_id: str
    position: int
    predictions: list[Prediction] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    generated: list[Prediction] = field(default_factory=list)
    ended: bool = False


@dataclass(frozen=True)
class SequenceScore:
    num_tokens: int
    token_logprobs: list[float]
    total_logprob: float
    predictions: list[Prediction]


def _pred(t: pb.Token) -> Prediction:
    return Prediction(t.id, t.text, t.prob, t.logprob)


def _check(resp: pb.StreamResponse) -> pb.StreamResponse:
    if resp.HasField("error"):
        code = next((c for c in grpc.StatusCode if c.value[0] == resp.error.code), grpc.StatusCode.UNKNOWN)
        raise RequestError(code, resp.error.message, resp.session_id)
    return resp


def _result(resp: pb.StreamResponse) -> Result:
    return Result(
        resp.session_id,
        resp.position,
        [_pred(t) for t in resp.predictions],
        list(resp.token_logprobs),
        [_pred(t) for t in resp.generated],
        resp.ended,
    )


def _merge(acc: Result | None, resp: pb.StreamResponse) -> Result:
    r = _result(resp)
    if acc is None:
        return r
    acc.position, acc.ended = r.position, r.ended
    acc.generated += r.generated
    acc.predictions = r.predictions or acc.predictions
    return acc


def make_request(
    session_id: str = "",
    text: str | None = None,
    tokens: Sequence[int] | None = None,
    *,
    top_k: int = 0,
    score: bool = False,
    start: bool = False,
    end: bool = False,
    generate: int = 0,
    temperature: float | None = None,
    gen_top_k: int = 0,
    top_p: float | None = None,
    seed: int | None = None,
    request_id: int = 0,
) -> pb.StreamRequest:
    """A ``StreamRequest``; ``generate`` > 0 asks for that many tokens with the given sampling parameters."""
    req = pb.StreamRequest(session_id=session_id, top_k=top_k, score=score, start=start, end=end, request_id=request_id)
    if text:
        req.text = text
    if tokens is not None:
        req.tokens.extend(tokens)
    if generate:
        g = req.generate
        g.max_tokens = generate
        g.top_k = gen_top_k
        if temperature is not None:
            g.temperature = temperature
        if top_p is not None:
            g.top_p = top_p
        if seed is not None:
            g.seed = seed
    return req


def _metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


def _raise_rpc(e: grpc.RpcError) -> RequestError:
    return RequestError(e.code(), e.details() or "")


def _model_info(m: pb.ModelInfo) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(m, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _scores(resp: pb.ScoreResponse) -> list[SequenceScore]:
    return [
        SequenceScore(s.num_tokens, list(s.token_logprobs), s.total_logprob, [_pred(t) for t in s.predictions])
        for s in resp.scores
    ]


def _sequences(items: Sequence[str | Sequence[int]]) -> list[pb.Sequence]:
    return [pb.Sequence(text=x) if isinstance(x, str) else pb.Sequence(tokens=list(x)) for x in items]


# ----------------------------------------------------------------------------------------------------------------
# Blocking


_END = object()


class Session:
    """One bidirectional stream bound to one server-side session (created on the first request)."""

    def __init__(
        self, stub: pb_grpc.SeqPredStub, session_id: str = "", end_on_exit: bool = False, metadata: Any = None
    ) -> None:
        self.session_id = session_id
        self.end_on_exit = end_on_exit
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._call = stub.Stream(iter(self._q.get, _END), metadata=metadata)
        self._unfinished = False

    def _read(self) -> pb.StreamResponse:
        resp: pb.StreamResponse = next(self._call)
        if resp.final:
            self._unfinished = False
        if resp.session_id:
            self.session_id = resp.session_id
        return resp

    def _send(self, req: pb.StreamRequest) -> Iterator[pb.StreamResponse]:
        try:
            while self._unfinished:  # a previous generation was abandoned: skip the rest of its responses
                self._read()
            if not req.session_id and self.session_id:
                req.session_id = self.session_id
            self._q.put(req)
            self._unfinished = True
            while self._unfinished:
                yield _check(self._read())
        except grpc.RpcError as e:
            raise _raise_rpc(e) from None

    def request(self, req: pb.StreamRequest) -> Result:
        """Send any request and gather its responses into one Result."""
        acc: Result | None = None
        for resp in self._send(req):
            acc = _merge(acc, resp)
        assert acc is not None
        return acc

    def feed(
        self,
        text: str | None = None,
        tokens: Sequence[int] | None = None,
        *,
        top_k: int = 5,
        score: bool = False,
        start: bool = False,
        end: bool = False,
    ) -> Result:
        """Advance the session by ``text`` or ``tokens``; returns the top-k next tokens (and scores)."""
        return self.request(make_request(text=text, tokens=tokens, top_k=top_k, score=score, start=start, end=end))

    def generate(
        self,
        n: int,
        *,
        prompt: str | None = None,
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Iterator[Prediction]:
        """Generate ``n`` tokens (after ``prompt``, if given), yielding each as the server produces it."""
        req = make_request(text=prompt, generate=n, temperature=temperature, gen_top_k=top_k, top_p=top_p, seed=seed)
        for resp in self._send(req):
            for t in resp.generated:
                yield _pred(t)

    def reset(self) -> Result:
        """Zero the session's state (``start=true``)."""
        return self.request(make_request(session_id=self.session_id, start=True))

    def end(self) -> Result:
        """Free the session on the server."""
        return self.request(make_request(end=True))

    def close(self) -> None:
        """Close the stream (the session lives on unless ``end_on_exit``)."""
        if self.end_on_exit and self.session_id:
            with contextlib.suppress(RequestError):
                self.end()
        self._q.put(_END)
        for _ in self._call:  # drain until the server closes its side
            pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(grpc.RpcError):
            self.close()


class Client:
    """Blocking client: unary RPCs and :meth:`session` streams over one channel."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = None,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        if channel is None:
            channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
        self.channel = channel
        self.stub = pb_grpc.SeqPredStub(self.channel)
        self.timeout = timeout
        self.metadata = _metadata(token)

    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def session(self, session_id: str = "", *, end_on_exit: bool = False) -> Session:
        return Session(self.stub, session_id, end_on_exit, self.metadata)

    def predict(self, text: str | None = None, tokens: Sequence[int] | None = None, **kw: Any) -> Result:
        """One unary request (see :func:`make_request` for the keywords)."""
        try:
            return _result(
                self.stub.Predict(
                    make_request(text=text, tokens=tokens, **kw), timeout=self.timeout, metadata=self.metadata
                )
            )
        except grpc.RpcError as e:
            raise _raise_rpc(e) from None

    def score(self, sequences: Sequence[str | Sequence[int]], top_k: int = 0) -> list[SequenceScore]:
        try:
            resp = self.stub.Score(
                pb.ScoreRequest(sequences=_sequences(sequences), top_k=top_k),
                timeout=self.timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as e:
            raise _raise_rpc(e) from None
        return _scores(resp)

    def close_session(self, session_id: str) -> int:
        try:
            return int(
                self.stub.CloseSession(
                    pb.CloseSessionRequest(session_id=session_id), timeout=self.timeout, metadata=self.metadata
                ).position
            )
        except grpc.RpcError as e:
            raise _raise_rpc(e) from None

    def get_session(self, session_id: str) -> pb.SessionInfo:
        try:
            return self.stub.GetSession(
                pb.GetSessionRequest(session_id=session_id), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise _raise_rpc(e) from None

    def model_info(self) -> dict[str, Any]:
        try:
            return _model_info(
                self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self.metadata)
            )
        except grpc.RpcError as e:
            raise _raise_rpc(e) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------------------
# asyncio


class AsyncSession:
    """The asyncio twin of :class:`Session`."""

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
                yield _check(await self._read())
        except grpc.RpcError as e:
            raise _raise_rpc(e) from None

    async def request(self, req: pb.StreamRequest) -> Result:
        acc: Result | None = None
        async for resp in self._send(req):
            acc = _merge(acc, resp)
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
                yield _pred(t)

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
        self.metadata = _metadata(token)

    def session(self, session_id: str = "", *, end_on_exit: bool = False) -> AsyncSession:
        return AsyncSession(self.stub, session_id, end_on_exit, self.metadata)

    async def predict(self, text: str | None = None, tokens: Sequence[int] | None = None, **kw: Any) -> Result:
        try:
            resp = await self.stub.Predict(
                make_request(text=text, tokens=tokens, **kw), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise _raise_rpc(e) from None
        return _result(resp)

    async def score(self, sequences: Sequence[str | Sequence[int]], top_k: int = 0) -> list[SequenceScore]:
        try:
            resp = await self.stub.Score(
                pb.ScoreRequest(sequences=_sequences(sequences), top_k=top_k),
                timeout=self.timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as e:
            raise _raise_rpc(e) from None
        return _scores(resp)

    async def close_session(self, session_id: str) -> int:
        try:
            resp = await self.stub.CloseSession(
                pb.CloseSessionRequest(session_id=session_id), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise _raise_rpc(e) from None
        return int(resp.position)

    async def get_session(self, session_id: str) -> pb.SessionInfo:
        try:
            return await self.stub.GetSession(
                pb.GetSessionRequest(session_id=session_id), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as e:
            raise _raise_rpc(e) from None

    async def model_info(self) -> dict[str, Any]:
        try:
            return _model_info(
                await self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self.metadata)
            )
        except grpc.RpcError as e:
            raise _raise_rpc(e) from None

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
