"""Batch shards on worker processes: one core each, and no interpreter lock between them.

:func:`model.train.parallel.sharded_grads` runs the shards on threads, which share CPython's interpreter lock. At
the trainer's shard size a NumPy call takes a few microseconds, and two threads hand the lock to each other on
every one of them, so two shards side by side take 1.2-1.4x one shard alone instead of 1x. A
:class:`ShardPool` runs shard 0 in the calling process and every other shard in a worker process of its own
(started once, with single-threaded BLAS), so the shards only meet at the end of a step.

Nothing large crosses a pipe:

- the parameters live in one shared-memory block (:meth:`ShardPool.share` hands back views of it, which the
  optimiser updates in place between steps, and which every worker reads);
- each worker writes its gradients into a shared block of its own;
- a step's message is the worker's rows of ids, state and weights, and its dropout generator; the reply is
  its loss, weight sum and final state.

The result is :func:`model.train.parallel.sharded_grads`'s, bit for bit (same rows, same generators, same
combination order). A worker that fails raises :class:`ShardWorkerError` in the caller, with the worker's
traceback, and a worker that dies (killed, out of memory) is reported with its exit code; workers ignore
Ctrl-C (the caller handles it) and exit when the pool closes or the caller's end of their pipe goes away.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from types import TracebackType
from typing import Any

import numpy as np

from model.config import ModelConfig
from model.network import Params, State
from model.train.parallel import ShardResult, batch_grads, combine, sharded_grads, split

#: Each array starts on a cache line of the shared block.
ALIGN = 64
#: Seconds a worker gets to exit after the pool closes, before it is terminated.
JOIN_TIMEOUT = 5.0

Layout = list[tuple[str, tuple[int, ...], str, int]]  # (name, shape, dtype, byte offset)


#: Where Linux keeps shared memory (a tmpfs: Docker gives containers 64 MiB of it unless told otherwise).
SHM_DIR = "/dev/shm"


def shared_memory_fits(params: Params, shards: int) -> bool:
    """True when :data:`SHM_DIR` has room for a pool's blocks (parameters plus one gradient copy per worker)
    with a quarter to spare; writing past a full tmpfs would kill the process with SIGBUS instead of an error.
    Systems without that directory (macOS) keep shared memory elsewhere and are assumed to fit."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return True
    need = _layout(params)[1] * shards
    return st.f_bavail * st.f_frsize >= need * 5 // 4


class ShardWorkerError(RuntimeError):
    """A shard worker failed or died; the message says which and why."""


