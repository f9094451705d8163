"""FGR, full gate recurrence (Greff et al. 2015): the peephole LSTM whose gates also see every gate's previous
activation. Column vectors, batch last: x is ``[X, B]``, h ``[H, B]``; ``ax = W x + b`` is ``[4H, B]``, precomputed
by the layer driver.

The recurrent state carries the previous gate activations, so the second state tensor is wider than an LSTM's:
``c`` is ``[4H, B]`` = ``[c; i; o; f]`` (rows 0:H the memory cell, then the gates of the previous step in ONNX
order i, o, f; all zero in the zero state). Writing ``g = [i; o; f]_{t-1}`` (``[3H, B]``)::

    i  = σ(ax_i + R_i h + P_i∘c  + Rg_i g)
    f  = σ(ax_f + R_f h + P_f∘c  + Rg_f g)
    c~ = tanh(ax_c + R_c h)                           (the candidate does not see g)
    c' = f∘c + i∘c~
    o  = σ(ax_o + R_o h + P_o∘c' + Rg_o g)           (the output peephole sees the new cell, as in peephole)
    h' = o∘tanh(c')
    state' = [c'; i; o; f]

Parameters: the peephole LSTM's ``W [4H, X]``, ``R [4H, H]``, ``b [4H]`` (blocks i, o, f, c), ``P [3H]``
(i, o, f) and the gate recurrence ``Rg [3H, 3H]`` (rows: the gates i, o, f receiving; columns: the previous
i, o, f). Greff et al.'s "9 additional recurrent matrices" are Rg's 3 x 3 blocks.

Backward, given dh' and the state error ``[dc'; dg']`` (dg' = the errors at i, o, f arriving from step t+1
through Rg)::

    da_o = (dh'∘tanh(c') + dg'_o)∘o∘(1-o)
    dc   = dc' + dh'∘o∘(1 - tanh²(c')) + P_o∘da_o
    da_i = (dc∘c~ + dg'_i)∘i∘(1-i);  da_f = (dc∘c + dg'_f)∘f∘(1-f);  da_c = dc∘i∘(1 - c~²)
    dc_prev = dc∘f + P_i∘da_i + P_f∘da_f
    dg_prev = Rg^T da_iof;   dh_prev = R^T da;   dRg = Σ_t da_iof g^T
    dP = Σ_batch [da_i∘c, da_o∘c', da_f∘c]

Initialisation as the peephole LSTM (W, R ~ U(±1/sqrt(H)), b_f = ``forget_bias``, P = 0), and
Rg ~ U(±1/sqrt(3H)) (its fan-in is 3H).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.cells.base import Array, Params, RecTerm, uniform_init
from model.nonlin import dsigmoid_, dtanh_, sigmoid_, tanh_


@dataclass(frozen=True)
class FGRCell:
    name: str = "fgr"
    G: int = 4
    has_c: bool = True

    def c_width(self, H: int) -> int:
        """The state ``[c; i; o; f]``: 4H rows."""
        return 4 * H

    def shapes(self, X: int, H: int) -> dict[str, tuple[int, ...]]:
        return {"W": (4 * H, X), "R": (4 * H, H), "b": (4 * H,), "P": (3 * H,), "Rg": (3 * H, 3 * H)}

    def init(self, X: int, H: int, rng: np.random.Generator, forget_bias: float, dtype: Any) -> Params:
        W, R, b = uniform_init(X, H, 4, rng, dtype)
        b[2 * H : 3 * H] = forget_bias
        s = 1.0 / np.sqrt(3 * H)
        Rg = rng.uniform(-s, s, size=(3 * H, 3 * H)).astype(dtype)
        return {"W": W, "R": R, "b": b, "P": np.zeros(3 * H, dtype=dtype), "Rg": Rg}

    def forward(
        self, p: Params, ax: Array, h: Array, c: Array | None, a: Array | None = None
    ) -> tuple[Array, Array, Any]:
        """One step. ax ``[4H, B]``, h ``[H, B]``, c ``[4H, B]`` -> h' ``[H, B]``, c' ``[4H, B]``, cache."""
        assert c is not None
        H = h.shape[0]
        cm, g = c[:H], c[H:]
        P = p["P"]
        if a is None:
            a = np.empty_like(ax)
        np.matmul(p["R"], h, out=a)
        a += ax
        a[: 3 * H] += p["Rg"] @ g
        i, o, f, gg = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
        i += P[:H, None] * cm
        f += P[2 * H :, None] * cm
        sigmoid_(i)
        sigmoid_(f)
        tanh_(gg)
        c2 = f * cm
        c2 += i * gg
        o += P[H : 2 * H, None] * c2
        sigmoid_(o)
        tc = np.tanh(c2)
        h2 = o * tc
        state = np.concatenate([c2, a[: 3 * H]])
        return h2, state, (a, cm, g, c2, tc)

    def backward(
        self, p: Params, cache: Any, dh2: Array, dc2: Array | None, dax: Array | None = None
    ) -> tuple[Array, Array, Array, tuple[RecTerm, ...], dict[str, Array]]:
        """Backprop one step: dh' ``[H, B]``, d state' ``[4H, B]`` -> dax ``[4H, B]``, dh ``[H, B]``,
        d state ``[4H, B]``, R terms, P and Rg gradients."""
        a, cm, g, c2, tc = cache
        H = cm.shape[0]
        P = p["P"]
        if dax is None:
            dax = np.empty_like(a)
        i, o, f, gg = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
        da_i, da_o, da_f, da_c = dax[:H], dax[H : 2 * H], dax[2 * H : 3 * H], dax[3 * H :]
        # the error at o (upstream of its sigmoid), then the cell error dc, which o's peephole feeds
        np.multiply(dh2, tc, out=da_o)
        if dc2 is not None:
            da_o += dc2[2 * H : 3 * H]
        dsigmoid_(da_o, o)
        dc = dh2 * o
        t = tc * tc
        np.subtract(1.0, t, out=t)
        dc *= t
        dc += P[H : 2 * H, None] * da_o
        if dc2 is not None:
            dc += dc2[:H]
        # errors at i, f (plus what the next step's gates sent back through Rg), and at c~
        np.multiply(dc, gg, out=da_i)
        np.multiply(dc, cm, out=da_f)
        if dc2 is not None:
            da_i += dc2[H : 2 * H]
            da_f += dc2[3 * H :]
        dsigmoid_(da_i, i)
        dsigmoid_(da_f, f)
        np.multiply(dc, i, out=da_c)
        dtanh_(da_c, gg)
        dstate = np.empty((4 * H, a.shape[1]), dtype=a.dtype)
        dcm = dstate[:H]
        np.multiply(dc, f, out=dcm)
        dcm += P[:H, None] * da_i
        dcm += P[2 * H :, None] * da_f
        Rg = p["Rg"]
        np.matmul(Rg.T, dax[: 3 * H], out=dstate[H:])
        dP = np.empty(3 * H, dtype=a.dtype)
        dP[:H] = np.einsum("hb,hb->h", da_i, cm)
        dP[H : 2 * H] = np.einsum("hb,hb->h", da_o, c2)
        dP[2 * H :] = np.einsum("hb,hb->h", da_f, cm)
        dRg = dax[: 3 * H] @ g.T  # per step: Rg's operand g is not h_prev, so it cannot ride in the R terms
        dh = p["R"].T @ dax
        return dax, dh, dstate, ((slice(None), None, None),), {"P": dP, "Rg": dRg}


FGR = FGRCell()
