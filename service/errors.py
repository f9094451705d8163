"""Errors a request can cause, and the one mapping from error class to gRPC status code.

The mapping holds status code *names* (``grpc.StatusCode[name]``) so that this module, like the rest of the
core, imports nothing from gRPC. Every message names the field and the bad value.
"""

from __future__ import annotations

from model.errors import SeqpredError


class ServiceError(SeqpredError):
    """Base of every error the service reports to a client.

    ``session_id`` is set by the engine when the failing request's session is known (a stream's in-band error
    names it, which matters when the server created the id).
    """

    session_id: str = ""


class InvalidArgument(ServiceError):
    """A request field is malformed or out of range."""


class MalformedMessage(InvalidArgument):
    """The request's bytes are not a valid protobuf message of the RPC's request type."""


class EmptyRequest(InvalidArgument):
    """The request asks for nothing."""


class SessionIdTooLong(InvalidArgument):
    """A client-chosen session id is longer than the limit."""


class TokenOutOfRange(InvalidArgument):
    """A token id outside [0, vocab_size)."""


class UnknownSymbol(InvalidArgument):
    """Text holds a symbol the model's tokenizer does not know."""


class TooManyTokens(InvalidArgument):
    """A request carries or asks for more tokens than the server allows."""


class BadSampling(InvalidArgument):
    """Generation or prediction parameters out of range."""


class NothingToPredictFrom(InvalidArgument):
    """Predictions or generation asked of a session that has consumed no token yet."""


class NoHeadGraph(ServiceError):
    """The model offers no way to get the distribution after a session's last token without advancing it."""


class SessionNotFound(ServiceError):
    """The id names no live session (never created, closed, or evicted)."""


class CapacityExhausted(ServiceError):
    """The server holds its maximum number of sessions."""


class QuotaExhausted(CapacityExhausted):
    """The principal holds its quota of sessions (``--max-sessions-per-principal``)."""


class TooManyRpcs(ServiceError):
    """An RPC beyond a concurrency limit (``--max-concurrent-rpcs``, ``--max-public-streams[-per-peer]``)."""


class Unauthenticated(ServiceError):
    """No bearer token, or one that is not in the server's token file."""


class ShuttingDown(ServiceError):
    """The server is draining and takes no new work."""


class SessionConflict(ServiceError):
    """Another request (on another replica) changed the session first; this one was not applied (shared store)."""


class StoreUnavailable(ServiceError):
    """The shared session store (Redis) cannot be reached or used."""


class StoreMismatch(ServiceError):
    """A stored session does not fit this server's model (another model, state layout or a malformed record)."""


class Internal(ServiceError):
    """A bug: something the server should never do."""


class SettingsError(SeqpredError):
    """A server setting (flag or environment variable) is invalid."""


class ModelLoadError(SeqpredError):
    """The model directory is missing, incomplete, corrupt, or does not follow the export contract."""


class StateDirError(SeqpredError):
    """The durable state directory (``--state-dir``) cannot be used: corrupt before its last record, written for
    another model, locked by another server, or holding more sessions than ``--max-sessions``."""


#: The one mapping from error class to gRPC status code name; subclasses inherit their base's code.
STATUS_CODES: dict[type[Exception], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    SessionNotFound: "NOT_FOUND",
    CapacityExhausted: "RESOURCE_EXHAUSTED",
    TooManyRpcs: "RESOURCE_EXHAUSTED",
    ShuttingDown: "UNAVAILABLE",
    SessionConflict: "ABORTED",
    StoreUnavailable: "UNAVAILABLE",
    StoreMismatch: "FAILED_PRECONDITION",
    Unauthenticated: "UNAUTHENTICATED",
    NoHeadGraph: "FAILED_PRECONDITION",
    Internal: "INTERNAL",
    SettingsError: "FAILED_PRECONDITION",
    ModelLoadError: "FAILED_PRECONDITION",
    StateDirError: "FAILED_PRECONDITION",
}

#: gRPC status code numbers (google.rpc.Code), for in-band errors in a stream.
CODE_NUMBERS: dict[str, int] = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


def status_name(exc: BaseException | type[BaseException]) -> str:
    """The gRPC status code name for an error (``INTERNAL`` for anything unmapped)."""
    cls = exc if isinstance(exc, type) else type(exc)
    for base in cls.__mro__:
        if base in STATUS_CODES:
            return STATUS_CODES[base]
    return "INTERNAL"
