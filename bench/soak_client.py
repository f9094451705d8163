"""The soak benchmark's client: one :class:`Driver` per concurrent stream, each juggling a few sessions.

A driver keeps ``sessions_per_stream`` sessions alive on one bidirectional stream and picks one at random for
every request: a single token or a prompt (``top_k``, sometimes ``score``), ``top_k`` alone, a greedy or sampled
generation, a reset (``start`` on a live id), or, once a session reaches its random target length, its end
(``end`` on the last request or ``CloseSession``); a new session then takes its place (server-created id or a
client-chosen one with ``start``), so the number of sessions stays steady.

Every so many requests the driver disconnects, in one of four ways, and carries on with the same session ids:

* ``cancel``: cancel the stream between requests and open a new one on the same channel;
* ``channel``: close the whole channel (TCP connection) and open a new one;
* ``inflight``: send a request and cancel the stream (or close the channel) before its answer comes. The server
  applies such a request entirely or not at all, so the next response's position must be either the
  acknowledged count or that plus the cancelled tokens; which one decides the history;
* ``midgen``: cancel a generation half-way. The server may have consumed more generated tokens than the client
  saw, so the session is reset (``start``) on its next use.

With ``--kill-every`` the server is SIGKILLed and restarted (:class:`~soak_types.Outage`): a request cut by the kill
counts as interrupted, not as an error, and is treated like one cancelled in flight; every session's next position
must then equal its acknowledged count (``--durability sync``), or, with a lossy store (``periodic``), the length of
some prefix of the session's acknowledged history, from which the history goes on (a session may also be gone).

Online, each response is checked for what needs no model: no error, the echoed ``request_id``, the session id,
``ended``, and its position against the acknowledged count (a ``GetSession`` after a reconnect too). Everything
else becomes a check in the session's :class:`~soak_check.Segment`, verified offline (``bench/soak_check.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from soak_check import GEN, POS, SCORE, TOP, Segment
from soak_types import Failed, Outage, Plan, Stats, Track, describe, error_code

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc

DISCONNECTS = ("cancel", "channel", "inflight", "midgen")


class Driver:
    """One stream of the soak; ``emit`` receives every finished segment."""

    def __init__(
        self,
        index: int,
        target: str,
        plan: Plan,
        rng: np.random.Generator,
        stats: Stats,
        emit: Callable[[Segment], None],
        outage: Outage | None = None,
    ) -> None:
        self.i, self.target, self.plan, self.rng, self.stats, self.emit = index, target, plan, rng, stats, emit
        self.outage = outage or Outage()
        self.seen_gen = self.outage.gen
        #: the request being answered: (track, kind, tokens, client-chosen id); what a failure leaves unknown
        self.current: tuple[Track, str, list[int], str] | None = None
        self.tracks = [Track() for _ in range(plan.sessions_per_stream)]
        self.channel: Any = None
        self.stub: Any = None
        self.call: Any = None
        self.request_id = 0
        self.made = 0

    # -- connection --------------------------------------------------------------------------------------------

    def _open_channel(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.target)
        self.stub = pb_grpc.SeqPredStub(self.channel)
        self.call = self.stub.Stream()

    async def _drop(self, whole_channel: bool) -> None:
        if whole_channel:
            await self.channel.close()
            self._open_channel()
        else:
            self.call.cancel()
            self.call = self.stub.Stream()

    async def run(self, stop: asyncio.Event) -> None:
        self._open_channel()
        try:
            while not stop.is_set():
                await self._guarded(self._one)
            for t in self.tracks:  # end every session, so that the server is left as it was found
                if t.sid:
                    await self._guarded(functools.partial(self._close_lost if t.lost else self._finish, t))
        finally:
            for t in self.tracks:
                self._emit(t)
            await self.channel.close()

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

    # -- one step ----------------------------------------------------------------------------------------------

    async def _one(self) -> None:
        p, rng = self.plan, self.rng
        t = self.tracks[int(rng.integers(len(self.tracks)))]
        if p.disconnect_every and rng.random() < 1.0 / p.disconnect_every:
            await self._disconnect(t, DISCONNECTS[int(rng.integers(len(DISCONNECTS)))])
        elif not t.sid:
            await self._create(t)
        elif t.lost:
            await self._reset(t)
        elif t.pos >= t.target:
            await self._finish(t)
        else:
            u = rng.random()
            if u < 0.55:
                await self._feed(t, 1)
            elif u < 0.70:
                await self._feed(t, int(rng.integers(2, p.max_prompt + 1)))
            elif u < 0.78:
                await self._feed(t, 0)
            elif u < 0.99:
                await self._generate(t, int(rng.integers(1, 7)), greedy=u < 0.885)
            else:
                await self._reset(t)

    def _tokens(self, n: int) -> list[int]:
        return [int(x) for x in self.rng.integers(0, self.plan.vocab, n)]

    def _request(self, sid: str, toks: list[int], **kw: Any) -> pb.StreamRequest:
        self.request_id += 1
        return pb.StreamRequest(session_id=sid, tokens=toks, request_id=self.request_id, **kw)

    async def _exchange(self, req: pb.StreamRequest) -> pb.StreamResponse:
        self.stats.requests += 1
        await self.call.write(req)
        return await self._read(req)

    async def _read(self, req: pb.StreamRequest) -> pb.StreamResponse:
        resp = await self.call.read()
        if resp is grpc.aio.EOF:
            raise Failed("the server closed the stream")
        self.stats.responses += 1
        if resp.HasField("error"):
            raise Failed(f"{resp.error.code_name}: {resp.error.message}", resp.error.code_name)
        if resp.request_id != req.request_id:
            raise Failed(f"request_id {resp.request_id} answers request {req.request_id}")
        return resp

    def _resolve(self, t: Track, consumed: int, got: int, what: str) -> bool:
        """Match the position ``got`` after ``consumed`` more tokens against what was acknowledged (and a
        request cancelled in flight, which the server applied entirely or not at all). False: unreconcilable."""
        assert t.seg is not None
        if t.maybe is not None:
            if got == t.pos + len(t.maybe) + consumed:
                t.seg.tokens += t.maybe
                t.pos += len(t.maybe)
                self.stats.tokens += len(t.maybe)
                self.stats.inflight_applied += 1
            t.maybe = None
        if got != t.pos + consumed and t.suspect and self.outage.lossy:
            t.suspect = False
            return self._fell_back(t, consumed, got, what)
        t.suspect = False
        if got != t.pos + consumed:
            t.seg.checks.append((POS, what, t.pos + consumed, got))
            self._lose(t)
            return False
        return True

    def _record(self, t: Track, toks: list[int], resp: pb.StreamResponse, req: pb.StreamRequest) -> None:
        assert t.seg is not None
        p0 = t.pos
        t.seg.tokens += toks
        t.pos += len(toks)
        self.stats.tokens += len(toks)
        if req.score:
            t.seg.checks.append((SCORE, p0, len(toks), list(resp.token_logprobs)))
        if req.top_k:
            preds = resp.predictions
            t.seg.checks.append((TOP, t.pos, [x.id for x in preds], [x.logprob for x in preds], req.top_k))

    def _fell_back(self, t: Track, consumed: int, got: int, what: str) -> bool:
        """A lossy store lost acknowledged tokens in a kill: its state is now that after ``got - consumed`` tokens
        of one of the session's segments. Go on from that prefix if only one fits; reset the session when the
        prefix is ambiguous; a mismatch when none fits."""
        assert t.seg is not None
        q = got - consumed
        if q < 0:
            prefix: list[int] | None = None
        else:
            fits = {tuple(s.tokens[:q]) for s in t.past if len(s.tokens) >= q}
            if len(fits) > 1 or any(len(s.tokens) < q for s in t.past if id(s) in t.open_tails):
                self.stats.ambiguous += 1
                self._lose(t)
                return False
            prefix = list(fits.pop()) if fits else None
        if prefix is None:
            t.seg.checks.append((POS, f"{what} after a restart", f"a prefix of {t.pos + consumed}", got))
            self._lose(t)
            return False
        self.stats.lost_tokens += max(t.pos - q, 0)
        name = t.seg.name
        self._emit(t)
        t.seg, t.pos = Segment(name + "~", prefix, carried=q), q
        t.past.append(t.seg)
        return True

    def _new_segment(self, t: Track, sid: str) -> None:
        self.made += 1
        if sid != t.sid:
            t.past, t.open_tails = [], set()
        t.sid, t.pos, t.maybe, t.lost = sid, 0, None, False
        t.seg = Segment(f"{sid}#{self.made}")
        t.past.append(t.seg)

    def _emit(self, t: Track) -> None:
        if t.seg is not None and (t.seg.tokens or t.seg.checks):
            self.emit(t.seg)
        t.seg = None

    def _lose(self, t: Track) -> None:
        """Its server-side state is no longer known (the segment's tail is open): reset it on next use."""
        if t.seg is not None:
            t.open_tails.add(id(t.seg))
        self._emit(t)
        t.lost = True

    def _top_k(self) -> int:
        return int(self.rng.integers(1, self.plan.max_top_k + 1))

    # -- the requests ------------------------------------------------------------------------------------------

    async def _create(self, t: Track) -> None:
        rng = self.rng
        toks = self._tokens(int(rng.integers(1, self.plan.max_prompt + 1)))
        chosen = f"soak-{self.i}-{self.made}-{rng.integers(1 << 30):x}" if rng.random() < 0.5 else ""
        req = self._request(chosen, toks, start=bool(chosen), top_k=self._top_k(), score=bool(rng.random() < 0.5))
        self.current = (t, "create", toks, chosen)
        resp = await self._exchange(req)
        if not resp.session_id or (chosen and resp.session_id != chosen):
            raise Failed(f"session id {resp.session_id!r} for a session created as {chosen!r}")
        self._new_segment(t, resp.session_id)
        t.target = int(rng.integers(self.plan.min_len, self.plan.max_len + 1))
        self.stats.sessions += 1
        if self._resolve(t, len(toks), resp.position, "creation"):
            self._record(t, toks, resp, req)

    async def _reset(self, t: Track) -> None:
        self._emit(t)
        toks = self._tokens(int(self.rng.integers(1, 9)))
        req = self._request(t.sid, toks, start=True, top_k=self._top_k(), score=bool(self.rng.random() < 0.5))
        self.current = (t, "reset", toks, "")
        resp = await self._exchange(req)
        self._new_segment(t, t.sid)
        self.stats.resets += 1
        if self._resolve(t, len(toks), resp.position, "reset"):
            self._record(t, toks, resp, req)

    async def _feed(self, t: Track, n: int) -> None:
        toks = self._tokens(n)
        k = self._top_k() if n == 0 or self.rng.random() < 0.9 else 0
        score = bool(n and self.rng.random() < 0.4)
        if not (k or score):
            k = 1
        req = self._request(t.sid, toks, top_k=k, score=score)
        self.current = (t, "feed", toks, "")
        resp = await self._exchange(req)
        if self._resolve(t, n, resp.position, "feed"):
            self._record(t, toks, resp, req)

    async def _generate(self, t: Track, n: int, greedy: bool, stop_after: int | None = None) -> None:
        """Generate ``n`` tokens after 0-4 fed ones; with ``stop_after``, cancel the stream after that many."""
        rng = self.rng
        toks = self._tokens(int(rng.integers(0, 5)))
        score = bool(toks and rng.random() < 0.3)
        req = self._request(t.sid, toks, top_k=self._top_k() if rng.random() < 0.5 else 0, score=score)
        g = req.generate
        g.max_tokens = n
        if greedy:
            g.temperature = 0.0
        else:
            g.temperature, g.top_p, g.seed = 0.8, 0.95, int(rng.integers(1 << 31))
        self.stats.requests += 1
        self.current = (t, "generate", toks, "")
        await self.call.write(req)
        for i in range(n if stop_after is None else stop_after):
            resp = await self._read(req)
            if len(resp.generated) != 1 or resp.final != (i == n - 1):
                raise Failed(f"generation response {i} of {n}: {len(resp.generated)} tokens, final={resp.final}")
            fed = toks if i == 0 else []
            if not self._resolve(t, len(fed) + 1, resp.position, f"generated token {i}"):
                await self._drop(whole_channel=False)  # the rest of its responses are of no use
                return
            assert t.seg is not None
            tok = resp.generated[0]
            self._record(t, fed, resp, pb.StreamRequest(score=score and i == 0))
            t.seg.checks.append((GEN, t.pos, tok.id, tok.logprob, greedy))
            t.seg.tokens.append(tok.id)
            t.pos += 1
            self.stats.tokens += 1
            if i == n - 1 and req.top_k:  # the predictions after the last generated token
                preds = resp.predictions
                t.seg.checks.append((TOP, t.pos, [x.id for x in preds], [x.logprob for x in preds], req.top_k))

    async def _finish(self, t: Track) -> None:
        self.current = (t, "end", [], "")
        if self.rng.random() < 0.3:
            pos = (await self.stub.CloseSession(pb.CloseSessionRequest(session_id=t.sid), timeout=30)).position
            ok = self._resolve(t, 0, pos, "CloseSession")
        else:
            toks = self._tokens(int(self.rng.integers(0, 4)))
            req = self._request(t.sid, toks, end=True, top_k=self._top_k() if toks else 0)
            resp = await self._exchange(req)
            if not resp.ended:
                raise Failed(f"session {t.sid!r}: end=true answered without ended")
            ok = self._resolve(t, len(toks), resp.position, "end")
            if ok:
                self._record(t, toks, resp, req)
        self._emit(t)
        t.sid, t.lost, t.maybe = "", False, None
        self.stats.ended += int(ok)

    async def _close_lost(self, t: Track) -> None:
        """Close a session whose state is unknown (it may be gone already)."""
        try:
            await self.stub.CloseSession(pb.CloseSessionRequest(session_id=t.sid), timeout=30)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
        t.sid = ""

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
