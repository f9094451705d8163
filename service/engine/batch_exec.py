"""Running one formed batch on the runtime: where (on the event loop when it is cheap, else in the batcher's
executor), and what: steps, prompts, head looks and chunks of stateless scoring, with the top-k of the jobs that
ask for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from service.engine.jobs import EMPTY_SCORES, HEAD, SCORE, SEQ, STEP, Job, padded_tokens, top_k_row, top_k_rows
from service.errors import NoHeadGraph, NothingToPredictFrom
from service.runtime.onnx_runtime import Runtime
from service.store.sessions import SessionStore

#: A batch predicted to take at most this long runs on the event loop; longer ones run in the executor.
INLINE_SECONDS = 0.05
#: Weight of the newest batch in the seconds-per-token estimate of its kind.
RATE_WEIGHT = 0.25


def _needs_head(job: Job, first_pos: int) -> bool:
    return first_pos > 0 and (job.kind == HEAD or (job.score and job.kind != SCORE))


def refuse_head_jobs(jobs: list[Job], first_pos: list[int]) -> tuple[list[Job], list[int]]:
    """Without a head graph: fail the jobs that need one (before anything runs), keep the others."""
    keep_jobs, keep_pos = [], []
    for j, p in zip(jobs, first_pos, strict=True):
        if _needs_head(j, p):
            j.error = NoHeadGraph(
                "score: this model has no head graph, so neither the first token of a continuation can be scored "
                "nor a session's next-token distribution be looked at without new tokens"
            )
        else:
            keep_jobs.append(j)
            keep_pos.append(p)
    return keep_jobs, keep_pos


class BatchExecution:
    """The batcher's execution methods (mixed into :class:`~service.engine.batcher.Batcher`, which sets the fields)."""

    runtime: Runtime
    store: SessionStore
    max_batch: int
    executor: Executor | None
    rates: list[float | None]  # seconds per padded token of recent batches, by job kind (None: not measured)
    _loop: asyncio.AbstractEventLoop | None

    def inline(self, kind: int, tokens: int) -> bool:
        """Whether a batch of ``tokens`` padded tokens of ``kind`` runs on the event loop (see the batcher)."""
        if self.executor is None:
            return True
        rate = self.rates[kind]
        return rate is not None and rate * tokens <= INLINE_SECONDS

    def _measured(self, kind: int, tokens: int, cpu_seconds: float) -> None:
        rate, old = cpu_seconds / max(tokens, 1), self.rates[kind]
        self.rates[kind] = rate if old is None else old + RATE_WEIGHT * (rate - old)

    def _timed(self, jobs: list[Job], first_pos: list[int]) -> tuple[float, float]:
        """Run a batch; ``(CPU seconds of this thread, wall seconds)``. The estimate uses CPU time, the work itself:
        wall time also counts the time the thread waited for a core, and on a busy machine would send cheap
        batches to the executor, where they cost more."""
        c0, t0 = time.thread_time(), time.perf_counter()
        self._execute(jobs, first_pos)
        return time.thread_time() - c0, time.perf_counter() - t0

    def _dispatch(
        self, jobs_run: list[Job], first_pos: list[int], done: Callable[[BaseException | None, float], None]
    ) -> None:
        """Run a batch on the loop or in the executor (:meth:`inline`); then ``done(error, wall seconds)``, on the
        loop."""
        kind, tokens = jobs_run[0].kind, padded_tokens(jobs_run)
        if self.inline(kind, tokens):
            t0 = time.perf_counter()
            try:
                cpu, seconds = self._timed(jobs_run, first_pos)
                self._measured(kind, tokens, cpu)
                err: BaseException | None = None
            except Exception as e:
                err, seconds = e, time.perf_counter() - t0
            done(err, seconds)
            return
        assert self._loop is not None
        t0 = time.perf_counter()
        cf = self._loop.run_in_executor(self.executor, self._timed, jobs_run, first_pos)

        def finished(f: asyncio.Future[tuple[float, float]]) -> None:
            err = f.exception()
            if err is None:
                cpu, seconds = f.result()
                self._measured(kind, tokens, cpu)
            else:
                seconds = time.perf_counter() - t0
            done(err, seconds)

        cf.add_done_callback(finished)

    def _execute(self, jobs: list[Job], first_pos: list[int]) -> None:
        """Run one batch: all STEP jobs (step lane), all SEQ jobs, or one HEAD or SCORE job (sequence lane)."""
        kind = jobs[0].kind
        if kind == STEP:
            self._run_step(jobs, first_pos)
        elif kind == SEQ:
            self._run_seq(jobs, first_pos)
        elif kind == HEAD:
            self._run_head(jobs, first_pos)
        else:
            self._run_score(jobs[0])

    def _finish_topk(self, jobs: list[Job], lp: np.ndarray | None = None) -> None:
        """Set ``topk_ids``/``topk_lp`` (Python lists) of the jobs asking for them; ``lp`` is the batch's
        ``[B, V]`` when row i belongs to ``jobs[i]``."""
        if len(jobs) == 1:
            j = jobs[0]
            if j.top_k > 0 and j.logprobs is not None:
                j.topk_ids, j.topk_lp = top_k_row(j.logprobs, j.top_k)
            return
        rows = [j for j in jobs if j.top_k > 0 and j.logprobs is not None]
        if not rows:
            return
        if lp is None or len(rows) != len(jobs):
            lp = np.stack([j.logprobs for j in rows])  # type: ignore[misc]
        ids, vals = top_k_rows(lp, [j.top_k for j in rows])
        id_rows, val_rows = ids.tolist(), vals.tolist()
        for j, i_row, v_row in zip(rows, id_rows, val_rows, strict=True):
            k = j.top_k
            j.topk_ids, j.topk_lp = i_row[:k], v_row[:k]

    def _run_head(self, jobs: list[Job], first_pos: list[int]) -> None:
        live = [j for j, p in zip(jobs, first_pos, strict=True) if p > 0]
        for j, p in zip(jobs, first_pos, strict=True):
            if p == 0:
                j.error = NothingToPredictFrom(
                    "session has consumed no tokens yet, so there is no next-token distribution; "
                    "send tokens or text first"
                )
        if live:
            lp = self.runtime.head(self.store.memory, np.array([j.slot for j in live], dtype=np.int64))
            for i, j in enumerate(live):
                j.logprobs = lp[i]
            self._finish_topk(live)

    def _run_step(self, jobs: list[Job], first_pos: list[int]) -> None:
        n = len(jobs)
        if n == 1:
            slots = np.array([jobs[0].slot], dtype=np.int64)
            tokens = np.array([jobs[0].tokens], dtype=np.int64)
        else:
            slots = np.fromiter([j.slot for j in jobs], dtype=np.int64, count=n)
            tokens = np.fromiter([j.tokens for j in jobs], dtype=np.int64, count=n)
        head_rows: list[int] = []
        want = topk = False
        for i, j in enumerate(jobs):
            if j.score:
                if first_pos[i] > 0:
                    head_rows.append(i)
                else:
                    j.scores = EMPTY_SCORES
            want = want or j.want_next
            topk = topk or j.top_k > 0
        out = self.runtime.step(
            self.store.memory,
            slots,
            tokens,
            np.array(head_rows, dtype=np.int64) if head_rows else None,
            want_logprobs=want,
        )
        lp = out.logprobs
        if lp is not None:
            if lp.dtype != np.float32:
                lp = lp.astype(np.float32)
            for i, j in enumerate(jobs):
                if j.want_next:
                    j.logprobs = lp[i]
        if out.head is not None:
            for r, i in enumerate(head_rows):
                j = jobs[i]
                j.scores = out.head[r, j.tokens : j.tokens + 1].astype(np.float32)
        if topk:
            self._finish_topk(jobs, lp)

    def _run_seq(self, jobs: list[Job], first_pos: list[int]) -> None:
        B = len(jobs)
        lengths = np.fromiter((len(j.tokens) for j in jobs), dtype=np.int64, count=B)
        T = int(lengths.max())
        tokens = np.zeros((B, T), dtype=np.int64)
        for i, j in enumerate(jobs):
            tokens[i, : lengths[i]] = j.tokens
        slots = np.fromiter((j.slot for j in jobs), dtype=np.int64, count=B)
        head_rows = [i for i, (j, p) in enumerate(zip(jobs, first_pos, strict=True)) if j.score and p > 0]
        out = self.runtime.sequence(
            self.store.memory,
            slots,
            tokens,
            lengths,
            np.array(head_rows, dtype=np.int64) if head_rows else None,
            want_tokens=any(j.score for j in jobs),
            want_next=any(j.want_next for j in jobs),
        )
        hr = {i: r for r, i in enumerate(head_rows)}
        for i, j in enumerate(jobs):
            if j.want_next and out.next_logprobs is not None:
                j.logprobs = out.next_logprobs[i].astype(np.float32, copy=False)
            if j.score and out.token_logprobs is not None:
                inner = out.token_logprobs[i, : lengths[i] - 1].astype(np.float32)
                if i in hr:
                    assert out.head is not None
                    first = out.head[hr[i], j.tokens[0] : j.tokens[0] + 1].astype(np.float32)
                    j.scores = np.concatenate([first, inner])
                else:
                    j.scores = inner
        self._finish_topk(jobs)

    def _run_score(self, job: Job) -> None:
        """One chunk of a SCORE job (``tokens``: a list of 1-D arrays; ``chunks[chunk]``: the sequences to run now,
        see :func:`~service.engine.jobs.score_chunks`); fills their rows of ``scores``, ``logprobs`` (next-token
        distributions) and, when asked, ``topk_ids``/``topk_lp``. The batcher moves on to the next chunk."""
        seqs: list[np.ndarray] = job.tokens
        group = job.chunks[job.chunk]
        if job.chunk == 0:
            job.scores = [EMPTY_SCORES] * len(seqs)  # type: ignore[assignment]
            job.logprobs = [EMPTY_SCORES] * len(seqs)  # type: ignore[assignment]
            if job.top_k > 0:
                job.topk_ids = [[] for _ in seqs]  # type: ignore[misc]
                job.topk_lp = [[] for _ in seqs]  # type: ignore[misc]
        scores: list[np.ndarray] = job.scores  # type: ignore[assignment]
        nexts: list[np.ndarray] = job.logprobs  # type: ignore[assignment]
        n = len(group)
        T = len(seqs[group[-1]])
        tokens = np.zeros((n, T), dtype=np.int64)
        lengths = np.empty(n, dtype=np.int64)
        for r, k in enumerate(group):
            tokens[r, : len(seqs[k])] = seqs[k]
            lengths[r] = len(seqs[k])
        tl, nl = self.runtime.score(tokens, lengths)
        for r, k in enumerate(group):
            scores[k] = tl[r, : lengths[r] - 1].astype(np.float32)
            nexts[k] = nl[r].astype(np.float32)
        if job.top_k > 0:
            ids, vals = top_k_rows(np.stack([nexts[k] for k in group]), [job.top_k])
            id_rows, val_rows = ids.tolist(), vals.tolist()
            for r, k in enumerate(group):
                job.topk_ids[k] = id_rows[r]  # type: ignore[index]
                job.topk_lp[k] = val_rows[r]  # type: ignore[index]
