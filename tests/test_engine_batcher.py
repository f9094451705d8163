"""Micro-batching: sessions batched together, never two steps of one session in a batch, order kept."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from service_helpers import oracle, tiny_model

from service.engine.batcher import Batcher
from service.engine.jobs import HEAD, SCORE, SEQ, STEP, Job, score_chunks, top_k_row, top_k_rows
from service.errors import NothingToPredictFrom
from service.runtime.bundle import load_bundle
from service.runtime.onnx_runtime import Runtime
from service.store.memory import MemoryStore


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime(load_bundle(tiny_model()), "cpu")


def _setup(runtime: Runtime, **kw: object) -> tuple[Batcher, MemoryStore, list[tuple[str, list[Job]]]]:
    store = MemoryStore(runtime.new_state_memory(16))
    b = Batcher(runtime, store, **kw)  # type: ignore[arg-type]
    seen: list[tuple[str, list[Job]]] = []
    b.batch_hook = lambda lane, jobs: seen.append((lane, list(jobs)))
    return b, store, seen


@pytest.mark.parametrize("threads", [0, 2], ids=["on-loop", "threaded"])
def test_one_step_per_session_per_batch_in_order(runtime: Runtime, threads: int) -> None:
    ex = ThreadPoolExecutor(threads) if threads else None
    b, store, seen = _setup(runtime, executor=ex)
    o = oracle()
    a_ids, c_ids = [3, 5, 7], [9]

    async def main() -> tuple[list[Job], list[Job]]:
        _, a = store.create("a", 0.0)
        _, c = store.create("c", 0.0)
        fa = [b.submit(Job(STEP, a, t, top_k=3)) for t in a_ids]
        fc = [b.submit(Job(STEP, c, t, top_k=3)) for t in c_ids]
        return list(await asyncio.gather(*fa)), list(await asyncio.gather(*fc))

    ja, jc = asyncio.run(main())
    b.close()
    assert [(lane, [j.tokens for j in jobs]) for lane, jobs in seen] == [("step", [3, 9]), ("step", [5]), ("step", [7])]
    for lane_jobs in seen:
        slots = [j.slot for j in lane_jobs[1]]
        assert len(slots) == len(set(slots))
    assert [j.position for j in ja] == [1, 2, 3] and jc[0].position == 1
    for n, j in enumerate(ja, start=1):
        np.testing.assert_allclose(j.logprobs, o.next_logprobs(a_ids[:n]), atol=2e-5)
        assert j.topk_ids == o.top_k(a_ids[:n], 3)
    np.testing.assert_allclose(jc[0].logprobs, o.next_logprobs(c_ids), atol=2e-5)


def test_max_batch_and_mixed_lanes(runtime: Runtime) -> None:
    b, store, seen = _setup(runtime, max_batch=2)

    async def main() -> list[Job]:
        slots = [store.create(None, 0.0)[1] for _ in range(5)]
        futs = [b.submit(Job(STEP, s, 1)) for s in slots[:3]]
        futs.append(b.submit(Job(SEQ, slots[3], np.array([1, 2, 3]), score=True)))
        futs.append(b.submit(Job(HEAD, slots[4], None, top_k=2)))
        return list(await asyncio.gather(*futs, return_exceptions=True))

    res = asyncio.run(main())
    steps = [len(j) for lane, j in seen if lane == "step"]
    assert steps == [2, 1]
    assert isinstance(res[4], NothingToPredictFrom)  # a HEAD job on a session with no tokens
    assert res[3].position == 3 and len(res[3].scores) == 2


def test_batch_wait_gathers_the_last_cohort_and_never_delays_a_lone_session(runtime: Runtime) -> None:
    b, store, seen = _setup(runtime, max_wait=0.05)

    async def main() -> float:
        s1 = store.create(None, 0.0)[1]
        s2 = store.create(None, 0.0)[1]
        await asyncio.gather(b.submit(Job(STEP, s1, 1)), b.submit(Job(STEP, s2, 1)))  # a cohort of two
        f1 = b.submit(Job(STEP, s1, 2))
        await asyncio.sleep(0.002)  # a later turn of the loop: without the wait this would be a batch of its own
        f2 = b.submit(Job(STEP, s2, 2))
        await asyncio.gather(f1, f2)
        await asyncio.sleep(0.06)  # s2 went away: the next batch waits at most max_wait ...
        await b.submit(Job(STEP, s1, 3))
        t0 = time.perf_counter()
        await b.submit(Job(STEP, s1, 4))  # ... and after a batch of one, a lone session does not wait at all
        return time.perf_counter() - t0

    lone = asyncio.run(main())
    assert [len(j) for _, j in seen] == [2, 2, 1, 1]
    assert lone < 0.02


def test_score_job(runtime: Runtime) -> None:
    b, _, _ = _setup(runtime, max_batch=2)
    o = oracle()
    seqs = [np.array(x) for x in ([1, 2, 3, 4], [5], [6, 7], [8, 9, 10])]

    async def main() -> Job:
        return await b.submit(Job(SCORE, -1, seqs, top_k=2))

    job = asyncio.run(main())
    for s, sc in zip(seqs, job.scores, strict=True):  # type: ignore[call-overload]
        np.testing.assert_allclose(sc, o.token_logprobs(s.tolist()), atol=2e-5)
    assert job.topk_ids[1] == o.top_k([5], 2)  # type: ignore[index]


def test_top_k_rows() -> None:
    lp = np.log(np.array([[0.1, 0.5, 0.4], [0.4, 0.2, 0.4]]))
    ids, vals = top_k_rows(lp, [2, 1])
    assert ids.tolist() == [[1, 2], [0, 2]]
    np.testing.assert_allclose(vals, np.take_along_axis(lp, ids, 1))
    ids, _ = top_k_rows(lp, [5])
    assert ids.shape == (2, 3)


def test_top_k_row() -> None:
    row = np.log(np.array([0.2, 0.3, 0.2, 0.3], dtype=np.float32))
    ids, vals = top_k_row(row, 3)
    assert ids == [1, 3, 0]  # ties lowest id first
    assert vals == row[[1, 3, 0]].tolist()
    big = np.random.default_rng(0).standard_normal(3000).astype(np.float32)  # past 1024: the partition path
    ids, vals = top_k_row(big, 5)
    assert ids == top_k_rows(big[None], [5])[0][0].tolist() == np.argsort(-big)[:5].tolist()
    assert vals == big[ids].tolist()


@pytest.mark.parametrize("threads", [0, 2], ids=["on-loop", "threaded"])
def test_quiesce_holds_states_still_and_journal_sees_every_booking_in_order(runtime: Runtime, threads: int) -> None:
    ex = ThreadPoolExecutor(threads) if threads else None
    b, store, _ = _setup(runtime, executor=ex)
    booked: list[tuple[int, object, int]] = []
    b.journal = lambda slot, tokens, position, held: booked.append((slot, tokens, position))

    async def main() -> tuple[int, int]:
        _, a = store.create("a", 0.0)
        _, c = store.create("c", 0.0)
        first = b.submit(Job(STEP, a, 3))
        async with b.quiesce():  # the running batch is waited for; the queued ones wait for the exit
            assert not b._step.busy and not b._seq.busy
            held = [b.submit(Job(STEP, a, 5)), b.submit(Job(SEQ, c, np.array([1, 2])))]
            before = store.memory.read(a)
            await asyncio.sleep(0.02)
            assert all(not f.done() for f in held)
            assert all(np.array_equal(x, y) for x, y in zip(store.memory.read(a), before, strict=True))
        await asyncio.gather(first, *held)
        return a, c

    a, c = asyncio.run(main())
    b.close()
    per_slot = {x: [(t if isinstance(t, int) else list(t), p) for s, t, p in booked if s == x] for x in (a, c)}
    assert per_slot == {a: [(3, 1), (5, 2)], c: [([1, 2], 2)]}  # each session's bookings in order
    assert store.position(a) == 2 and store.position(c) == 2


def test_a_score_runs_in_chunks_and_work_queued_meanwhile_goes_between_them(runtime: Runtime) -> None:
    """Each chunk is one batch; after it the request goes to the back of the lane, so a prompt that arrived
    while the first chunk ran is not held up by the rest; the results are those of one unchunked run."""
    b, store, seen = _setup(runtime, max_batch=2)
    o = oracle()
    seqs = [np.array(x) for x in ([1, 2, 3, 4], [5], [6, 7], [8, 9, 10], [11, 12])]

    async def main() -> Job:
        slot = store.create(None, 0.0)[1]
        score = b.submit(Job(SCORE, -1, seqs, top_k=2))
        prompt = b.submit(Job(SEQ, slot, np.array([1, 2, 3]), score=True))
        await asyncio.gather(score, prompt)
        return await score

    job = asyncio.run(main())
    kinds = [(jobs[0].kind, len(jobs[0].chunks[0]) if jobs[0].kind == SCORE else 0) for _, jobs in seen]
    assert kinds == [(SCORE, 2), (SEQ, 0), (SCORE, 2), (SCORE, 2)]  # 5 sequences, at most 2 per chunk
    assert all(lane == "sequence" for lane, _ in seen)
    for s, sc in zip(seqs, job.scores, strict=True):  # type: ignore[call-overload]
        np.testing.assert_allclose(sc, o.token_logprobs(s.tolist()), atol=2e-5)
    assert [job.topk_ids[i] for i in range(5)] == [o.top_k(s.tolist(), 2) for s in seqs]  # type: ignore[index]


def test_score_chunks_bound_rows_and_padded_tokens() -> None:
    lengths = [5, 100, 3, 40_000, 30_000, 7, 70_000]
    chunks = score_chunks(lengths, max_rows=2, max_tokens=65_536)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for c in chunks:
        assert len(c) <= 2 and (len(c) == 1 or len(c) * max(lengths[i] for i in c) <= 65_536)
    assert chunks == [[2, 0], [5, 1], [4], [3], [6]]  # shortest first; 70,000 tokens alone


def test_cheap_batches_run_on_the_loop_and_long_ones_in_the_executor(runtime: Runtime) -> None:
    where: list[tuple[int, str]] = []

    class Recording(Batcher):
        def _execute(self, jobs: list[Job], first_pos: list[int]) -> None:
            where.append((jobs[0].kind, threading.current_thread().name))
            super()._execute(jobs, first_pos)

    store = MemoryStore(runtime.new_state_memory(4))
    b = Recording(runtime, store, executor=ThreadPoolExecutor(2, thread_name_prefix="exec"))
    long_seqs = [np.ones(4000, dtype=np.int64) for _ in range(16)]

    async def main() -> None:
        slot = store.create(None, 0.0)[1]
        await b.submit(Job(STEP, slot, 1))  # a kind not measured yet: in the executor, which measures it
        assert b.rates[STEP] is not None
        b.rates[STEP] = 1e-6  # (set, not measured, so that a busy machine cannot change the outcome)
        await b.submit(Job(STEP, slot, 2))  # predicted 1 us: on the loop
        b.rates[STEP] = 1.0
        await b.submit(Job(STEP, slot, 3))  # predicted 1 s: in the executor
        await b.submit(Job(SCORE, -1, long_seqs))
        assert b.rates[SCORE] is not None and not b.inline(SCORE, 16 * 4000)  # measured, and too long

    loop_thread = threading.current_thread().name
    asyncio.run(main())
    b.close()
    assert [k for k, _ in where] == [STEP, STEP, STEP, SCORE]
    assert [n == loop_thread for _, n in where] == [False, True, False, False]
    assert all(n.startswith("exec") for _, n in where if n != loop_thread)
