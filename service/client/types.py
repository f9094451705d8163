"""What the client library returns and sends: :class:`RequestError`, :class:`Result`, :class:`Prediction`,
:class:`SequenceScore`, :class:`SessionInfo`, :class:`ModelInfo`, :func:`make_request`, and their conversions from
and to protobuf (shared by the blocking :mod:`service.client.sync` and the asyncio :mod:`service.client.aio`).
Every result is a dataclass; no protobuf message or dict reaches the caller."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from service._proto.seqpred.v1 import seqpred_pb2 as pb

__all__ = ["ModelInfo", "Prediction", "RequestError", "Result", "SequenceScore", "SessionInfo", "make_request"]


class RequestError(Exception):
    """The server refused a request: ``code`` (a ``grpc.StatusCode``) and ``message``. ``request_id``: the server's
    id of a failed RPC (its ``x-request-id``; the server's logs and traces name it), ``""`` for an in-band error of
    a stream; ``str(error)`` shows it."""

    def __init__(self, code: grpc.StatusCode, message: str, session_id: str = "", request_id: str = "") -> None:
        super().__init__(f"{code.name}: {message}" + (f" [request id {request_id}]" if request_id else ""))
        self.code = code
        self.message = message
        self.session_id = session_id
        self.request_id = request_id


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
    """The score of one sequence of a Score request: ``token_logprobs[i]`` is log p(token i+1 | tokens up to i)."""

    num_tokens: int
    token_logprobs: list[float]
    total_logprob: float
    predictions: list[Prediction]


@dataclass(frozen=True)
class SessionInfo:
    """A live session (``get_session``); times in UTC, ``time_left`` in seconds (None: never evicted)."""

    session_id: str
    position: int
    created: datetime
    last_active: datetime
    time_left: float | None


@dataclass(frozen=True)
class ModelInfo:
    """The served model and the server's limits (``model_info``); timeouts in seconds (None: never)."""

    cell: str
    layers: int
    hidden: int
    embed: int
    vocab_size: int
    tokenizer: str
    model_sha256: str
    execution_provider: str
    precision: str
    state_names: tuple[str, ...]
    state_bytes: int
    max_sessions: int
    max_request_tokens: int
    max_generate_tokens: int
    max_score_sequences: int
    max_top_k: int
    idle_timeout: float | None
    max_lifetime: float | None


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
    """A failed RPC as a RequestError; the server's ``" [request id ID]"`` message suffix becomes ``request_id``."""
    message: str = e.details() or ""
    trailing = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    rid = next((v for k, v in trailing or () if k == "x-request-id" and isinstance(v, str)), "")
    suffix = f" [request id {rid}]"
    if rid and message.endswith(suffix):
        message = message[: -len(suffix)]
    return RequestError(e.code(), message, request_id=rid)


def _seconds(m: Any, name: str) -> float | None:
    """A Duration field in seconds, None when unset."""
    return int(getattr(m, name).ToNanoseconds()) / 1e9 if m.HasField(name) else None


def _utc(t: Any) -> datetime:
    when: datetime = t.ToDatetime(tzinfo=UTC)
    return when


def to_model_info(m: pb.ModelInfo) -> ModelInfo:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ModelInfo):
        if f.name in ("idle_timeout", "max_lifetime"):
            values[f.name] = _seconds(m, f.name)
        elif f.name == "state_names":
            values[f.name] = tuple(m.state_names)
        else:
            values[f.name] = getattr(m, f.name)
    return ModelInfo(**values)


def to_session_info(m: pb.SessionInfo) -> SessionInfo:
    return SessionInfo(m.session_id, m.position, _utc(m.created), _utc(m.last_active), _seconds(m, "time_left"))


def to_scores(resp: pb.ScoreResponse) -> list[SequenceScore]:
    return [
        SequenceScore(s.num_tokens, list(s.token_logprobs), s.total_logprob, [to_prediction(t) for t in s.predictions])
        for s in resp.scores
    ]


def to_sequences(items: Sequence[str | Sequence[int]]) -> list[pb.Sequence]:
    return [pb.Sequence(text=x) if isinstance(x, str) else pb.Sequence(tokens=list(x)) for x in items]
