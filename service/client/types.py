"""What the client library returns and sends: :class:`RequestError`, :class:`Result`, :class:`Prediction`,
:class:`SequenceScore`, :func:`make_request`, and their conversions from and to protobuf (shared by the blocking
:mod:`service.client.sync` and the asyncio :mod:`service.client.aio`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from service._proto.seqpred.v1 import seqpred_pb2 as pb

__all__ = ["Prediction", "RequestError", "Result", "SequenceScore", "make_request"]


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


def to_prediction(t: pb.Token) -> Prediction:
    return Prediction(t.id, t.text, t.prob, t.logprob)


def check_response(resp: pb.StreamResponse) -> pb.StreamResponse:
    if resp.HasField("error"):
        code = next((c for c in grpc.StatusCode if c.value[0] == resp.error.code), grpc.StatusCode.UNKNOWN)
        raise RequestError(code, resp.error.message, resp.session_id)
    return resp


def to_result(resp: pb.StreamResponse) -> Result:
    return Result(
        resp.session_id,
        resp.position,
        [to_prediction(t) for t in resp.predictions],
        list(resp.token_logprobs),
        [to_prediction(t) for t in resp.generated],
        resp.ended,
    )


def merge_result(acc: Result | None, resp: pb.StreamResponse) -> Result:
    r = to_result(resp)
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


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


def rpc_error(e: grpc.RpcError) -> RequestError:
    return RequestError(e.code(), e.details() or "")


def model_info_dict(m: pb.ModelInfo) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(m, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def to_scores(resp: pb.ScoreResponse) -> list[SequenceScore]:
    return [
        SequenceScore(s.num_tokens, list(s.token_logprobs), s.total_logprob, [to_prediction(t) for t in s.predictions])
        for s in resp.scores
    ]


def to_sequences(items: Sequence[str | Sequence[int]]) -> list[pb.Sequence]:
    return [pb.Sequence(text=x) if isinstance(x, str) else pb.Sequence(tokens=list(x)) for x in items]
