"""The transport-free core: requests in, replies out. The gRPC servicer is a thin wrapper around this.

Semantics (also written in ``proto/seqpred/v1/seqpred.proto`` and ``docs/service.md``):

* a request names a live session, or none (a new one is created with a random id), or a client-chosen id with
  ``start`` (created, or reset when live);
* it feeds tokens (or text, tokenized here), then optionally generates tokens, then returns what was asked:
  top-k next tokens, log-probabilities of the supplied tokens, generated tokens;
* ``end`` frees the session once the request is applied.

Everything is validated before anything changes, so a failed request leaves no trace (a session created by it
included), except failures that depend on the session's state when the request's turn comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import numpy as np

from model.train.evaluate import sample_next
from service.durability.hooks import NO_SCOPE, Persistence
from service.engine.batcher import Batcher
from service.engine.jobs import HEAD, SCORE, SEQ, STEP, Job
from service.engine.requests import GenerateSpec, Reply, Request, ScoreResult, SessionView
from service.engine.sessions import EngineSessions
from service.engine.validation import RequestChecks
from service.errors import (
    EmptyRequest,
    InvalidArgument,
    ServiceError,
    ShuttingDown,
    TooManyTokens,
    status_name,
)
from service.metrics import Metrics
from service.runtime.onnx_runtime import Runtime
from service.settings import Settings
from service.store.sessions import SessionInfo, SessionStore, check_session_id

log = logging.getLogger("seqpred.engine")


class Engine(RequestChecks, EngineSessions):
    """Sessions, validation, batching and sampling, without any transport.

    Validation lives in :class:`~service.engine.validation.RequestChecks`, session handling and the persistence hooks in
    :class:`~service.engine.sessions.EngineSessions`; the request flows are here."""

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        store: SessionStore,
        batcher: Batcher,
        metrics: Metrics | None = None,
        persistence: Persistence | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.store = store
        self.batcher = batcher
        self.metrics = metrics
        self.tokenizer = runtime.tokenizer
        self.V = runtime.config.vocab_size
        self.token_texts = [self.tokenizer.token_text(i) for i in range(self.V)]
        self.max_top_k = min(settings.max_top_k, self.V)
        self.draining = False
        self._sweeper: asyncio.Task[None] | None = None
        if metrics is not None:
            batcher.observe = metrics.observe_batch
        self.persistence = persistence
        if persistence is not None:
            batcher.journal = self._journal
            store.on_evict = lambda principal, sid, reason: persistence.on_close(principal, sid, reason)

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the eviction sweeper on the running loop."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        self.draining = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            self.sweep()

    def sweep(self, now: float | None = None) -> list[tuple[str, str]]:
        """Evict expired sessions now; returns ``[(id, reason)]``."""
        gone = self.store.expired(time.monotonic() if now is None else now)
        if self.metrics is not None:
            for _, reason in gone:
                self.metrics.evicted.labels(reason).inc()
            self.metrics.tick()
        if gone:
            log.info("evicted sessions", extra={"fields": {"count": len(gone), "active": len(self.store)}})
        return gone

    # -- requests ---------------------------------------------------------------------------------------------

    def _prepare(self, r: Request) -> tuple[np.ndarray | int | None, str, int]:
        """Validate ``r`` completely, then resolve its session: ``(inputs, session_id, slot)``."""
        if self.draining:
            raise ShuttingDown("server: shutting down; retry on another replica or after the restart")
        if r.session_id:
            check_session_id(r.session_id)
        inputs = self._inputs(r.tokens, r.text)
        if r.top_k:
            self._check_top_k(r.top_k)
        if r.generate is not None:
            self._check_generate(r.generate)
        if inputs is None and not (r.top_k or r.generate is not None or r.start or r.end):
            raise EmptyRequest("request: nothing to do; set tokens, text, top_k, generate, start or end")
        history_needed = inputs is None and (r.top_k > 0 or r.generate is not None)
        then = 0 if inputs is None else 1 if isinstance(inputs, int) else len(inputs)
        sid, slot = self._session(r, time.monotonic(), history_needed, then)
        return inputs, sid, slot

    def _job(
        self, slot: int, inputs: np.ndarray | int | None, score: bool, top_k: int, want_next: bool, held: bool = False
    ) -> Job:
        if inputs is None:
            return Job(HEAD, slot, None, top_k=top_k, want_next=True)
        kind = STEP if isinstance(inputs, int) else SEQ
        return Job(kind, slot, inputs, score=score, top_k=top_k, want_next=want_next, held=held)

    async def request(self, r: Request) -> Reply:
        """A request without generation: one reply. Raises ServiceError (with ``session_id`` set when known)."""
        if r.generate is not None:
            raise InvalidArgument("request: use Engine.generate for a request with generate")
        if r.session_id:
            check_session_id(r.session_id)
        async with self._scope(r):
            return await self._request(r)

    async def _request(self, r: Request) -> Reply:
        inputs, sid, slot = self._prepare(r)
        try:
            if inputs is None and not r.top_k:
                reply = Reply(sid, self.store.position(slot), r.request_id)
            else:
                job = await self.batcher.submit(self._job(slot, inputs, r.score, r.top_k, False))
                reply = Reply(sid, job.position, r.request_id, True, job.topk_ids, job.topk_lp, job.scores)
                if r.score and reply.token_logprobs is None:
                    reply.token_logprobs = np.zeros(0, dtype=np.float32)
        except ServiceError as e:
            e.session_id = sid
            self._start_failed(r, sid, inputs)
            raise
        if r.end:
            reply.ended = self._end(sid, r.principal)
        if self.persistence is not None:
            await self._durable_for(r.principal, sid)
        return reply

    async def generate(self, r: Request, unary: bool = False) -> AsyncIterator[Reply]:
        """A request with generation: one reply per generated token, the last with ``final``.

        ``unary``: the caller answers only once, after the last reply (``Predict``), so the request's changes of the
        session are one change for the persistence (:meth:`Persistence.atomic`: after a crash, all or none) and
        only the last reply waits until they are durable."""
        g = r.generate
        if g is None:
            raise InvalidArgument("request: Engine.generate needs generate parameters")
        if r.session_id:
            check_session_id(r.session_id)
        atomic = self.persistence.atomic() if unary and self.persistence is not None else NO_SCOPE
        async with self._scope(r), atomic, contextlib.aclosing(self._generate(r, g, unary)) as replies:
            async for reply in replies:
                yield reply

    async def _generate(self, r: Request, g: GenerateSpec, unary: bool) -> AsyncGenerator[Reply, None]:
        inputs, sid, slot = self._prepare(r)
        held = unary and self.persistence is not None
        try:
            try:
                job = await self.batcher.submit(self._job(slot, inputs, r.score, 0, True, held))
            except ServiceError:
                self._start_failed(r, sid, inputs)
                raise
            scores = job.scores if r.score else None
            if r.score and scores is None:
                scores = np.zeros(0, dtype=np.float32)
            lp = job.logprobs
            rng = np.random.default_rng(g.seed)
            for i in range(g.max_tokens):
                assert lp is not None
                tok = sample_next(lp, rng, g.temperature, g.top_k, g.top_p)
                tok_lp = float(lp[tok])
                last = i == g.max_tokens - 1
                if i:  # another stream may have ended, reset or let expire the session while we were sending
                    self._still_live(sid, slot, r.principal)
                step = Job(STEP, slot, tok, top_k=r.top_k if last else 0, want_next=not last, held=held)
                job = await self.batcher.submit(step)
                lp = job.logprobs
                reply = Reply(sid, job.position, r.request_id, last, generated=[(tok, tok_lp)])
                if i == 0:
                    reply.token_logprobs = scores
                if last:
                    reply.top_ids, reply.top_logprobs = job.topk_ids, job.topk_lp
                    if held:
                        self._commit(r.principal, sid)
                        held = False
                    if r.end:
                        reply.ended = self._end(sid, r.principal)
                if self.persistence is not None and (last or not unary):
                    await self._durable_for(r.principal, sid)
                yield reply
        except ServiceError as e:
            e.session_id = sid
            raise
        finally:
            if held:  # failed or cancelled half-way: what ran stays applied (in memory, and so in the log)
                self._commit(r.principal, sid)

    async def score(self, sequences: Sequence[tuple[Sequence[int], str]], top_k: int = 0) -> list[ScoreResult]:
        """Stateless scoring of ``[(tokens, text)]`` from the zero state, batched."""
        if self.draining:
            raise ShuttingDown("server: shutting down; retry on another replica or after the restart")
        limit = self.settings.max_score_sequences
        if not sequences:
            raise EmptyRequest("sequences: empty; send at least one sequence")
        if len(sequences) > limit:
            raise TooManyTokens(f"sequences: {len(sequences)} sequences, more than the limit of {limit}")
        if top_k:
            self._check_top_k(top_k)
        arrays: list[np.ndarray] = []
        for i, (tokens, text) in enumerate(sequences):
            name = f"sequences[{i}]"
            x = self._inputs(tokens, text, name)
            if x is None:
                raise EmptyRequest(f"{name}: empty; set tokens or text")
            arrays.append(np.array([x], dtype=np.int64) if isinstance(x, int) else x)
        job = await self.batcher.submit(Job(SCORE, -1, arrays, top_k=top_k))
        scores: list[np.ndarray] = job.scores  # type: ignore[assignment]
        out = []
        for i, s in enumerate(scores):
            ids = job.topk_ids[i][:top_k] if job.topk_ids is not None else None  # type: ignore[index]
            lps = job.topk_lp[i][:top_k] if job.topk_lp is not None else None  # type: ignore[index]
            out.append(ScoreResult(len(arrays[i]), s, float(np.sum(s, dtype=np.float64)), ids, lps))
        return out

    def close(self, session_id: str, principal: str = "") -> int:
        """Free a live session of ``principal`` now; returns its last position. Raises SessionNotFound."""
        check_session_id(session_id)
        pos = self.store.remove(session_id, principal)
        if self.persistence is not None:
            self.persistence.on_close(principal, session_id, "close")
        if self.metrics is not None:
            self.metrics.closed.inc()
        return pos

    async def aclose(self, session_id: str, principal: str = "") -> int:
        """:meth:`close` for the RPC: inside the session's persistence scope, returning once the close is durable."""
        check_session_id(session_id)
        async with self._scope(Request(session_id, principal=principal)):
            pos = self.close(session_id, principal)
            if self.persistence is not None:
                await self._durable_for(principal, session_id)
        return pos

    async def aget(self, session_id: str, principal: str = "") -> SessionView:
        """:meth:`get` for the RPC: inside the session's persistence scope (a shared store loads it first)."""
        check_session_id(session_id)
        async with self._scope(Request(session_id, principal=principal)):
            return self.get(session_id, principal)

    def get(self, session_id: str, principal: str = "") -> SessionView:
        """Describe a live session of ``principal`` (wall-clock times) without touching it. Raises
        SessionNotFound."""
        check_session_id(session_id)
        mono, wall = time.monotonic(), time.time()
        info: SessionInfo = self.store.info(session_id, mono, principal)
        return SessionView(
            info.session_id,
            info.position,
            wall - (mono - info.created),
            wall - (mono - info.last_active),
            info.time_left,
        )

    def model_info(self) -> dict[str, Any]:
        cfg, s = self.runtime.config, self.settings
        mem = self.store.memory
        return {
            "cell": cfg.cell,
            "layers": cfg.layers,
            "hidden": cfg.hidden,
            "embed": cfg.embed,
            "vocab_size": cfg.vocab_size,
            "tokenizer": self.tokenizer.kind,
            "model_sha256": self.runtime.bundle.manifest_sha256,
            "execution_provider": self.runtime.provider,
            "precision": self.runtime.bundle.precision,
            "state_names": list(self.runtime.state_names),
            "state_bytes": mem.bytes_per_slot,
            "max_sessions": self.store.capacity,
            "max_request_tokens": s.max_request_tokens,
            "max_generate_tokens": s.max_generate_tokens,
            "max_score_sequences": s.max_score_sequences,
            "max_top_k": self.max_top_k,
            "idle_timeout": s.idle_timeout or None,
            "max_lifetime": s.max_lifetime or None,
        }

    def count_error(self, e: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(status_name(e)).inc()
