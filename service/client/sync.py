"""Client library for the seqpred service: :class:`Client` (blocking; :class:`~service.client.aio.AsyncClient`
for asyncio).

    from service.client.sync import Client

    with Client("localhost:50051") as c:
        with c.session() as s:                        # one bidirectional stream, one server-side session
            r = s.feed("def __init__(self", top_k=5)  # -> Result: position, predictions, ...
            print([p.text for p in r.predictions])
            print("".join(t.text for t in s.generate(20, temperature=0.8)))
        print(c.score(["import os\\n", "import sys\\n"]))

A session lives on the server until it is ended (``end()``, ``end=True``), closed (``close_session``) or evicted
for idleness; leaving a ``with c.session()`` block only closes the stream, unless ``end_on_exit`` is set. Errors
the server reports for a request raise :class:`~service.client.types.RequestError` with the gRPC status code and
message.

Security: ``credentials`` (from :func:`service.security.tls.channel_credentials`) makes the channel TLS (mutual TLS with
a client certificate); ``token`` is sent as ``authorization: Bearer TOKEN`` with every RPC.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator, Sequence
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

__all__ = ["Client", "Session"]


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
                yield check_response(self._read())
        except grpc.RpcError as e:
            raise rpc_error(e) from None

    def request(self, req: pb.StreamRequest) -> Result:
        """Send any request and gather its responses into one Result."""
        acc: Result | None = None
        for resp in self._send(req):
            acc = merge_result(acc, resp)
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
                yield to_prediction(t)

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
        self.metadata = auth_metadata(token)

    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def session(self, session_id: str = "", *, end_on_exit: bool = False) -> Session:
        return Session(self.stub, session_id, end_on_exit, self.metadata)

    def predict(self, text: str | None = None, tokens: Sequence[int] | None = None, **kw: Any) -> Result:
        """One unary request (see :func:`make_request` for the keywords)."""
        try:
            return to_result(
                self.stub.Predict(
                    make_request(text=text, tokens=tokens, **kw), timeout=self.timeout, metadata=self.metadata
                )
            )
        except grpc.RpcError as e:
            raise rpc_error(e) from None

    def score(self, sequences: Sequence[str | Sequence[int]], top_k: int = 0) -> list[SequenceScore]:
        try:
            resp = self.stub.Score(
                pb.ScoreRequest(sequences=to_sequences(sequences), top_k=top_k),
                timeout=self.timeout,
                metadata=self.metadata,
            )
        except grpc.RpcError as e:
            raise rpc_error(e) from None
        return to_scores(resp)

    def close_session(self, session_id: str) -> int:
        try:
            return int(
                self.stub.CloseSession(
                    pb.CloseSessionRequest(session_id=session_id), timeout=self.timeout, metadata=self.metadata
                ).position
            )
        except grpc.RpcError as e:
            raise rpc_error(e) from None

    def get_session(self, session_id: str) -> SessionInfo:
        """A live session's position, times and time left (it does not touch the session)."""
        try:
            return to_session_info(
                self.stub.GetSession(
                    pb.GetSessionRequest(session_id=session_id), timeout=self.timeout, metadata=self.metadata
                )
            )
        except grpc.RpcError as e:
            raise rpc_error(e) from None

    def model_info(self) -> ModelInfo:
        """The served model and the server's limits."""
        try:
            return to_model_info(
                self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self.metadata)
            )
        except grpc.RpcError as e:
            raise rpc_error(e) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
