"""One recurrent layer over a whole sequence: the input projection in one GEMM, the cell's steps, exact BPTT.

Sequence tensors are feature-major ``[F, T, B]`` (features, time, batch): a step's slice ``x[:, t, :]`` is the
column-vector batch the cells work on, and ``x.reshape(F, T*B)`` is free, so the input projection and every
weight gradient are one large GEMM each instead of T small ones::

    AX = W X + b                         [G*H, T, B]   (one GEMM for all steps)
    h_t, c_t = cell(AX_t, h_{t-1}, c_{t-1})
    dW = dAX X^T,  db = Σ dAX,  dX = W^T dAX,  dR = Σ_t dA_t h_{t-1}^T   (one GEMM each)

Backward walks t = T-1 .. 0 carrying dh and dc along time (the cell path included), adding at each step the
error that arrives from above (the head or the next layer): dh_t = dH_t + (dh from step t+1).

The cells work on contiguous per-step buffers: elementwise kernels on a strided ``[:, t, :]`` slice (rows of B
floats) run 3-4x slower, so the input term and ``dax`` live in time-major ``[T, G*H, B]`` copies, transposed
once per sequence (:func:`model.layout.swap01`).

A depth-gated layer also exchanges a cell sequence with its neighbours (its cells up, their errors down);
:mod:`model.layer_depth` runs that recurrence, chosen once per sequence so other cells' loops are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from model.cells.base import Array, Cell, Params, split_index
from model.cells.depth import DepthGatedCell
from model.layer_depth import depth_recur_backward, depth_recur_forward
from model.layout import swap01


@dataclass
class LayerCache:
    """What backward needs: the layer input (None when the caller projected it), every state, the step caches."""

    X: Array | None  # [X, T, B] layer input
    Hs: Array  # [H, T+1, B] h_0 .. h_T
    caches: list[Any]
    Cs: Array | None = None  # [T, H, B] c_1 .. c_T, kept only for a cell that the layer above reads (depth-gated)


def reads_lower_cell(cell: Cell) -> bool:
    """True for a cell whose step reads the lower layer's new cell c_t^{l-1} (see :mod:`model.layer_depth`)."""
    return bool(getattr(cell, "reads_lower_cell", False))


def recur_forward(
    cell: Cell, p: Params, AX: Array, h0: Array, c0: Array | None, low: Array | None = None
) -> tuple[Array, Array | None, list[Any], Array | None]:
    """The recurrence alone, from the input term ``AX = W X + b`` ``[G*H, T, B]`` and ``h0`` (``c0``) ``[H, B]``.

    Returns ``(Hs, c_T, caches, Cs)``: ``Hs`` ``[H, T+1, B]`` holds h_0 .. h_T (``Hs[:, 1:]`` is the output
    sequence, ``Hs[:, -1]`` the final state). A cell that reads the lower layer's cell (depth-gated) gets
    that layer's ``Cs`` as ``low`` ``[T, H, B]`` (None at layer 0) and returns its own ``Cs``; for every
    other cell ``low`` is ignored and ``Cs`` is None.
    """
    if reads_lower_cell(cell):
        assert c0 is not None
        return depth_recur_forward(cast(DepthGatedCell, cell), p, AX, h0, c0, low)
    _, T, B = AX.shape
    H = h0.shape[0]
    AXt = swap01(AX)  # [T, G*H, B]: one copy beats T strided reads
    Hs = np.empty((H, T + 1, B), dtype=AX.dtype)
    Hs[:, 0] = h0
    h, c = Hs[:, 0], c0
    caches = []
    for t in range(T):
        h, c, cache = cell.forward(p, AXt[t], h, c)
        Hs[:, t + 1] = h
        caches.append(cache)
    return Hs, c, caches, None


