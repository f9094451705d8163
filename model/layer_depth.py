"""The recurrence of a layer whose cell reads the lower layer's memory cell (the Depth Gated LSTM).

Like :func:`model.layer.recur_forward` / :func:`model.layer.recur_backward`, plus a cell sequence travelling
*between* layers: layer l's step t reads c_t^{l-1}, the new cell of layer l-1 at the same step, so

    forward   layer l-1 hands up its cells  Cs^{l-1} = (c_1 .. c_T)            [T, H, B]
    backward  layer l hands down            dLow_t = dL/dc_t^{l-1} (through its depth gate)   [T, H, B]

and layer l-1's BPTT adds dLow_t to its cell error at step t, next to the error from step t+1 (the cell
path). Both sequences are time-major (``[T, H, B]``: they are only ever read one step at a time, so each
step's slice is contiguous). Layer 0 gets ``low = None`` (no lower cell, see :mod:`model.cells.depth`).

The other cells never come here: :mod:`model.layer` dispatches once per sequence on
``cell.reads_lower_cell``, so their per-step loops are untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.cells.base import Array, Params
from model.cells.depth import DepthGatedCell
from model.layout import swap01


def depth_recur_forward(
    cell: DepthGatedCell, p: Params, AX: Array, h0: Array, c0: Array, low: Array | None
) -> tuple[Array, Array, list[Any], Array]:
    """The recurrence from ``AX = W X + b`` ``[5H, T, B]``, ``h0``, ``c0`` ``[H, B]`` and the lower layer's cells
    ``low`` ``[T, H, B]`` (None at layer 0).

    Returns ``(Hs [H, T+1, B], c_T [H, B], caches, Cs [T, H, B])``; ``Cs`` holds this layer's c_1 .. c_T for
    the layer above.
    """
    _, T, B = AX.shape
    H = h0.shape[0]
    AXt = swap01(AX)  # [T, 5H, B]
    Hs = np.empty((H, T + 1, B), dtype=AX.dtype)
    Cs = np.empty((T, H, B), dtype=AX.dtype)
    Hs[:, 0] = h0
    h, c = Hs[:, 0], c0
    caches = []
    for t in range(T):
        h, c, cache = cell.forward(p, AXt[t], h, c, low=None if low is None else low[t])
        Hs[:, t + 1] = h
        Cs[t] = c
        caches.append(cache)
    return Hs, c, caches, Cs


def depth_recur_backward(
    cell: DepthGatedCell,
    p: Params,
    Hs: Array,
    caches: list[Any],
    dH: Array,
    dhT: Array | None,
    dcT: Array | None,
    dC: Array | None,
) -> tuple[Array, Array, Array, Params, Array | None]:
    """Exact BPTT through the recurrence.

    Args:
        dH: ``[H, T, B]`` gradient w.r.t. the outputs h_1 .. h_T.
        dhT, dcT: ``[H, B]`` gradient w.r.t. the final state (None = 0).
        dC: ``[T, H, B]`` gradient w.r.t. this layer's cells c_1 .. c_T from the layer above's depth gate
            (None = 0: the top layer).

    Returns ``(dAX [5H, T, B], dh0, dc0 [H, B], grads, dLow [T, H, B] or None)``: ``grads`` holds ``R`` and
    ``D``; ``dLow`` is the gradient w.r.t. the lower layer's cells (None at layer 0).
    """
    H, T1, B = Hs.shape
    T = T1 - 1
    dAXt = np.empty((T, cell.G * H, B), dtype=Hs.dtype)
    dHt = swap01(dH)
    dh = np.zeros((H, B), dtype=Hs.dtype) if dhT is None else dhT.copy()
    dc = np.zeros((H, B), dtype=Hs.dtype) if dcT is None else dcT.copy()
    dLow: Array | None = None
    dD = np.zeros_like(p["D"])
    for t in range(T - 1, -1, -1):
        dh += dHt[t]
        if dC is not None:
            dc += dC[t]
        _, dh, dc, dlow, dD_t = cell.backward_low(p, caches[t], dh, dc, dax=dAXt[t])
        if dlow is not None:  # every step but at layer 0
            if dLow is None:
                dLow = np.empty((T, H, B), dtype=Hs.dtype)
            dLow[t] = dlow
        dD += dD_t
    dAX = swap01(dAXt)
    dIOFC = dAX[: 4 * H].reshape(4 * H, T * B)
    grads: Params = {"R": dIOFC @ Hs[:, :T].reshape(H, T * B).T, "D": dD}
    return dAX, dh, dc, grads, dLow
