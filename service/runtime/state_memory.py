"""Per-session recurrent state indexed by slot.

On the CPU one lazily committed host mapping of K planes ``[N, W_k]`` (K state tensors per session: h0, c0, h1,
...; W_k = H for h, the cell's ``c_width`` for c); on CUDA one device buffer ``[N, W_k]`` per state tensor,
gathered and scattered by two tiny graphs, so that states never leave the device.
"""

from __future__ import annotations

import mmap
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)


class StateMemory(ABC):
    """Per-session recurrent state: ``K`` vectors per slot (h0, c0, h1, ...), vector k of ``widths[k]`` values
    (``c`` is as wide as the cell needs: H for the LSTM family, 4H for fgr, 1 for clockwork's step counter), all
    zero when a slot is fresh."""

    capacity: int
    widths: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def K(self) -> int:
        return len(self.widths)

    @property
    def bytes_per_slot(self) -> int:
        return sum(self.widths) * self.dtype.itemsize

    @abstractmethod
    def zero(self, slot: int) -> None:
        """Reset one slot to the zero state."""

    @abstractmethod
    def read(self, slot: int) -> list[np.ndarray]:
        """Host copies of one slot's K vectors ``[widths[k]]``."""

    @abstractmethod
    def write(self, slot: int, values: list[np.ndarray]) -> None:
        """Overwrite one slot with K vectors ``[widths[k]]``."""

    def release(self, first_free: int) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Hint: slots ``>= first_free`` are all free; their memory may go back to the operating system."""


def _widths(widths: Sequence[int] | None, K: int, H: int) -> tuple[int, ...]:
    return tuple(int(w) for w in widths) if widths is not None else (H,) * K


class HostStateMemory(StateMemory):
    """One anonymous mapping holding K planes ``[N, widths[k]]`` back to back: pages are committed when first
    written and can be released again.

    ``widths`` lists the width of each state tensor; ``K`` and ``H`` are a shorthand for K tensors of width H.
    """

    def __init__(
        self,
        capacity: int,
        widths: Sequence[int] | None = None,
        dtype: Any = np.float32,
        *,
        K: int = 0,
        H: int = 0,
    ) -> None:
        self.capacity, self.widths = capacity, _widths(widths, K, H)
        self.dtype = np.dtype(dtype)
        size = self.dtype.itemsize
        nbytes = max(1, capacity * sum(self.widths) * size)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        self._map = mmap.mmap(-1, nbytes, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._offsets = np.concatenate([[0], np.cumsum([capacity * w * size for w in self.widths])]).astype(int)
        self.planes = [
            np.frombuffer(self._map, dtype=self.dtype, count=capacity * w, offset=int(off)).reshape(capacity, w)
            for w, off in zip(self.widths, self._offsets, strict=False)
        ]
        self._released_from = capacity

    def zero(self, slot: int) -> None:
        for a in self.planes:
            a[slot] = 0

    def read(self, slot: int) -> list[np.ndarray]:
        return [a[slot].copy() for a in self.planes]

    def write(self, slot: int, values: list[np.ndarray]) -> None:
        for a, v in zip(self.planes, values, strict=True):
            a[slot] = v

    def gather(self, slots: np.ndarray) -> list[np.ndarray]:
        """K arrays ``[B, widths[k]]``: for one slot, views of the planes (no copy); otherwise copies."""
        if len(slots) == 1:
            s = int(slots[0])
            return [a[s : s + 1] for a in self.planes]
        return [a[slots] for a in self.planes]

    def scatter(self, slots: np.ndarray, values: list[np.ndarray]) -> None:
        if len(slots) == 1:
            s = int(slots[0])
            for a, v in zip(self.planes, values, strict=True):
                a[s] = v[0]
            return
        for a, v in zip(self.planes, values, strict=True):
            a[slots] = v

    def release(self, first_free: int) -> None:
        """``madvise(MADV_DONTNEED)`` the whole pages above ``first_free`` in each of the K planes."""
        if first_free >= self._released_from or not hasattr(self._map, "madvise"):
            return
        page = mmap.PAGESIZE
        for k, w in enumerate(self.widths):
            start = int(self._offsets[k]) + first_free * w * self.dtype.itemsize
            start = -(-start // page) * page
            end = int(self._offsets[k + 1]) // page * page
            if end > start:
                self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
        self._released_from = first_free


class DeviceStateMemory(StateMemory):
    """K device buffers ``[N, widths[k]]`` (CUDA), read and written by a Gather graph and an in-place ScatterND
    graph.

    The ScatterND output is bound to the very buffer it reads, which onnxruntime's kernel detects and then skips
    its copy of the whole input: an in-place row update.
    """

    def __init__(
        self,
        capacity: int,
        widths: Sequence[int],
        dtype: Any,
        providers: list[Any],
        device_id: int = 0,
    ) -> None:
        self.capacity, self.widths = capacity, _widths(widths, 0, 0)
        self.dtype = np.dtype(dtype)
        self.device_id = device_id
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        W = self.widths
        K = len(W)
        self.buffers = [
            ort.OrtValue.ortvalue_from_numpy(np.zeros((capacity, w), dtype=self.dtype), "cuda", device_id) for w in W
        ]
        gather = helper.make_graph(
            [helper.make_node("Gather", [f"slab{k}", "idx"], [f"g{k}"], axis=0, name=f"gather{k}") for k in range(K)],
            "gather_states",
            [helper.make_tensor_value_info(f"slab{k}", elem, ["N", W[k]]) for k in range(K)]
            + [helper.make_tensor_value_info("idx", TensorProto.INT64, ["B"])],
            [helper.make_tensor_value_info(f"g{k}", elem, ["B", W[k]]) for k in range(K)],
        )
        scatter = helper.make_graph(
            [
                helper.make_node("ScatterND", [f"slab{k}", "idx2", f"u{k}"], [f"o{k}"], name=f"scatter{k}")
                for k in range(K)
            ],
            "scatter_states",
            [helper.make_tensor_value_info(f"slab{k}", elem, ["N", W[k]]) for k in range(K)]
            + [helper.make_tensor_value_info("idx2", TensorProto.INT64, ["B", 1])]
            + [helper.make_tensor_value_info(f"u{k}", elem, ["B", W[k]]) for k in range(K)],
            [helper.make_tensor_value_info(f"o{k}", elem, ["N", W[k]]) for k in range(K)],
        )
        opset = [helper.make_opsetid("", 17)]
        self._gather = ort.InferenceSession(
            helper.make_model(gather, opset_imports=opset).SerializeToString(), providers=providers
        )
        self._scatter = ort.InferenceSession(
            helper.make_model(scatter, opset_imports=opset).SerializeToString(), providers=providers
        )

    def gather(self, slots: np.ndarray, to_host: bool = False) -> list[Any]:
        io = self._gather.io_binding()
        for k, buf in enumerate(self.buffers):
            io.bind_ortvalue_input(f"slab{k}", buf)
        io.bind_cpu_input("idx", np.ascontiguousarray(slots, dtype=np.int64))
        for k in range(self.K):
            io.bind_output(f"g{k}", "cpu" if to_host else "cuda", 0 if to_host else self.device_id)
        self._gather.run_with_iobinding(io)
        outs = io.get_outputs()
        return [o.numpy() for o in outs] if to_host else list(outs)

    def scatter(self, slots: np.ndarray, values: list[Any]) -> None:
        io = self._scatter.io_binding()
        for k, buf in enumerate(self.buffers):
            io.bind_ortvalue_input(f"slab{k}", buf)
            io.bind_ortvalue_output(f"o{k}", buf)
        io.bind_cpu_input("idx2", np.ascontiguousarray(slots, dtype=np.int64).reshape(-1, 1))
        for k, v in enumerate(values):
            if isinstance(v, np.ndarray):
                io.bind_cpu_input(f"u{k}", np.ascontiguousarray(v, dtype=self.dtype))
            else:
                io.bind_ortvalue_input(f"u{k}", v)
        self._scatter.run_with_iobinding(io)

    def zero(self, slot: int) -> None:
        self.write(slot, [np.zeros(w, dtype=self.dtype) for w in self.widths])

    def read(self, slot: int) -> list[np.ndarray]:
        return [g[0] for g in self.gather(np.array([slot]), to_host=True)]

    def write(self, slot: int, values: list[np.ndarray]) -> None:
        self.scatter(np.array([slot]), [np.asarray(v, dtype=self.dtype)[None] for v in values])
