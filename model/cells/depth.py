"""The Depth Gated LSTM (Yao et al. 2015, arXiv 1508.03790): a depth gate links the memory cell of layer l to
the new memory cell of layer l-1 at the same time step.

Gate blocks in ONNX LSTM order i, o, f, c with the depth block d appended (G = 5): ``W`` is ``[5H, X]`` and
``b`` ``[5H]``, but ``R`` is ``[4H, H]``: as in Yao et al., d has no recurrent weights, only the two
peephole-style vectors ``D = [w_cd, w_ld]`` (``[2H]``). Column vectors, batch last; ``low`` = c_t^{l-1}
``[H, B]`` is the lower layer's *new* cell at the same step::

    i  = σ(ax_i + R_i h)    f = σ(ax_f + R_f h)    o = σ(ax_o + R_o h)    c~ = tanh(ax_c + R_c h)
    d  = σ(ax_d + w_cd∘c + w_ld∘low)                     (ax_d = W_d x + b_d)
    c' = d∘low + f∘c + i∘c~
    h' = o∘tanh(c')

Layer 0 has no lower cell: ``low = None`` stands for c^{-1} = 0, so d has no effect there and layer 0 is
exactly the plain LSTM (d is not even computed). Its d rows of ``W``/``b`` and its ``D`` are kept for a
uniform layout and get zero gradient.

Backward, given dh' and dc' (the error from step t+1 along the cell path *plus* the error the layer above
sends back through its depth gate, added by the layer driver)::

    da_o = dh'∘tanh(c')∘o∘(1-o)
    dc   = dc' + dh'∘o∘(1 - tanh²(c'))
    da_i = dc∘c~∘i∘(1-i);  da_f = dc∘c∘f∘(1-f);  da_c = dc∘i∘(1 - c~²)
    da_d = dc∘low∘d∘(1-d)
    dc_prev = dc∘f + w_cd∘da_d
    dlow    = dc∘d + w_ld∘da_d                          <- into layer l-1's dc at the same step
    dh_prev = R^T da_iofc;  dw_cd = Σ_b da_d∘c;  dw_ld = Σ_b da_d∘low

Initialisation: W, R ~ U(±1/sqrt(H)), b = 0 except the forget block b_f = ``forget_bias``; b_d = 0 and D = 0,
so the depth gate starts half open (d = 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.cells.base import Array, Params, RecTerm
from model.nonlin import dsigmoid_, dtanh_, sigmoid_, tanh_


@dataclass(frozen=True)
class DepthGatedCell:
    name: str = "depth-gated"
    has_c: bool = True
    #: A step reads the lower layer's new cell c_t^{l-1} (the layer driver passes it as ``low``).
    reads_lower_cell: bool = True

    @property
    def G(self) -> int:
        return 5

    def c_width(self, H: int) -> int:
        """Width of the memory cell c: H, like every LSTM."""
        return H

    def shapes(self, X: int, H: int) -> dict[str, tuple[int, ...]]:
        return {"W": (5 * H, X), "R": (4 * H, H), "b": (5 * H,), "D": (2 * H,)}

    def init(self, X: int, H: int, rng: np.random.Generator, forget_bias: float, dtype: Any) -> Params:
        s = 1.0 / np.sqrt(H)
        W = rng.uniform(-s, s, size=(5 * H, X)).astype(dtype)
        R = rng.uniform(-s, s, size=(4 * H, H)).astype(dtype)
        b = np.zeros(5 * H, dtype=dtype)
        b[2 * H : 3 * H] = forget_bias
        return {"W": W, "R": R, "b": b, "D": np.zeros(2 * H, dtype=dtype)}

    def forward(
        self, p: Params, ax: Array, h: Array, c: Array | None, a: Array | None = None, low: Array | None = None
    ) -> tuple[Array, Array, Any]:
        """One step. ax ``[5H, B]``, h, c, low ``[H, B]`` (low None at layer 0) -> h', c' ``[H, B]``, cache."""
        assert c is not None
        H = h.shape[0]
        if a is None:
            a = np.empty_like(ax)
        np.matmul(p["R"], h, out=a[: 4 * H])
        a[: 4 * H] += ax[: 4 * H]
        i, o, f, g = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H : 4 * H]
        sigmoid_(a[: 3 * H])
        tanh_(g)
        c2 = f * c
        c2 += i * g
        if low is not None:
            D = p["D"]
            d = a[4 * H :]
            np.multiply(D[:H, None], c, out=d)
            d += ax[4 * H :]
            d += D[H:, None] * low
            sigmoid_(d)
            c2 += d * low
        tc = np.tanh(c2)
        h2 = o * tc
        return h2, c2, (a, c, tc, low)

    def backward_low(
        self, p: Params, cache: Any, dh2: Array, dc2: Array | None, dax: Array | None = None
    ) -> tuple[Array, Array, Array, Array | None, Array]:
        """Backprop one step: dh', dc' ``[H, B]`` -> ``(dax [5H, B], dh, dc, dlow, dD [2H])``.

        ``dlow`` (``[H, B]``, None at layer 0) is the error w.r.t. the lower layer's cell c_t^{l-1}.
        """
        a, c, tc, low = cache
        H = c.shape[0]
        if dax is None:
            dax = np.empty_like(a)
        i, o, f, g = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H : 4 * H]
        np.multiply(dh2, tc, out=dax[H : 2 * H])
        dc = dh2 * o
        t = tc * tc
        np.subtract(1.0, t, out=t)
        dc *= t
        if dc2 is not None:
            dc += dc2
        np.multiply(dc, g, out=dax[:H])
        np.multiply(dc, c, out=dax[2 * H : 3 * H])
        np.multiply(dc, i, out=dax[3 * H : 4 * H])
        dsigmoid_(dax[: 3 * H], a[: 3 * H])
        dtanh_(dax[3 * H : 4 * H], g)
        dc_prev = dc * f
        dD = np.zeros(2 * H, dtype=a.dtype)
        dlow = None
        if low is None:  # layer 0: d multiplies c^{-1} = 0 and has no effect
            dax[4 * H :] = 0.0
        else:
            D, d = p["D"], a[4 * H :]
            da_d = np.multiply(dc, low, out=dax[4 * H :])
            dsigmoid_(da_d, d)
            dc_prev += D[:H, None] * da_d
            dlow = dc * d
            dlow += D[H:, None] * da_d
            dD[:H] = np.einsum("hb,hb->h", da_d, c)
            dD[H:] = np.einsum("hb,hb->h", da_d, low)
        dh = p["R"].T @ dax[: 4 * H]
        return dax, dh, dc_prev, dlow, dD

    def backward(
        self, p: Params, cache: Any, dh2: Array, dc2: Array | None, dax: Array | None = None
    ) -> tuple[Array, Array, Array, tuple[RecTerm, ...], dict[str, Array]]:
        """The :class:`~model.cells.base.Cell` interface: :meth:`backward_low` without ``dlow``.

        The recurrent term covers the i, o, f, c rows only (d has no row in R).
        """
        dax, dh, dc_prev, _, dD = self.backward_low(p, cache, dh2, dc2, dax)
        H = dh.shape[0]
        return dax, dh, dc_prev, ((slice(0, 4 * H), None, None),), {"D": dD}


DEPTH_GATED = DepthGatedCell()
