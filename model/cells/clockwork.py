"""The Clockwork RNN (Koutník et al. 2014): tanh-RNN modules that tick at different periods. Column vectors,
batch last: h is ``[H, B]``; ``ax = W x + b`` is ``[H, B]`` (one gate block), precomputed by the layer driver.

Modules. The H hidden units are split into M equal modules, M = :func:`modules` (H): the largest divisor of H
not above :data:`MAX_MODULES` (8), so H = 128 gives 8 modules of 16 units with periods 1, 2, 4, ..., 128. (An H
with no divisor in 2..8, e.g. a prime above 8, gives M = 1: a plain tanh RNN.) Module k (units
``k*H/M .. (k+1)*H/M``) has period ``T_k = 2^k``.

State. The second state tensor ``c`` is the step counter ``n`` (``[1, B]``, float, zero in the zero state),
kept modulo the largest period ``N = 2^(M-1)``, so its float32 value stays an exact integer forever. Every row
of a batch has its own counter (sessions served together need not be in step). One step::

    n      = round(c)                                  (the counter is piecewise constant: no gradient)
    act_k  = (n mod 2^k == 0)                          module k ticks at this step
    h'_k   = tanh(ax_k + Σ_{j >= k} R_kj h_j)   if act_k,   h_k   otherwise
    c'     = (n + 1) mod N

"mod" is the floor modulo; both are computed as ``r = n / 2^k; act = (floor(r) == r)`` and ``n' - N floor(n' /
N)``, exact in float arithmetic because every divisor is a power of two (the exported graphs do the same ops).

Connections run only from slower to faster modules (and within a module): R ``[H, H]`` is block upper
triangular, ``R_kj = 0`` for j < k. The zero blocks are zeroed at init and never read (the forward multiplies
block by block), and their gradient is exactly zero (the backward returns only the allowed blocks as R terms),
so training keeps them zero; the ONNX export multiplies R by the mask (:func:`block_mask`) all the same.

Backward, given dh' (the counter's error is dropped: ``dc = 0``)::

    da      = dh'∘(1 - h~²)∘act                     (a module that did not tick had no pre-activation)
    dh_prev = dh'∘(1 - act) + R^T da                 (a kept module passes its error straight through)
    dR_kj   = Σ_t da_k h_j^T   for j >= k

Initialisation: W, R ~ U(±1/sqrt(H)) with R's lower blocks zeroed, b = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.cells.base import Array, Params, RecTerm, uniform_init
from model.nonlin import tanh_

#: At most this many modules (periods 1 .. 2^(MAX_MODULES-1) = 128).
MAX_MODULES = 8


def modules(H: int) -> int:
    """M, the number of equal modules of H units: the largest divisor of H not above :data:`MAX_MODULES`."""
    return max(m for m in range(1, min(MAX_MODULES, H) + 1) if H % m == 0)


def cycle(H: int) -> int:
    """N = 2^(M-1), the largest period: the counter is kept modulo N."""
    return 2 ** (modules(H) - 1)


@cache
def inv_periods(H: int) -> NDArray[np.float64]:
    """``[H]``: 1 / 2^k for each unit of module k."""
    M = modules(H)
    return np.repeat(0.5 ** np.arange(M), H // M)


@cache
def block_mask(H: int) -> NDArray[np.bool_]:
    """``[H, H]`` True where R may be non-zero: row module k, column module j >= k."""
    M = modules(H)
    mod = np.arange(H) // (H // M)
    return mod[None, :] >= mod[:, None]


def blocks(H: int) -> list[tuple[slice, slice]]:
    """For each module k: (its rows, the columns of modules k .. M-1) of R."""
    M, S = modules(H), H // modules(H)
    return [(slice(k * S, (k + 1) * S), slice(k * S, H)) for k in range(M)]


def ticks(c: Array, H: int) -> Array:
    """``act [H, B]`` (bool): which units update at the step whose counter is ``c [1, B]``."""
    r = np.rint(c) * inv_periods(H)[:, None].astype(c.dtype)
    return np.floor(r) == r


def advance(c: Array, H: int) -> Array:
    """The next counter ``(round(c) + 1) mod N`` ``[1, B]``."""
    N = c.dtype.type(cycle(H))
    n1 = np.rint(c) + 1
    return n1 - np.floor(n1 * (1 / N)) * N


@dataclass(frozen=True)
class ClockworkCell:
    name: str = "clockwork"
    G: int = 1
    has_c: bool = True

    def c_width(self, H: int) -> int:
        """The step counter: one value per row."""
        return 1

    def shapes(self, X: int, H: int) -> dict[str, tuple[int, ...]]:
        return {"W": (H, X), "R": (H, H), "b": (H,)}

    def init(self, X: int, H: int, rng: np.random.Generator, forget_bias: float, dtype: Any) -> Params:
        W, R, b = uniform_init(X, H, 1, rng, dtype)
        R *= block_mask(H)
        return {"W": W, "R": R, "b": b}

    def forward(
        self, p: Params, ax: Array, h: Array, c: Array | None, a: Array | None = None
    ) -> tuple[Array, Array, Any]:
        """One step. ax, h ``[H, B]``, c ``[1, B]`` (the counter) -> h' ``[H, B]``, c' ``[1, B]``, cache."""
        assert c is not None
        H = h.shape[0]
        R = p["R"]
        if a is None:
            a = np.empty_like(ax)
        for rows, cols in blocks(H):
            np.matmul(R[rows, cols], h[cols], out=a[rows])
        a += ax
        tanh_(a)
        act = ticks(c, H)
        h2 = np.where(act, a, h)
        return h2, advance(c, H), (a, act)

    def backward(
        self, p: Params, cache: Any, dh2: Array, dc2: Array | None, dax: Array | None = None
    ) -> tuple[Array, Array, Array, tuple[RecTerm, ...], dict[str, Array]]:
        """Backprop one step: dh' ``[H, B]`` -> dax, dh ``[H, B]``, dc = 0 ``[1, B]``, R block terms, {}."""
        a, act = cache
        H, B = a.shape
        R = p["R"]
        if dax is None:
            dax = np.empty_like(a)
        np.multiply(dh2, act, out=dax)
        t = a * a
        np.subtract(1.0, t, out=t)
        dax *= t
        dh = np.where(act, 0.0, dh2).astype(a.dtype, copy=False)
        terms = blocks(H)
        for rows, cols in terms:
            dh[cols] += R[rows, cols].T @ dax[rows]
        return dax, dh, np.zeros((1, B), dtype=a.dtype), tuple((rc, None, None) for rc in terms), {}


CLOCKWORK = ClockworkCell()
