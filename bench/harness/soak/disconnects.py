"""The soak client's disconnects, failures and server kills: how a driver carries on with the same session ids.

Every so many requests the driver disconnects, in one of four ways (:data:`DISCONNECTS`):

* ``cancel``: cancel the stream between requests and open a new one on the same channel;
* ``channel``: close the whole channel (TCP connection) and open a new one;
* ``inflight``: send a request and cancel the stream (or close the channel) before its answer comes. The server
  applies such a request entirely or not at all, so the next response's position must be either the
  acknowledged count or that plus the cancelled tokens; which one decides the history;
* ``midgen``: cancel a generation half-way. The server may have consumed more generated tokens than the client
  saw, so the session is reset (``start``) on its next use.

After a reconnect, the sessions' positions are sometimes checked with ``GetSession``.

With ``--kill-every`` the server is SIGKILLed and restarted (:class:`~harness.soak.types.Outage`): a request cut by the
kill counts as interrupted, not as an error, and is treated like one cancelled in flight; every session's next position
must then equal its acknowledged count (``--durability sync``), or, with a lossy store (``periodic``), the length of
some prefix of the session's acknowledged history, from which the history goes on (a session may also be gone).
Any other failure is an error; the driver reconnects and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import grpc

from harness.soak.requests import Requests
from harness.soak.types import Failed, Track, describe, error_code
from service._proto.seqpred.v1 import seqpred_pb2 as pb

DISCONNECTS = ("cancel", "channel", "inflight", "midgen")


class Disconnects(Requests):
    """Disconnects on purpose, and recovery from failures and server kills, for one stream of the soak."""

    # -- failures and kills ------------------------------------------------------------------------------------

    async def _guarded(self, step: Callable[[], Awaitable[None]]) -> None:
        """One step; a failure is an error unless the server was killed meanwhile (then reconnect and go on)."""
        if self.outage.gen != self.seen_gen:
            await self._after_outage()
        try:
            await step()
        except (Failed, grpc.RpcError) as e:
            cur = self.current
            if self.outage.gen != self.seen_gen or self.outage.down:
                self.stats.interrupted += 1
                self._unknown_outcome()
                await self._after_outage()
            elif error_code(e) == "NOT_FOUND" and cur and cur[0].suspect and self.outage.lossy:
                self.stats.lost_sessions += 1  # created after the last durable point of a killed server
                self._emit(cur[0])
                cur[0].sid = ""
            else:
                self.stats.error(f"stream {self.i}: {describe(e)}")
                self._unknown_outcome()
                await self._drop(whole_channel=True)
        self.current = None

    def _unknown_outcome(self) -> None:
        """The current request failed without an answer: record what its session may or may not have done."""
        if self.current is None:
            return
        t, kind, toks, chosen = self.current
        if kind == "feed" and t.maybe is None and t.seg is not None:
            t.maybe = toks  # applied entirely or not at all; the next position tells
        elif kind == "create":
            if chosen:  # it may exist: reset it before use
                t.sid, t.lost, t.seg = chosen, True, None
        elif kind == "end":
            self._emit(t)
            t.sid = ""  # closed or not (an idle timeout frees it if not)
        else:
            self._lose(t)

    async def _after_outage(self) -> None:
        """The server was killed: wait for its restart, then reconnect; every session's next position is checked
        (exactly, unless the store is lossy: then it may have fallen back)."""
        with contextlib.suppress(Exception):
            await self.channel.close()
        while True:
            self.seen_gen = self.outage.gen
            while self.outage.down:
                await asyncio.sleep(0.05)
            self._open_channel()
            with contextlib.suppress(asyncio.TimeoutError, grpc.RpcError):
                await asyncio.wait_for(self.channel.channel_ready(), 60)
            if self.seen_gen == self.outage.gen and not self.outage.down:
                break
            await self.channel.close()
        for t in self.tracks:
            t.suspect = bool(t.sid)
        self.stats.reconnects["restart"] += 1

    # -- disconnects -------------------------------------------------------------------------------------------

    async def _disconnect(self, t: Track, kind: str) -> None:
        rng = self.rng
        usable = bool(t.sid) and not t.lost and t.maybe is None and t.pos < t.target
        if kind == "inflight" and usable:
            toks = self._tokens(int(rng.integers(1, 17)))
            self.stats.requests += 1
            await self.call.write(self._request(t.sid, toks, top_k=self._top_k()))
            await asyncio.sleep(float(rng.choice([0.0, 0.0005, 0.002])))
            t.maybe = toks
            await self._drop(whole_channel=bool(rng.random() < 0.5))
        elif kind == "midgen" and usable:
            n = int(rng.integers(4, 17))
            await self._generate(t, n, greedy=True, stop_after=int(rng.integers(1, n)))
            await self._drop(whole_channel=False)
            self._lose(t)
        else:
            kind = "channel" if kind == "channel" else "cancel"
            await self._drop(whole_channel=kind == "channel")
        self.stats.reconnects[kind] += 1
        if rng.random() < self.plan.verify_after_reconnect:
            for u in self.tracks:
                if u.sid and not u.lost and u.maybe is None and not u.suspect:
                    info = await self.stub.GetSession(pb.GetSessionRequest(session_id=u.sid), timeout=30)
                    self._resolve(u, 0, info.position, "GetSession after a reconnect")