def _layout(p: Params) -> tuple[Layout, int]:
    out: Layout = []
    off = 0
    for k, v in p.items():
        out.append((k, v.shape, v.dtype.str, off))
        off += -(-v.nbytes // ALIGN) * ALIGN
    return out, max(off, ALIGN)


def _views(buf: Any, layout: Layout) -> Params:
    return {k: np.ndarray(shape, dtype=np.dtype(dt), buffer=buf, offset=off) for k, shape, dt, off in layout}


def _worker(conn: Connection, cfg: ModelConfig, layout: Layout, params_name: str, grads_name: str) -> None:
    """A worker's loop: one message per step, ``None`` (or the pipe closing) to stop."""
    from threadpoolctl import threadpool_limits

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pshm, gshm = SharedMemory(params_name), SharedMemory(grads_name)
    try:
        p, g_out = _views(pshm.buf, layout), _views(gshm.buf, layout)
        with threadpool_limits(1):
            while True:
                try:
                    msg = conn.recv()
                    if msg is None:
                        return
                    try:
                        loss, wsum, g, final = batch_grads(cfg, p, *msg)
                        for k, v in g.items():
                            g_out[k][...] = v
                        reply: tuple[Any, ...] = ("ok", loss, wsum, final)
                    except Exception:  # reported to the caller, which raises it
                        reply = ("error", traceback.format_exc())
                    conn.send(reply)
                except (EOFError, OSError):  # the caller is gone (closed, interrupted or killed): so are we
                    return
    finally:
        del p, g_out
        pshm.close()
        gshm.close()


class ShardPool:
    """``shards - 1`` worker processes plus the caller, for :meth:`grads`; use as a context manager."""

    def __init__(self, cfg: ModelConfig, params: Params, shards: int, start_method: str = "spawn") -> None:
        """Start the workers and copy ``params`` into shared memory (use :attr:`params` from then on)."""
        if shards < 2:
            raise ValueError(f"shards: a pool needs at least 2, got {shards}")
        self.cfg, self.shards = cfg, shards
        self._layout, size = _layout(params)
        self._shms: list[SharedMemory] = []
        self._procs: list[BaseProcess] = []
        self._conns: list[Connection] = []
        try:
            pshm = self._new_block(size)
            self.params: Params = _views(pshm.buf, self._layout)
            for k, v in params.items():
                self.params[k][...] = v
            self._grads: list[Params] = []
            ctx: Any = mp.get_context(start_method)  # typeshed: BaseContext lacks Process
            for _ in range(shards - 1):
                gshm = self._new_block(size)
                self._grads.append(_views(gshm.buf, self._layout))
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(theirs, cfg, self._layout, pshm.name, gshm.name), daemon=True)
                proc.start()
                theirs.close()
                self._procs.append(proc)
                self._conns.append(mine)
        except BaseException:
            self.close()
            raise

    def _new_block(self, size: int) -> SharedMemory:
        shm = SharedMemory(create=True, size=size)
        self._shms.append(shm)
        return shm

    def grads(
        self,
        x: np.ndarray,
        y: np.ndarray,
        state: State,
        weights: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, Params, State]:
        """``(loss, grads, state)`` of one batch at the current :attr:`params`, as
        :func:`model.train.parallel.sharded_grads` computes it with ``shards`` shards."""
        parts = split(x, y, state, weights, rng, self.shards)
        due: list[int] = []  # workers whose reply to this step is still in their pipe
        try:
            for w, args in enumerate(parts[1:]):
                self._send(self._conns[w], args)
                due.append(w)
            results: list[ShardResult] = [batch_grads(self.cfg, self.params, *parts[0])]
            while due:
                results.append(self._receive(due.pop(0)))  # consumed even when it raises
        except BaseException:
            for w in due:  # read what is left, so that no stale reply answers the next step
                with contextlib.suppress(Exception):
                    self._receive(w)
            raise
        return combine(self.cfg, self.params, results)

    def _send(self, conn: Connection, args: Any) -> None:
        try:
            conn.send(args)
        except (BrokenPipeError, ConnectionResetError, EOFError) as e:
            raise self._died(self._conns.index(conn)) from e

    def _receive(self, w: int) -> ShardResult:
        try:
            reply = self._conns[w].recv()
        except (EOFError, ConnectionResetError) as e:
            raise self._died(w) from e
        if reply[0] == "error":
            raise ShardWorkerError(f"shard worker {w + 1} failed:\n{reply[1]}")
        _, loss, wsum, final = reply
        return loss, wsum, self._grads[w], final  # read by combine() before the worker's next step

    def _died(self, w: int) -> ShardWorkerError:
        proc = self._procs[w]
        proc.join(0.5)
        return ShardWorkerError(f"shard worker {w + 1} (pid {proc.pid}) exited unexpectedly, exit code {proc.exitcode}")

    def close(self) -> None:
        """Stop the workers and free the shared memory (idempotent). :attr:`params` must not be used after."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
            conn.close()
        for proc in self._procs:
            proc.join(JOIN_TIMEOUT)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        self._conns, self._procs = [], []
        self.params, self._grads = {}, []
        for shm in self._shms:
            with contextlib.suppress(BufferError):  # the caller may still hold views: mapped until dropped
                shm.close()
            shm.unlink()
        self._shms = []

    def __enter__(self) -> ShardPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


#: ``grads(x, y, state, dropout_rng) -> (loss, grads, final_state)`` for one batch.
BatchGrads = Callable[[np.ndarray, np.ndarray, State, np.random.Generator | None], tuple[float, Params, State]]


def open_shards(stack: ExitStack, cfg: ModelConfig, params: Params, shards: int, on: str) -> tuple[Params, BatchGrads]:
    """Set up a batch's gradients over ``shards`` cores, ``on`` "processes" or "threads", closed with ``stack``.

    Returns the parameters to train from then on (the pool's shared block when on processes) and the
    gradient function. Processes fall back to threads, with a warning that says why, when ``SHM_DIR`` has no
    room for the pool or no pool can start. The caller sets the BLAS threads (one per shard in the trainer).
    """
    why = ""  # why the shards fall back to threads, if they do
    if shards > 1 and on == "processes":
        if not shared_memory_fits(params, shards):
            why = f"{SHM_DIR} has no room for {shards} shard processes (in Docker, raise --shm-size)"
        else:
            try:
                pool = stack.enter_context(ShardPool(cfg, params, shards))
                return pool.params, lambda x, y, state, rng: pool.grads(x, y, state, rng=rng)
            except OSError as e:  # no shared memory or no processes here
                why = f"cannot start shard processes ({e})"
        warnings.warn(f"shards_on: {why}; the shards run on threads (slower)", RuntimeWarning, stacklevel=2)
    ex = stack.enter_context(ThreadPoolExecutor(shards)) if shards > 1 else None
    return params, lambda x, y, state, rng: sharded_grads(cfg, params, x, y, state, ex, shards, rng=rng)
