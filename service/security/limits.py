"""Concurrency limits by kind of traffic, so that clients without a token can never take the room of
authenticated calls (a gRPC server interceptor, :class:`RpcLimits`, placed after authentication).

Two pools:

* *public streams*: the long-lived RPCs served without a token, health ``Watch`` and server reflection. At most
  ``--max-public-streams`` are open in all and ``--max-public-streams-per-peer`` from one client address (the
  peer's IP, its port left out: one client opening many connections is still one peer); one more is refused at
  once with RESOURCE_EXHAUSTED, the open ones are not touched. Health ``Check`` (unary: what probes and
  orchestrators call) is never limited.
* *service RPCs*: the ``seqpred.v1.SeqPred`` RPCs that passed authentication (all of them when it is off), at most
  ``--max-concurrent-rpcs`` open; one more gets RESOURCE_EXHAUSTED. A call refused by authentication never counts.

gRPC's own ``maximum_concurrent_rpcs`` is not used: it counts every RPC, tokenless ones included, so holding
enough health streams without a token used to refuse authenticated calls.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import grpc

from service.errors import TooManyRpcs
from service.security.auth import OPEN_METHODS, behavior_of, method_handler

#: Long-lived RPCs served without a token (prefixes of ``/package.Service/Method``).
PUBLIC_STREAMS = ("/grpc.health.v1.Health/Watch", "/grpc.reflection.")


def peer_address(peer: str) -> str:
    """The client address of a gRPC peer string without its port: ``ipv4:10.0.0.7:5123`` -> ``ipv4:10.0.0.7``,
    ``ipv6:%5B::1%5D:5123`` (gRPC percent-encodes the brackets) -> ``ipv6:[::1]``; anything else (``unix:...``)
    as it is."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return unquote(peer.rsplit(":", 1)[0])
    return peer


class _Pool:
    """Open calls of one kind: in all and per peer address (``per_peer`` 0 = no per-peer limit)."""

    def __init__(self, limit: int, per_peer: int, what: str, flags: tuple[str, str]) -> None:
        self.limit, self.per_peer, self.what, self.flags = limit, per_peer, what, flags
        self.open = 0
        self.by_peer: dict[str, int] = {}

    def enter(self, peer: str) -> None:
        """Count one more call, or raise TooManyRpcs (counting nothing)."""
        if self.open >= self.limit:
            raise TooManyRpcs(
                f"server: {self.open} {self.what} open, the limit of {self.flags[0]} ({self.limit}); retry later"
            )
        if self.per_peer:
            n = self.by_peer.get(peer, 0)
            if n >= self.per_peer:
                raise TooManyRpcs(
                    f"server: {n} {self.what} open from {peer}, the limit of {self.flags[1]} ({self.per_peer}); "
                    "close some first"
                )
            self.by_peer[peer] = n + 1
        self.open += 1

    def leave(self, peer: str) -> None:
        self.open -= 1
        if self.per_peer:
            n = self.by_peer[peer] - 1
            if n:
                self.by_peer[peer] = n
            else:
                del self.by_peer[peer]


def _counted(pool: _Pool, behavior: Callable[..., Any], on_reject: Callable[[TooManyRpcs], None] | None) -> Any:
    """``behavior`` counted in ``pool`` while it runs (same function kind: grpc.aio picks the calling convention by
    inspecting it); refused with RESOURCE_EXHAUSTED when the pool is full."""

    async def admit(context: grpc.aio.ServicerContext) -> str:
        peer = peer_address(context.peer() or "") if pool.per_peer else ""
        try:
            pool.enter(peer)
        except TooManyRpcs as e:
            if on_reject is not None:
                on_reject(e)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        return peer

    if inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: grpc.aio.ServicerContext) -> Any:
            peer = await admit(context)
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                pool.leave(peer)

        return agen

    async def coro(request: Any, context: grpc.aio.ServicerContext) -> Any:
        peer = await admit(context)
        try:
            return await behavior(request, context)
        finally:
            pool.leave(peer)

    return coro


class RpcLimits(grpc.aio.ServerInterceptor):
    """The two pools of the module docstring; ``on_reject(error)`` sees each refusal (metrics)."""

    def __init__(
        self,
        max_rpcs: int,
        max_public_streams: int,
        max_public_streams_per_peer: int,
        on_reject: Callable[[TooManyRpcs], None] | None = None,
    ) -> None:
        self.service = _Pool(max_rpcs, 0, "RPCs", ("--max-concurrent-rpcs", ""))
        self.public = _Pool(
            max_public_streams,
            max_public_streams_per_peer,
            "health watches and reflection streams",
            ("--max-public-streams", "--max-public-streams-per-peer"),
        )
        self.on_reject = on_reject
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}  # method -> (it, counted)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return handler
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:  # the counting happens per call, inside; build it once
            return known[1]
        if method.startswith(PUBLIC_STREAMS):
            pool = self.public
        elif method.startswith(OPEN_METHODS):
            return handler  # health Check: short, and what probes call
        else:
            pool = self.service
        counted = method_handler(handler, _counted(pool, behavior_of(handler), self.on_reject))
        self._wrapped[method] = (handler, counted)
        return counted
