"""The soak client's requests, on one bidirectional stream: creating, resetting, feeding, generating, ending.

:class:`Requests` sends each kind of request a driver mixes (``bench/harness/soak/client.py``) and checks its answer
online for what needs no model: no error, the echoed ``request_id``, the session id, ``ended``, and its position
(:meth:`~harness.soak.history.History._resolve`); the rest is recorded for the offline check. A new session gets a
server-created id or a client-chosen one with ``start``; a session ends with ``end`` on its last request or with
``CloseSession``. ``current`` names the request being answered, for when it fails
(``bench/harness/soak/disconnects.py``).
"""

from __future__ import annotations

from typing import Any

import grpc

from harness.soak.check import GEN, TOP
from harness.soak.history import History
from harness.soak.types import Failed, Track
from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc


class Requests(History):
    """The connection and the requests of one stream of the soak."""

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

    # -- messages ----------------------------------------------------------------------------------------------

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
