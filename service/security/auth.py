"""Bearer-token authentication: the token file, a constant-time lookup, and the gRPC server interceptor.

Token file (``--auth-tokens FILE``): one ``principal:token`` per line. Blank lines and lines starting with ``#``
are ignored and surrounding whitespace is stripped. A *principal* is 1-64 characters of ``A-Z a-z 0-9 . _ @ -``
and names who is calling (sessions belong to it, quotas count per principal); a *token* is everything after the
first ``:``, at least 16 printable ASCII characters without spaces. A principal may have several tokens (to rotate
them); one token may not name two principals. The file is read once, at start-up.

Clients send the metadata ``authorization: Bearer TOKEN`` with every RPC. The lookup hashes the presented token
(SHA-256) and compares the digest with the digest of *every* known token using :func:`hmac.compare_digest`,
without stopping at a match: the time taken depends neither on which entry matches nor on how much of a token
is right, and equal-length digests leak no token length either. A missing, malformed or unknown token ends the RPC
with UNAUTHENTICATED before the servicer runs; the message never echoes the token.

Open without a token: ``grpc.health.v1.Health`` (load balancers and orchestrators probe it) and server
reflection (it describes the schema, which is public in ``proto/``; it reveals no session or model data).

The authenticated principal reaches the servicer through a context variable set around the RPC's handler
(:func:`current_principal`); without authentication it is ``""``, the anonymous principal.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import re
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from service.errors import SettingsError, Unauthenticated

_PRINCIPAL: ContextVar[str] = ContextVar("seqpred_principal", default="")
PRINCIPAL_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")
TOKEN_RE = re.compile(r"[\x21-\x7e]{16,}")
MIN_TOKEN_CHARS = 16
#: Methods served without a token (prefixes of ``/package.Service/Method``).
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
METADATA_KEY = "authorization"


def current_principal() -> str:
    """The principal of the RPC being handled (``""`` when authentication is off)."""
    return _PRINCIPAL.get()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class TokenTable:
    """``(sha256(token), principal)`` pairs; the tokens themselves are not kept."""

    entries: tuple[tuple[bytes, str], ...]

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str]]) -> TokenTable:
        """From ``[(principal, token)]`` (tests; the server reads :func:`load_tokens`)."""
        return cls(tuple((_digest(token), principal) for principal, token in pairs))

    @property
    def principals(self) -> list[str]:
        return sorted({p for _, p in self.entries})

    def authenticate(self, token: str) -> str | None:
        """The principal holding ``token``, or None. Every entry is compared (no early exit)."""
        d = _digest(token)
        found: str | None = None
        for digest, principal in self.entries:
            if hmac.compare_digest(digest, d):
                found = principal
        return found


def parse_tokens(text: str, source: str = "--auth-tokens") -> TokenTable:
    """Parse a token file's text; errors name ``source`` and the line, never the token."""
    pairs: list[tuple[str, str]] = []
    seen: dict[bytes, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {n}"
        principal, sep, token = line.partition(":")
        principal, token = principal.strip(), token.strip()
        if not sep:
            raise SettingsError(f"{where}: expected 'principal:token'")
        if not PRINCIPAL_RE.fullmatch(principal):
            raise SettingsError(
                f"{where}: principal {principal[:64]!r} must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '@', '-'"
            )
        if not TOKEN_RE.fullmatch(token):
            raise SettingsError(
                f"{where}: the token of {principal!r} must be at least {MIN_TOKEN_CHARS} printable ASCII characters "
                f"without spaces (it has {len(token)} characters)"
            )
        d = _digest(token)
        if d in seen:
            raise SettingsError(f"{where}: the same token as line {seen[d]} (a token names one principal)")
        seen[d] = n
        pairs.append((principal, token))
    if not pairs:
        raise SettingsError(f"{source}: no 'principal:token' lines; every request would be refused")
    return TokenTable.from_pairs(pairs)


def load_tokens(path: str | Path) -> TokenTable:
    """Read and parse a token file (see the module docstring); SettingsError names the file and the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"--auth-tokens: cannot read {str(path)!r}: {e}") from None
    return parse_tokens(text, f"--auth-tokens {str(path)!r}")


def bearer_token(metadata: Sequence[Any] | None) -> str:
    """The token of an ``authorization: Bearer TOKEN`` entry; raises Unauthenticated (never echoing it)."""
    values = [v for k, v in metadata or () if k == METADATA_KEY]
    if not values:
        raise Unauthenticated(f"{METADATA_KEY}: no bearer token; send the metadata '{METADATA_KEY}: Bearer TOKEN'")
    if len(values) > 1:
        raise Unauthenticated(f"{METADATA_KEY}: {len(values)} entries; send exactly one")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(f"{METADATA_KEY}: expected 'Bearer TOKEN' (the scheme must be Bearer)")
    return token.strip()


def method_handler(
    like: grpc.RpcMethodHandler, behavior: Callable[..., Any], request_deserializer: Callable[..., Any] | None = None
) -> grpc.RpcMethodHandler:
    """A handler of the same kind and (de)serializers as ``like`` (or ``request_deserializer``) running
    ``behavior``."""
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(bool(like.request_streaming), bool(like.response_streaming))]
    return factory(
        behavior,
        request_deserializer=request_deserializer or like.request_deserializer,
        response_serializer=like.response_serializer,
    )


def behavior_of(h: grpc.RpcMethodHandler) -> Callable[..., Any]:
    if h.request_streaming:
        return h.stream_stream if h.response_streaming else h.stream_unary
    return h.unary_stream if h.response_streaming else h.unary_unary


def _as_principal(principal: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
    """``behavior`` run with :func:`current_principal` returning ``principal`` (same function kind, since
    grpc.aio picks the calling convention by inspecting it)."""
    if inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: Any) -> Any:
            token = _PRINCIPAL.set(principal)
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                _PRINCIPAL.reset(token)

        return agen

    async def coro(request: Any, context: Any) -> Any:
        token = _PRINCIPAL.set(principal)
        try:
            return await behavior(request, context)
        finally:
            _PRINCIPAL.reset(token)

    return coro


def _deny(message: str) -> Callable[..., Any]:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return deny


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token of every RPC except :data:`OPEN_METHODS`; ``on_reject(error)`` sees each refusal
    (metrics)."""

    def __init__(self, table: TokenTable, on_reject: Callable[[Unauthenticated], None] | None = None) -> None:
        self.table = table
        self.on_reject = on_reject

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHODS):
            return handler
        try:
            token = bearer_token(handler_call_details.invocation_metadata)
            principal = self.table.authenticate(token)
            if principal is None:
                raise Unauthenticated(f"{METADATA_KEY}: the bearer token is not valid")
        except Unauthenticated as e:
            if self.on_reject is not None:
                self.on_reject(e)
            return method_handler(handler, _deny(str(e)))
        return method_handler(handler, _as_principal(principal, behavior_of(handler)))
