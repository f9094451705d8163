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
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.evaluate import sample_next
from model.tokenizers import WordTokenizer
from service.batcher import HEAD, SCORE, SEQ, STEP, Batcher, Job
from service.errors import (
    BadSampling,
    CapacityExhausted,
    EmptyRequest,
    InvalidArgument,
    NothingToPredictFrom,
    QuotaExhausted,
    ServiceError,
    SessionNotFound,
    ShuttingDown,
    TokenOutOfRange,
    TooManyTokens,
    UnknownSymbol,
    status_name,
)
from service.metrics import Metrics
from service.persistence import NO_SCOPE, Persistence
from service.runtime import Runtime
from service.sessions import SessionInfo, SessionStore, check_session_id
from service.settings import Settings

log = logging.getLogger("seqpred.engine")


@dataclass(frozen=True)
class GenerateSpec:
    """Sampling parameters; ``temperature`` 0 is greedy, ``top_k`` 0 = all, ``seed`` None = random."""

    max_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(slots=True)
class Request:
    """One request to a session (see ``StreamRequest`` in the proto)."""

    session_id: str = ""
    tokens: Sequence[int] = ()
    text: str = ""
    start: bool = False
    end: bool = False
    top_k: int = 0
    score: bool = False
    generate: GenerateSpec | None = None
    request_id: int = 0
    principal: str = ""  # who asks (authenticated by the transport; "" = anonymous): sessions are scoped by it


@dataclass(slots=True)
class Reply:
    """One reply (see ``StreamResponse``); arrays are NumPy, ids index the vocabulary."""

    session_id: str
    position: int
    request_id: int = 0
    final: bool = True
    top_ids: list[int] | None = None
    top_logprobs: list[float] | None = None
    token_logprobs: np.ndarray | None = None
    generated: list[tuple[int, float]] = field(default_factory=list)
    ended: bool = False


@dataclass(frozen=True)
class ScoreResult:
    num_tokens: int
    token_logprobs: np.ndarray
    total_logprob: float
    top_ids: list[int] | None
    top_logprobs: list[float] | None


@dataclass(frozen=True)
class SessionView:
    """A session as reported to clients: wall-clock times (``time.time()``), seconds left before eviction."""

    session_id: str
    position: int
    created: float
    last_active: float
    time_left: float | None


