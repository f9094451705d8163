"""Cross-session micro-batching on the event loop.

Jobs (a step of one session, a prompt of one session, a look at one session's next-token distribution, or a
stateless scoring request) are queued per *lane*: single-token steps in one lane, everything that goes through
``sequence.onnx`` or the head graph in the other, so that a long prompt never holds up the steps of other
sessions. Each lane runs one batch at a time; the two lanes can run at once (onnxruntime's ``run`` is
thread-safe).

Ordering: a session has at most one job queued or running; its later jobs wait in a per-session FIFO and enter
a lane only when the previous one has finished. So a batch never holds two steps of one session, and each
session's jobs run in the order they were submitted (across lanes and across streams).

Batch formation: when a job becomes ready and its lane is idle, the batch is formed on the next turn of the event
loop, so every request already received joins it; when the lane is busy, jobs accumulate and form the next batch
as soon as it is free. A batch holds at most ``max_batch`` jobs. With ``max_wait`` > 0 a batch also waits until as
many jobs are ready as the previous batch held (in a closed loop the same sessions come back together), but never
longer than ``max_wait`` after its oldest job arrived. When at most one RPC is open (``open_rpcs``, kept by the
servicer) nothing could join a batch, and the job runs at once.

Where a batch runs: on the event loop when it is predicted to take at most
:data:`~service.engine.batch_exec.INLINE_SECONDS` of CPU (50 ms: a hand-off to a thread and back costs about
0.05 ms, more than a one-token step of a small model, and batches of concurrent prompts ran ~15 % slower in a
thread on two cores; 50 ms hold up nobody noticeably), otherwise in the executor, so the loop keeps answering
other RPCs (health included) while onnxruntime computes (it releases the GIL). The prediction is the batch's
padded tokens times the CPU seconds per token measured on recent batches of the same kind; a kind not measured
yet runs in the executor. Without an executor everything runs on the loop (tests).

Scoring requests (SCORE) run in chunks (:func:`~service.engine.jobs.score_chunks`: at most ``max_batch``
sequences and :data:`~service.engine.jobs.MAX_BATCH_TOKENS` padded tokens each), one chunk per batch of the
sequence lane; after each chunk the request goes to the back of the lane's queue, so prompts and other scoring
requests that arrived meanwhile run before its next chunk (round robin), and none waits for more than one chunk
of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from service.engine.batch_exec import BatchExecution, refuse_head_jobs
from service.engine.jobs import HEAD, MAX_BATCH_TOKENS, SCORE, SEQ, STEP, Job, padded_tokens, score_chunks
from service.errors import Internal, ServiceError
from service.runtime.onnx_runtime import Runtime
from service.store.sessions import SessionStore


class _Lane:
    __slots__ = ("busy", "name", "ready", "soon", "target", "timer")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready: deque[Job] = deque()
        self.busy = False
        self.soon = False  # a flush is scheduled for the next turn of the loop
        self.timer: asyncio.TimerHandle | None = None  # a flush is scheduled for the end of the wait
        self.target = 1  # the size of the last batch: the cohort the next one waits for


Observer = Callable[[str, int, int, float, list[float]], None]


class Batcher(BatchExecution):
    """Gathers jobs of different sessions into batched runtime calls; see the module docstring. Batches run in
    :class:`~service.engine.batch_exec.BatchExecution`; jobs are :class:`~service.engine.jobs.Job`.

    ``executor``: where batches that are not cheap run (see the module docstring); None runs every batch on the
    event loop. ``observe(lane, jobs, tokens, seconds, latencies)`` is called after every batch (metrics;
    latencies from submission to result, per job).
    """

    def __init__(
        self,
        runtime: Runtime,
        store: SessionStore,
        max_batch: int = 256,
        max_wait: float = 0.0,
        executor: Executor | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.executor = executor
        self.observe = observe
        self._waiting: dict[int, deque[Job] | None] = {}  # slot -> jobs queued behind its running one
        self._step = _Lane("step")
        self._seq = _Lane("sequence")
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        #: RPCs being served (kept by the servicer); with at most one, a job cannot be batched with anything
        #: else and runs at once. Left at its default, batches are always formed on the next turn of the loop.
        self.open_rpcs = 1 << 30
        self.batch_hook: Callable[[str, list[Job]], None] | None = None  # tests: sees every batch formed
        #: ``journal(slot, tokens, position, held)`` for every job that consumed tokens, as soon as it is booked
        #: and before any later job of its session runs or its future resolves (persistence hooks).
        self.journal: Callable[[int, Any, int, bool], None] | None = None
        self._paused = 0  # quiesce() in progress: no new batch starts
        #: seconds per padded token of recent batches, by job kind (None: none measured yet)
        self.rates: list[float | None] = [None, None, None, None]

    @staticmethod
    def threaded(runtime: Runtime, store: SessionStore, **kw: Any) -> Batcher:
        return Batcher(runtime, store, executor=ThreadPoolExecutor(2, thread_name_prefix="seqpred-batch"), **kw)

    @contextlib.asynccontextmanager
    async def quiesce(self) -> AsyncIterator[None]:
        """Inside, no batch runs (the running ones are waited for) and none starts: session states hold still."""
        self._paused += 1
        try:
            while self._step.busy or self._seq.busy:
                await asyncio.sleep(0.0005)
            yield
        finally:
            self._paused -= 1
            if not self._paused:
                for lane in (self._step, self._seq):
                    if lane.ready and not lane.soon and not lane.busy:
                        self._schedule(lane)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    @property
    def pending(self) -> int:
        return len(self._step.ready) + len(self._seq.ready) + sum(len(q) for q in self._waiting.values() if q)

    # -- submission -------------------------------------------------------------------------------------------

    def submit(self, job: Job) -> asyncio.Future[Job]:
        """Queue ``job``; the future resolves to the job with its outputs, or raises its ServiceError."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Job] = loop.create_future()
        job.future = fut
        job.t_submit = time.perf_counter()
        if job.kind == SCORE:
            job.chunks = score_chunks([len(a) for a in job.tokens], self.max_batch)
            self._ready(job)
            return fut
        slot = job.slot
        self.store.acquire(slot)
        if slot in self._waiting:
            q = self._waiting[slot]
            if q is None:
                q = self._waiting[slot] = deque()
            q.append(job)
        else:
            self._waiting[slot] = None
            self._ready(job)
        return fut

    def _ready(self, job: Job) -> None:
        lane = self._step if job.kind == STEP else self._seq
        lane.ready.append(job)
        if not lane.busy and not lane.soon:
            if self.open_rpcs <= 1 and lane.timer is None and self.inline(job.kind, padded_tokens([job])):
                # nobody else can send a job to batch with: run it now, saving two turns of the event loop
                self._flush(lane)
            else:
                self._schedule(lane)

    def _schedule(self, lane: _Lane) -> None:
        """Flush on the next turn of the loop, or, with a wait, once as many jobs are ready as the last batch
        held (the sessions of a closed loop come back together) or the oldest has waited ``max_wait``."""
        loop = self._loop
        assert loop is not None
        if self.max_wait <= 0 or len(lane.ready) >= min(lane.target, self.max_batch):
            if lane.timer is not None:
                lane.timer.cancel()
                lane.timer = None
            lane.soon = True
            loop.call_soon(self._flush, lane)
        elif lane.timer is None:
            delay = self.max_wait - (time.perf_counter() - lane.ready[0].t_submit)
            if delay <= 0:
                lane.soon = True
                loop.call_soon(self._flush, lane)
            else:
                lane.timer = loop.call_later(delay, self._flush, lane)

    # -- batch formation and completion -----------------------------------------------------------------------

    def _take(self, lane: _Lane) -> list[Job]:
        ready = lane.ready
        if lane is self._step:
            n = min(len(ready), self.max_batch)
            return [ready.popleft() for _ in range(n)]
        first = ready.popleft()
        if first.kind != SEQ:
            return [first]
        jobs = [first]
        longest = len(first.tokens)
        skipped: list[Job] = []
        while ready and len(jobs) < self.max_batch:
            j = ready[0]
            if j.kind != SEQ:
                skipped.append(ready.popleft())
                continue
            t = max(longest, len(j.tokens))
            if t * (len(jobs) + 1) > MAX_BATCH_TOKENS:
                break
            jobs.append(ready.popleft())
            longest = t
        ready.extendleft(reversed(skipped))
        return jobs

    def _flush(self, lane: _Lane) -> None:
        lane.soon = False
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        if lane.busy or not lane.ready or self._paused:
            return
        jobs = self._take(lane)
        lane.target = len(jobs)
        lane.busy = True
        self.batches += 1
        if self.batch_hook is not None:
            self.batch_hook(lane.name, jobs)
        # decisions that depend on a session's position are taken now, when every earlier job of it is done
        first_pos = [self.store.position(j.slot) if j.kind != SCORE else 0 for j in jobs]
        jobs_run = jobs
        if not self.runtime.has_head:
            jobs_run, first_pos = refuse_head_jobs(jobs, first_pos)
            if not jobs_run:
                self._complete(lane, jobs, None, 0.0)
                return
        self._flush_run(lane, jobs, jobs_run, first_pos)

    def _flush_run(self, lane: _Lane, jobs: list[Job], jobs_run: list[Job], first_pos: list[int]) -> None:
        self._dispatch(jobs_run, first_pos, lambda err, seconds: self._complete(lane, jobs, err, seconds))

    def _complete(self, lane: _Lane, jobs: list[Job], err: BaseException | None, seconds: float) -> None:
        lane.busy = False
        tokens = 0
        for j in jobs:
            try:
                tokens += self._settle(j, err)
            except Exception as e:  # a bug in the bookkeeping must not leave a request waiting forever
                fut = j.future
                if fut is not None and not fut.done():
                    fut.set_exception(Internal(f"batcher: {type(e).__name__}: {e}"))
        if self.observe is not None:
            now = time.perf_counter()
            self.observe(lane.name, len(jobs), tokens, seconds, [now - j.t_submit for j in jobs])
        if lane.ready and not lane.soon:
            self._schedule(lane)

    def _settle(self, j: Job, err: BaseException | None) -> int:
        """Book one finished job (position, slot release, the session's next job) and resolve its future;
        returns the tokens it consumed."""
        n = 0
        if j.kind != SCORE:
            slot = j.slot
            if j.kind != HEAD and err is None and j.error is None:
                n = 1 if j.kind == STEP else len(j.tokens)
            j.position = self.store.finish(slot, n)
            if n and self.journal is not None:
                self.journal(slot, j.tokens, j.position, j.held)
            q = self._waiting.get(slot)
            if q:
                self._ready(q.popleft())
            else:
                del self._waiting[slot]
        elif err is None:
            n = sum(len(j.tokens[i]) for i in j.chunks[j.chunk])
            j.chunk += 1
        fut = j.future
        assert fut is not None
        if fut.cancelled():
            return n
        if j.kind == SCORE and err is None and j.chunk < len(j.chunks):
            self._seq.ready.append(j)  # its next chunk, behind everything that arrived meanwhile
            return n
        if err is not None:
            fut.set_exception(
                err if isinstance(err, ServiceError) else Internal(f"runtime: {type(err).__name__}: {err}")
            )
        elif j.error is not None:
            fut.set_exception(j.error)
        else:
            fut.set_result(j)
        return n
