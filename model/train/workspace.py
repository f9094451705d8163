"""Scratch arrays kept from one training step to the next, one set per thread (pure: no I/O, no RNG).

A training step allocates the same large arrays every time (a shard of the default LSTM: about 25 MB of
gate activations, states and errors). Fresh from the allocator, each is mapped and zeroed by the kernel page by
page: measured here, about 3,200 page faults and 7-13 ms of system time per 50 ms shard step. A
:class:`Workspace` hands out the same buffers again instead, so a step after the first touches only memory
it already owns. Buffers are uninitialised (like ``np.empty``) and overwritten by the next request of the
same name, so a caller must not hand them out: whatever it returns is a fresh array or a copy.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

_local = threading.local()


class Workspace:
    """Named buffers, reused while a name keeps its shape and dtype."""

    def __init__(self) -> None:
        self._bufs: dict[str, NDArray[Any]] = {}

    def empty(self, name: str, shape: tuple[int, ...], dtype: Any) -> NDArray[Any]:
        """An uninitialised ``shape`` array of ``dtype`` (the previous one of this name when it fits)."""
        a = self._bufs.get(name)
        if a is None or a.shape != shape or a.dtype != np.dtype(dtype):
            a = self._bufs[name] = np.empty(shape, dtype=dtype)
        return a

    def zeros(self, name: str, shape: tuple[int, ...], dtype: Any) -> NDArray[Any]:
        """Like :meth:`empty`, filled with zeros."""
        a = self.empty(name, shape, dtype)
        a.fill(0)
        return a

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(a.nbytes for a in self._bufs.values())


def for_this_thread() -> Workspace:
    """The calling thread's workspace (created on first use; shards on threads never share one)."""
    ws: Workspace | None = getattr(_local, "ws", None)
    if ws is None:
        ws = _local.ws = Workspace()
    return ws
