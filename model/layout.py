"""Memory-layout helpers for the sequence tensors of :mod:`model.layer` (pure, no I/O).

The layer driver keeps sequences feature-major ``[F, T, B]`` for its large GEMMs and time-major ``[T, F, B]``
for the per-step loop, and converts between the two once per sequence. NumPy's own copy of
``a.transpose(1, 0, 2)`` runs its inner loop over the last axis, B floats at a time, so at the training batch
shards (B = 16) it pays its per-inner-loop overhead F*T times. :func:`swap01` moves each row of B floats as one
opaque item instead (a ``np.void`` view of the last axis), which turns the same copy into a 2-D transpose of
64-byte items: for a ``[1024, 64, 16]`` float32 array here 0.29 vs 0.71 ms (0.56 vs 3.3 ms into fresh pages).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

#: Rows up to this many bytes move as single items; longer rows gain nothing over NumPy's own loop.
MAX_ROW_BYTES = 256


def swap01(a: NDArray[np.generic]) -> NDArray[np.generic]:
    """``np.ascontiguousarray(a.transpose(1, 0, 2))`` for a 3-D ``a``, ``[P, Q, R]`` -> ``[Q, P, R]``, faster.

    Like NumPy's, the result shares ``a``'s memory (no copy) when the transpose is already C-contiguous.

    When the last axis is contiguous and short, each length-R row is copied as one ``np.void`` item; any
    other input takes NumPy's general path. The values are the same in every case.
    """
    if a.ndim != 3:
        raise ValueError(f"swap01: expected a 3-D array, got shape {a.shape}")
    P, Q, R = a.shape
    row = R * a.itemsize
    if R == 0 or row > MAX_ROW_BYTES or (R > 1 and a.strides[2] != a.itemsize):
        return np.ascontiguousarray(a.transpose(1, 0, 2))
    if R == 1:  # a length-1 axis may carry any stride; give it the item's own
        a = np.lib.stride_tricks.as_strided(a, strides=(a.strides[0], a.strides[1], a.itemsize))
    items = a.view(np.dtype((np.void, row)))[..., 0]  # [P, Q]: each row of R values one opaque item
    out = np.ascontiguousarray(items.T)
    return out.view(a.dtype).reshape(Q, P, R)