class Engine:
    """Sessions, validation, batching and sampling, without any transport."""

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

    # -- persistence ------------------------------------------------------------------------------------------

    def _journal(self, slot: int, tokens: Any, position: int) -> None:
        """The batcher booked tokens for ``slot``: report them if its session is still live (not reset or
        removed while the step ran: those tokens went to a state nobody will see again)."""
        who = self.store.session_at(slot)
        if who is not None and self.persistence is not None:
            mem = self.store.memory
            self.persistence.on_advance(who[0], who[1], tokens, position, lambda: mem.read(slot))

    def _start_failed(self, r: Request, sid: str, inputs: np.ndarray | int | None) -> None:
        """The tokens of a request that created or reset its session were not consumed (the batch failed): report
        the start alone, so that it counts without them (see ``Persistence.on_start``)."""
        if self.persistence is not None and inputs is not None and (r.start or not r.session_id):
            self.persistence.on_start(r.principal, sid, True, 0)

    async def durable(self) -> None:
        """Return once every change made so far is durable (at once without persistence or in periodic mode)."""
        if self.persistence is not None:
            w = self.persistence.durable()
            if w is not None:
                await w

    def _scope(self, r: Request) -> contextlib.AbstractAsyncContextManager[None]:
        """The persistence's scope around a request naming a session (a shared store serializes the session's
        requests on this replica and loads or refreshes it on entry); a no-op otherwise."""
        if self.persistence is None or not r.session_id:
            return NO_SCOPE
        return self.persistence.scope(self.store, r.principal, r.session_id, r.start)

    async def _durable_for(self, principal: str, sid: str) -> None:
        """Before a reply: this session's changes are durable; a shared store may fail the request instead."""
        assert self.persistence is not None
        try:
            w = self.persistence.session_durable(principal, sid)
            if w is not None:
                await w
        except ServiceError as e:
            e.session_id = sid
            raise

    # -- validation -------------------------------------------------------------------------------------------

    def _check_ids(self, tokens: Sequence[int], name: str) -> np.ndarray:
        n = len(tokens)
        if n > self.settings.max_request_tokens:
            raise TooManyTokens(
                f"{name}: {n} tokens, more than the limit of {self.settings.max_request_tokens} per request"
            )
        arr = np.fromiter(tokens, dtype=np.int64, count=n)
        bad = np.flatnonzero((arr < 0) | (arr >= self.V))
        if bad.size:
            i = int(bad[0])
            raise TokenOutOfRange(f"{name}[{i}]: token id {int(arr[i])} is out of range [0, {self.V})")
        return arr

    def encode_text(self, text: str, name: str = "text") -> np.ndarray:
        """Tokenize ``text``; a symbol outside the vocabulary raises UnknownSymbol naming it and its offset."""
        tok = self.tokenizer
        limit = self.settings.max_request_tokens
        if len(text) > limit:
            # refuse a huge text before tokenizing all of it (seconds of event-loop time for 16 MiB): char and
            # byte tokenizers give at least one token per character; word tokens are counted up to the limit
            if isinstance(tok, WordTokenizer):
                if tok.count_at_most(text, limit) > limit:
                    raise TooManyTokens(f"{name}: more than {limit} tokens, the limit per request")
            else:
                raise TooManyTokens(
                    f"{name}: {len(text)} characters, at least {len(text)} tokens, more than the limit of {limit} "
                    "per request"
                )
        ids = tok.encode(text)
        if len(ids) > limit:
            raise TooManyTokens(f"{name}: {len(ids)} tokens, more than the limit of {limit} per request")
        if tok.unk_id is not None and len(ids):
            bad = np.flatnonzero(ids == tok.unk_id)
            if bad.size:
                i = int(bad[0])
                if isinstance(tok, WordTokenizer):
                    pieces = tok.split(text)
                    sym, offset, what = pieces[i], sum(len(p) for p in pieces[:i]), "word"
                else:
                    sym, offset, what = text[i], i, "character"
                shown = repr(sym) if len(sym) <= 32 else f"{sym[:32]!r}... ({len(sym)} characters)"
                raise UnknownSymbol(f"{name}: {what} {shown} at offset {offset} is not in the model's vocabulary")
        return ids

    def _inputs(self, tokens: Sequence[int], text: str, name: str = "") -> np.ndarray | int | None:
        """The request's tokens: None, one int (the common single-step case) or an int64 array."""
        if len(tokens) and text:
            raise InvalidArgument(f"{name or 'request'}: set tokens or text, not both")
        if text:
            ids = self.encode_text(text, f"{name}.text" if name else "text")
            return int(ids[0]) if len(ids) == 1 else ids
        if len(tokens) == 1:
            t = tokens[0]
            if not 0 <= t < self.V:
                raise TokenOutOfRange(
                    f"{name + '.' if name else ''}tokens[0]: token id {t} is out of range [0, {self.V})"
                )
            return int(t)
        if len(tokens) == 0:
            return None
        return self._check_ids(tokens, f"{name}.tokens" if name else "tokens")

    def _check_top_k(self, k: int, name: str = "top_k") -> None:
        if k > self.max_top_k:
            raise BadSampling(f"{name}: must be <= {self.max_top_k}, got {k}")

    def _check_generate(self, g: GenerateSpec) -> None:
        limit = self.settings.max_generate_tokens
        if not 1 <= g.max_tokens <= limit:
            raise TooManyTokens(f"generate.max_tokens: must be in [1, {limit}], got {g.max_tokens}")
        if not math.isfinite(g.temperature) or g.temperature < 0:
            raise BadSampling(f"generate.temperature: must be finite and >= 0, got {g.temperature}")
        if not (0 < g.top_p <= 1):  # also rejects NaN
            raise BadSampling(f"generate.top_p: must be in (0, 1], got {g.top_p}")
        if g.top_k > self.V:
            raise BadSampling(f"generate.top_k: must be <= the vocabulary size {self.V}, got {g.top_k}")

    # -- sessions ---------------------------------------------------------------------------------------------

    def _session(self, r: Request, now: float, history_needed: bool, then: int = 0) -> tuple[str, int]:
        sid = r.session_id
        fresh = not sid or r.start
        if fresh and history_needed:
            what = "generate" if r.generate is not None else "top_k"
            raise NothingToPredictFrom(
                f"{what}: a new or reset session has consumed no tokens, so there is no next-token distribution; "
                "send tokens or text with it"
            )
        if not sid:
            return self._create(None, now, r.principal, then)
        if r.start:
            return self._create(sid, now, r.principal, then)
        return sid, self.store.lookup(sid, now, r.principal)

    def _create(self, sid: str | None, now: float, principal: str, then: int = 0) -> tuple[str, int]:
        """Create (or reset) a session for a request that feeds it ``then`` tokens next."""
        live = sid is not None and self._is_live(sid, principal)
        quota = self.settings.max_sessions_per_principal
        try:
            if quota and not live and self.store.count(principal) >= quota:
                who = f"principal {principal!r}" if principal else "the anonymous principal"
                raise QuotaExhausted(
                    f"sessions: {who} holds {self.store.count(principal)} sessions, its quota of {quota} "
                    "(--max-sessions-per-principal); end or close sessions, or retry later"
                )
            out = self.store.create(sid, now, principal)
            if self.persistence is not None:
                self.persistence.on_start(principal, out[0], live, then)
        except CapacityExhausted as e:
            if self.metrics is not None:
                self.metrics.rejected.labels("quota" if isinstance(e, QuotaExhausted) else "capacity").inc()
            raise
        if self.metrics is not None and not live:
            self.metrics.created.inc()
        return out

    def _is_live(self, sid: str, principal: str) -> bool:
        try:
            self.store.info(sid, 0.0, principal)
        except ServiceError:
            return False
        return True

    def _still_live(self, sid: str, slot: int, principal: str) -> None:
        if self.store.lookup(sid, time.monotonic(), principal) != slot:
            raise SessionNotFound(f"session_id: session {sid!r} was reset by another request during generation")

    def _end(self, sid: str, principal: str) -> bool:
        try:
            self.store.remove(sid, principal)
        except ServiceError:  # closed meanwhile by another stream
            return False
        if self.persistence is not None:
            self.persistence.on_close(principal, sid, "end")
        if self.metrics is not None:
            self.metrics.closed.inc()
        return True

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

    def _job(self, slot: int, inputs: np.ndarray | int | None, score: bool, top_k: int, want_next: bool) -> Job:
        if inputs is None:
            return Job(HEAD, slot, None, top_k=top_k, want_next=True)
        if isinstance(inputs, int):
            return Job(STEP, slot, inputs, score=score, top_k=top_k, want_next=want_next)
        return Job(SEQ, slot, inputs, score=score, top_k=top_k, want_next=want_next)

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

    async def generate(self, r: Request) -> AsyncIterator[Reply]:
        """A request with generation: one reply per generated token, the last with ``final``."""
        g = r.generate
        if g is None:
            raise InvalidArgument("request: Engine.generate needs generate parameters")
        if r.session_id:
            check_session_id(r.session_id)
        async with self._scope(r), contextlib.aclosing(self._generate(r, g)) as replies:
            async for reply in replies:
                yield reply

    async def _generate(self, r: Request, g: GenerateSpec) -> AsyncGenerator[Reply, None]:
        inputs, sid, slot = self._prepare(r)
        try:
            try:
                job = await self.batcher.submit(self._job(slot, inputs, r.score, 0, True))
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
                job = await self.batcher.submit(Job(STEP, slot, tok, top_k=r.top_k if last else 0, want_next=not last))
                lp = job.logprobs
                reply = Reply(sid, job.position, r.request_id, last, generated=[(tok, tok_lp)])
                if i == 0:
                    reply.token_logprobs = scores
                if last:
                    reply.top_ids, reply.top_logprobs = job.topk_ids, job.topk_lp
                    if r.end:
                        reply.ended = self._end(sid, r.principal)
                if self.persistence is not None:
                    await self._durable_for(r.principal, sid)
                yield reply
        except ServiceError as e:
            e.session_id = sid
            raise

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
