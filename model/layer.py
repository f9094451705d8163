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
floats) run 3-4x slower, so only the input term is read from, and ``dax`` written to, the strided stacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.cells.base import Array, Cell, Params


@dataclass
class LayerCache:
    """What backward needs: the inputs, every state, the per-step cell caches."""

    X: Array  # [X, T, B] layer input
    Hs: Array  # [H, T+1, B] h_0 .. h_T
    caches: list[Any]


def layer_forward(
    cell: Cell, p: Params, X: Array, h0: Array, c0: Array | None
) -> tuple[Array, Array | None, LayerCache]:
    """Run the layer over ``X`` ``[X, T, B]`` from ``h0`` (and ``c0``) ``[H, B]``.

    Returns ``(Hs, c_T, cache)``: ``Hs`` ``[H, T+1, B]`` holds h_0 .. h_T (``Hs[:, 1:]`` is the output
    sequence, ``Hs[:, -1]`` the final state).
    """
    Xd, T, B = X.shape
    H = h0.shape[0]
    AX = (p["W"] @ X.reshape(Xd, T * B)).reshape(-1, T, B)
    AX += p["b"][:, None, None]
    Hs = np.empty((H, T + 1, B), dtype=AX.dtype)
    Hs[:, 0] = h0
    h, c = Hs[:, 0], c0
    caches = []
    for t in range(T):
        h, c, cache = cell.forward(p, AX[:, t], h, c)
        Hs[:, t + 1] = h
        caches.append(cache)
    return Hs, c, LayerCache(X, Hs, caches)


def layer_backward(
    cell: Cell, p: Params, cache: LayerCache, dH: Array, dhT: Array | None, dcT: Array | None
) -> tuple[Array, Array, Array | None, Params]:
    """Exact BPTT through the layer.

    Args:
        dH: ``[H, T, B]`` loss gradient w.r.t. each output h_1 .. h_T (from the head or the layer above).
        dhT, dcT: ``[H, B]`` gradient w.r.t. the final state (None = 0).

    Returns ``(dX [X, T, B], dh0 [H, B], dc0 [H, B] or None, grads)`` with ``grads`` keyed like ``p``.
    """
    X, Hs, caches = cache.X, cache.Hs, cache.caches
    Xd, T, B = X.shape
    H = Hs.shape[0]
    GH = p["W"].shape[0]
    dAX = np.empty((GH, T, B), dtype=Hs.dtype)
    dh = np.zeros((H, B), dtype=Hs.dtype) if dhT is None else dhT.copy()
    dc = dcT
    if cell.has_c and dc is None:
        dc = np.zeros((H, B), dtype=Hs.dtype)
    grads: Params = {k: np.zeros_like(v) for k, v in p.items()}
    stacks: list[tuple[Array | None, Array | None]] = []
    for t in range(T - 1, -1, -1):
        dh += dH[:, t]
        dax, dh, dc, rec, vec = cell.backward(p, caches[t], dh, dc)
        dAX[:, t] = dax
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
    dAX2 = dAX.reshape(GH, T * B)
    grads["W"] = dAX2 @ X.reshape(Xd, T * B).T
    grads["b"] = dAX2.sum(axis=1)
    Hprev = Hs[:, :T].reshape(H, T * B)
    for (rows, _, _), (ds, os_) in zip(rec, stacks, strict=True):
        d2 = dAX2[rows] if ds is None else ds.reshape(-1, T * B)
        o2 = Hprev if os_ is None else os_.reshape(-1, T * B)
        grads["R"][rows] += d2 @ o2.T
    dX = (p["W"].T @ dAX2).reshape(Xd, T, B)
    return dX, dh, dc, grads
