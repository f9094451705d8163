"""Running one formed batch on the runtime (on the event loop or in the batcher's executor): steps, prompts, head
looks and stateless scoring, with the top-k of the jobs that ask for it."""

from __future__ import annotations

import numpy as np

from service.engine.jobs import EMPTY_SCORES, HEAD, MAX_BATCH_TOKENS, SEQ, STEP, Job, top_k_row, top_k_rows
from service.errors import NothingToPredictFrom
from service.runtime.onnx_runtime import Runtime
from service.store.sessions import SessionStore


class BatchExecution:
    """The batcher's execution methods (mixed into :class:`~service.engine.batcher.Batcher`, which sets the fields)."""

    runtime: Runtime
    store: SessionStore
    max_batch: int

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
        """A SCORE job: ``tokens`` is a list of 1-D arrays; sorted by length and run ``max_batch`` at a time."""
        seqs: list[np.ndarray] = job.tokens
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        scores: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(seqs)
        nexts: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(seqs)
        i = 0
        while i < len(order):
            T = len(seqs[order[i]])
            n = 1
            while i + n < len(order) and n < self.max_batch and len(seqs[order[i + n]]) * (n + 1) <= MAX_BATCH_TOKENS:
                n += 1
            group = order[i : i + n]
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
            i += n
        job.scores = scores  # type: ignore[assignment]
        job.logprobs = nexts  # type: ignore[assignment]
        if job.top_k > 0:
            ids, vals = top_k_rows(np.stack(nexts), [job.top_k])
            job.topk_ids, job.topk_lp = ids.tolist(), vals.tolist()
