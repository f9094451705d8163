"""The LSTM family: the tutorial's LSTM, peephole LSTM and CIFG, in the ONNX layout and gate order.

Gate blocks in ONNX order i, o, f, c (CIFG has no f block: i, o, c). Column vectors, batch last: x is
``[X, B]``, h and c are ``[H, B]``; ``ax = W x + b`` is ``[G*H, B]`` and precomputed by the layer driver.

Forward (σ the logistic sigmoid, ∘ the elementwise product)::

    i  = σ(ax_i + R_i h + P_i∘c)          (P terms only with peepholes)
    f  = σ(ax_f + R_f h + P_f∘c)          (CIFG: f = 1 - i)
    c~ = tanh(ax_c + R_c h)
    c' = f∘c + i∘c~
    o  = σ(ax_o + R_o h + P_o∘c')         (the output peephole sees the *new* cell, Gers & Schmidhuber 2000)
    h' = o∘tanh(c')

Backward, given dh' and dc' (the error arriving from step t+1 through the cell path)::

    da_o = dh'∘tanh(c')∘o∘(1-o)
    dc   = dc' + dh'∘o∘(1 - tanh²(c')) [+ P_o∘da_o]
    da_c = dc∘i∘(1 - c~²)
    da_i = dc∘c~∘i∘(1-i)                  (CIFG: dc∘(c~ - c)∘i∘(1-i), since f = 1 - i)
    da_f = dc∘c∘f∘(1-f)
    dc_prev = dc∘f [+ P_i∘da_i + P_f∘da_f]   <- the cell-state path the tutorial's reference code drops
    dh_prev = R^T da

Peephole vectors P are ``[3H]`` in ONNX order i, o, f. Initialisation: W, R ~ U(±1/sqrt(H)), b = 0 except the
forget block b_f = ``forget_bias`` (Jozefowicz et al. 2015 recommend +1), P = 0. CIFG has no forget gate and so
no forget bias; its i block starts at -``forget_bias`` so that f = 1 - i starts as open as the LSTM's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.cells.base import Array, Params, RecTerm, uniform_init
from model.nonlin import dsigmoid_, dtanh_, sigmoid_, tanh_


@dataclass(frozen=True)
class LSTMCell:
    name: str
    peephole: bool = False
    cifg: bool = False
    has_c: bool = True

    @property
    def G(self) -> int:
        return 3 if self.cifg else 4

    def c_width(self, H: int) -> int:
        """The memory cell c is ``[H, B]``."""
        return H

    def shapes(self, X: int, H: int) -> dict[str, tuple[int, ...]]:
        s: dict[str, tuple[int, ...]] = {"W": (self.G * H, X), "R": (self.G * H, H), "b": (self.G * H,)}
        if self.peephole:
            s["P"] = (3 * H,)
        return s

    def init(self, X: int, H: int, rng: np.random.Generator, forget_bias: float, dtype: Any) -> Params:
        W, R, b = uniform_init(X, H, self.G, rng, dtype)
        if self.cifg:
            b[0:H] = -forget_bias
        else:
            b[2 * H : 3 * H] = forget_bias
        p: Params = {"W": W, "R": R, "b": b}
        if self.peephole:
            p["P"] = np.zeros(3 * H, dtype=dtype)
        return p

    def forward(
        self, p: Params, ax: Array, h: Array, c: Array | None, a: Array | None = None
    ) -> tuple[Array, Array, Any]:
        """One step. ax ``[G*H, B]``, h, c ``[H, B]`` -> h', c' ``[H, B]``, cache."""
        assert c is not None
        H = h.shape[0]
        if a is None:
            a = np.empty_like(ax)
        np.matmul(p["R"], h, out=a)
        a += ax
        if self.cifg:  # blocks i, o, c~
            i, o, g = a[:H], a[H : 2 * H], a[2 * H :]
            sigmoid_(a[: 2 * H])
            tanh_(g)
            c2 = g - c  # c' = (1 - i) c + i c~ = c + i (c~ - c)
            c2 *= i
            c2 += c
        else:  # blocks i, o, f, c~
            i, o, f, g = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
            if self.peephole:
                P = p["P"]
                i += P[:H, None] * c
                f += P[2 * H :, None] * c
                sigmoid_(i)
                sigmoid_(f)
            else:
                sigmoid_(a[: 3 * H])
            tanh_(g)
            c2 = f * c
            c2 += i * g
        if self.peephole:
            o += p["P"][H : 2 * H, None] * c2
            sigmoid_(o)
        tc = np.tanh(c2)
        h2 = o * tc
        return h2, c2, (a, c, c2, tc)

    def backward(
        self, p: Params, cache: Any, dh2: Array, dc2: Array | None, dax: Array | None = None
    ) -> tuple[Array, Array, Array, tuple[RecTerm, ...], dict[str, Array]]:
        """Backprop one step: dh', dc' ``[H, B]`` -> dax ``[G*H, B]``, dh, dc ``[H, B]``, R terms, P grad.

        The errors arriving at each gate output are written into their ``dax`` blocks first; the activation
        derivatives are then applied over the contiguous sigmoid blocks at once (fewer, larger kernels).
        """
        a, c, c2, tc = cache
        H = c.shape[0]
        S = 2 * H if self.cifg else 3 * H  # rows of the sigmoid gates (i, o[, f])
        gb = slice(S, S + H)  # the candidate block
        if dax is None:
            dax = np.empty_like(a)
        i, o, g = a[:H], a[H : 2 * H], a[gb]
        # error at o (upstream of its sigmoid) and the cell error dc
        np.multiply(dh2, tc, out=dax[H : 2 * H])
        dc = dh2 * o
        t = tc * tc
        np.subtract(1.0, t, out=t)
        dc *= t
        if dc2 is not None:
            dc += dc2
        vec: dict[str, Array] = {}
        if self.peephole:  # o sees c': its error flows into dc before the other gates read it
            P = p["P"]
            da_o = dsigmoid_(dax[H : 2 * H], o)
            dc += P[H : 2 * H, None] * da_o
            dP = np.empty(3 * H, dtype=a.dtype)
            dP[H : 2 * H] = np.einsum("hb,hb->h", da_o, c2)
            vec["P"] = dP
        # errors at i, f, c~ (upstream of their activations)
        if self.cifg:
            np.subtract(g, c, out=dax[:H])  # f = 1 - i: dL/di = dc (c~ - c)
            dax[:H] *= dc
        else:
            np.multiply(dc, g, out=dax[:H])
            np.multiply(dc, c, out=dax[2 * H : 3 * H])
        np.multiply(dc, i, out=dax[gb])
        # activation derivatives: σ' = s (1 - s) over the sigmoid rows, tanh' = 1 - c~² over the candidate
        if self.peephole:
            dsigmoid_(dax[:H], i)
            dsigmoid_(dax[2 * H : 3 * H], a[2 * H : 3 * H])
        else:
            dsigmoid_(dax[:S], a[:S])
        dtanh_(dax[gb], g)
        dc_prev = dc - dc * i if self.cifg else dc * a[2 * H : 3 * H]
        if self.peephole:
            P = p["P"]
            dc_prev += P[:H, None] * dax[:H]
            dc_prev += P[2 * H :, None] * dax[2 * H : 3 * H]
            dP[:H] = np.einsum("hb,hb->h", dax[:H], c)
            dP[2 * H :] = np.einsum("hb,hb->h", dax[2 * H : 3 * H], c)
        dh = p["R"].T @ dax
        return dax, dh, dc_prev, ((slice(None), None, None),), vec


LSTM = LSTMCell("lstm")
PEEPHOLE = LSTMCell("peephole", peephole=True)
CIFG = LSTMCell("cifg", cifg=True)