def recur_backward(
    cell: Cell,
    p: Params,
    Hs: Array,
    caches: list[Any],
    dH: Array,
    dhT: Array | None,
    dcT: Array | None,
    dC: Array | None = None,
) -> tuple[Array, Array, Array | None, Params, Array | None]:
    """Exact BPTT through the recurrence.

    Args:
        dH: ``[H, T, B]`` loss gradient w.r.t. each output h_1 .. h_T (from the head or the layer above).
        dhT, dcT: ``[H, B]`` and ``[C, B]`` (C = ``cell.c_width(H)``) gradient w.r.t. the final state (None = 0).
        dC: ``[T, H, B]`` gradient w.r.t. the cells c_1 .. c_T from the layer above's depth gate
            (depth-gated only; None = 0).

    Returns ``(dAX [G*H, T, B], dh0 [H, B], dc0 [H, B] or None, grads, dLow)``; ``grads`` holds ``R`` and the
    cell's vector parameters (not ``W`` and ``b``, which follow from ``dAX``); ``dLow`` ``[T, H, B]`` is the
    gradient w.r.t. the lower layer's cells (depth-gated above layer 0; None otherwise).
    """
    if reads_lower_cell(cell):
        return depth_recur_backward(cast(DepthGatedCell, cell), p, Hs, caches, dH, dhT, dcT, dC)
    H, T1, B = Hs.shape
    T = T1 - 1
    GH = p["R"].shape[0]
    dAXt = np.empty((T, GH, B), dtype=Hs.dtype)  # per-step rows contiguous; transposed once at the end
    dHt = swap01(dH)
    dh = np.zeros((H, B), dtype=Hs.dtype) if dhT is None else dhT.copy()
    dc = dcT
    if cell.has_c and dc is None:
        dc = np.zeros((cell.c_width(H), B), dtype=Hs.dtype)
    grads: Params = {k: np.zeros_like(v) for k, v in p.items() if k not in ("W", "b")}
    stacks: list[tuple[Array | None, Array | None]] = []
    rec: tuple[Any, ...] = ()
    for t in range(T - 1, -1, -1):
        dh += dHt[t]
        _, dh, dc, rec, vec = cell.backward(p, caches[t], dh, dc, dax=dAXt[t])
        if not stacks:  # first step seen: allocate a stack for every explicit term
            stacks = [
                (
                    None if d is None else np.empty((d.shape[0], T, B), dtype=d.dtype),
                    None if o is None else np.empty((o.shape[0], T, B), dtype=o.dtype),
                )
                for _, d, o in rec
            ]
        for (_, d, o), (ds, os_) in zip(rec, stacks, strict=True):
            if ds is not None:
                ds[:, t] = d
            if os_ is not None:
                os_[:, t] = o
        for k, v in vec.items():
            grads[k] += v
    dAX = swap01(dAXt)
    dAX2 = dAX.reshape(GH, T * B)
    Hprev = Hs[:, :T].reshape(H, T * B)
    for (index, _, _), (ds, os_) in zip(rec, stacks, strict=True):
        rows, cols = split_index(index)  # a row slice, or a block of R (clockwork)
        d2 = dAX2[rows] if ds is None else ds.reshape(-1, T * B)
        o2 = Hprev[cols] if os_ is None else os_.reshape(-1, T * B)
        grads["R"][rows, cols] += d2 @ o2.T
    return dAX, dh, dc, grads, None


def layer_forward(
    cell: Cell, p: Params, X: Array, h0: Array, c0: Array | None, low: Array | None = None
) -> tuple[Array, Array | None, LayerCache]:
    """Run the layer over ``X`` ``[X, T, B]``: ``AX = W X + b`` in one GEMM, then :func:`recur_forward`
    (``low``: the lower layer's ``Cs``, for depth-gated)."""
    Xd, T, B = X.shape
    AX = (p["W"] @ X.reshape(Xd, T * B)).reshape(-1, T, B)
    AX += p["b"][:, None, None]
    Hs, cT, caches, Cs = recur_forward(cell, p, AX, h0, c0, low)
    return Hs, cT, LayerCache(X, Hs, caches, Cs)


def layer_backward(
    cell: Cell,
    p: Params,
    cache: LayerCache,
    dH: Array,
    dhT: Array | None,
    dcT: Array | None,
    dC: Array | None = None,
) -> tuple[Array, Array, Array | None, Params, Array | None]:
    """Exact BPTT through the layer (:func:`recur_backward`, then the projection's gradients).

    Returns ``(dX [X, T, B], dh0 [H, B], dc0 [H, B] or None, grads, dLow)`` with ``grads`` keyed like ``p``
    (``dC``/``dLow``: the cross-layer cell path of depth-gated, see :func:`recur_backward`).
    """
    X = cache.X
    assert X is not None
    Xd, T, B = X.shape
    dAX, dh, dc, grads, dLow = recur_backward(cell, p, cache.Hs, cache.caches, dH, dhT, dcT, dC)
    dAX2 = dAX.reshape(-1, T * B)
    grads["W"] = dAX2 @ X.reshape(Xd, T * B).T
    grads["b"] = dAX2.sum(axis=1)
    dX = (p["W"].T @ dAX2).reshape(Xd, T, B)
    return dX, dh, dc, grads, dLow
