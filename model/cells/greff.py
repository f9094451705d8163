"""Greff et al. (2015) ablations of the peephole LSTM: one component removed from Greff's "vanilla" cell.

``nig`` no input gate (i = 1), ``nfg`` no forget gate (f = 1), ``nog`` no output gate (o = 1), ``niaf`` no input
activation (c~ is the pre-activation itself), ``noaf`` no output activation (h' = o∘c'). All keep peepholes.
Column vectors, batch last: h and c are ``[H, B]``; ``ax = W x + b`` is ``[G*H, B]``, precomputed by the driver.

Parameter layout: the peephole LSTM's (:mod:`model.cells.lstm`) with the removed gate's parts left out, like
CIFG drops its f block. The remaining gate blocks of W ``[G*H, X]``, R ``[G*H, H]``, b ``[G*H]`` keep the ONNX
order i, o, f, c, and the remaining peephole vectors of P keep the ONNX order i, o, f::

    cell   blocks (G)      P
    nig    o, f, c  (3)    o, f  [2H]
    nfg    i, o, c  (3)    i, o  [2H]
    nog    i, f, c  (3)    i, f  [2H]
    niaf   i, o, f, c (4)  i, o, f  [3H]
    noaf   i, o, f, c (4)  i, o, f  [3H]

Forward (σ the logistic sigmoid, ∘ the elementwise product; a removed gate is the constant 1)::

    i  = σ(ax_i + R_i h + P_i∘c)                  nig: i = 1
    f  = σ(ax_f + R_f h + P_f∘c)                  nfg: f = 1
    c~ = tanh(ax_c + R_c h)                       niaf: c~ = ax_c + R_c h
    c' = f∘c + i∘c~
    o  = σ(ax_o + R_o h + P_o∘c')                 nog: o = 1
    h' = o∘tanh(c')                               noaf: h' = o∘c'

Backward, given dh' and dc' (φ the output activation, φ' = 1 - tanh²(c') or 1; terms of a removed gate vanish)::

    da_o = dh'∘φ(c')∘o∘(1-o)
    dc   = dc' + dh'∘o∘φ'(c') + P_o∘da_o
    da_i = dc∘c~∘i∘(1-i)
    da_f = dc∘c∘f∘(1-f)
    da_c = dc∘i∘(1 - c~²)                         niaf: dc∘i
    dc_prev = dc∘f + P_i∘da_i + P_f∘da_f
    dh_prev = R^T da
    dP_g = Σ_batch da_g∘c  (g = i, f),   dP_o = Σ_batch da_o∘c'

Initialisation as the peephole LSTM: W, R ~ U(±1/sqrt(H)), b = 0 except the forget block b_f = ``forget_bias``,
P = 0. ``nfg`` has no forget gate (f = 1: the cell never forgets), so ``forget_bias`` does not apply to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.cells.base import Array, Params, RecTerm, uniform_init
from model.nonlin import dsigmoid_, dtanh_, sigmoid_, tanh_


@dataclass(frozen=True)
class GreffCell:
    """A peephole LSTM without gate ``without`` (``"i"``, ``"f"``, ``"o"`` or ``""``) and with or without the
    input (``c~``) and output (``h'``) tanh. With nothing removed it is the ``peephole`` cell."""

    name: str
    without: str = ""
    input_act: bool = True
    output_act: bool = True
    has_c: bool = True

    @property
    def gates(self) -> str:
        """The gate blocks of W, R and b in order, e.g. ``"ofc"`` for ``nig``."""
        return "".join(g for g in "iofc" if g != self.without)

    @property
    def peepholes(self) -> str:
        """The gates that own a peephole vector in P, in order, e.g. ``"of"`` for ``nig``."""
        return "".join(g for g in "iof" if g != self.without)

    @property
    def G(self) -> int:
        return len(self.gates)

    def c_width(self, H: int) -> int:
        """The memory cell c is ``[H, B]``."""
        return H

    def shapes(self, X: int, H: int) -> dict[str, tuple[int, ...]]:
        G = self.G
        return {"W": (G * H, X), "R": (G * H, H), "b": (G * H,), "P": (len(self.peepholes) * H,)}

    def init(self, X: int, H: int, rng: np.random.Generator, forget_bias: float, dtype: Any) -> Params:
        W, R, b = uniform_init(X, H, self.G, rng, dtype)
        if "f" in self.gates:
            k = self.gates.index("f")
            b[k * H : (k + 1) * H] = forget_bias
        return {"W": W, "R": R, "b": b, "P": np.zeros(len(self.peepholes) * H, dtype=dtype)}

    def _rows(self, H: int) -> tuple[dict[str, slice], dict[str, slice]]:
        """Row slices of each gate block in ``a`` ``[G*H, B]`` and of each peephole vector in P."""
        blk = {g: slice(k * H, (k + 1) * H) for k, g in enumerate(self.gates)}
        peep = {g: slice(k * H, (k + 1) * H) for k, g in enumerate(self.peepholes)}
        return blk, peep

    def forward(
        self, p: Params, ax: Array, h: Array, c: Array | None, a: Array | None = None
    ) -> tuple[Array, Array, Any]:
        """One step. ax ``[G*H, B]``, h, c ``[H, B]`` -> h', c' ``[H, B]``, cache."""
        assert c is not None
        H = h.shape[0]
        blk, peep = self._rows(H)
        P = p["P"]
        if a is None:
            a = np.empty_like(ax)
        np.matmul(p["R"], h, out=a)
        a += ax
        for gate in "if":  # i and f see the old cell
            if gate in blk:
                a[blk[gate]] += P[peep[gate], None] * c
                sigmoid_(a[blk[gate]])
        g = a[blk["c"]]
        if self.input_act:
            tanh_(g)
        c2 = a[blk["f"]] * c if "f" in blk else c.copy()
        c2 += a[blk["i"]] * g if "i" in blk else g
        tc = np.tanh(c2) if self.output_act else c2  # φ(c')
        if "o" in blk:  # the output gate sees the new cell
            o = a[blk["o"]]
            o += P[peep["o"], None] * c2
            sigmoid_(o)
            h2 = o * tc
        else:
            h2 = tc.copy()
        return h2, c2, (a, c, c2, tc)

    def backward(
        self, p: Params, cache: Any, dh2: Array, dc2: Array | None, dax: Array | None = None
    ) -> tuple[Array, Array, Array, tuple[RecTerm, ...], dict[str, Array]]:
        """Backprop one step: dh', dc' ``[H, B]`` -> dax ``[G*H, B]``, dh, dc ``[H, B]``, R terms, P grad."""
        a, c, c2, tc = cache
        H = c.shape[0]
        blk, peep = self._rows(H)
        P = p["P"]
        if dax is None:
            dax = np.empty_like(a)
        dP = np.empty(P.shape[0], dtype=a.dtype)
        # the cell error dc: through h' = o∘φ(c'), then through the o peephole
        dc = dh2 * a[blk["o"]] if "o" in blk else dh2.copy()
        if self.output_act:
            dtanh_(dc, tc)
        if dc2 is not None:
            dc += dc2
        if "o" in blk:
            da_o = np.multiply(dh2, tc, out=dax[blk["o"]])
            dsigmoid_(da_o, a[blk["o"]])
            dc += P[peep["o"], None] * da_o
            dP[peep["o"]] = np.einsum("hb,hb->h", da_o, c2)
        g = a[blk["c"]]
        dc_prev = dc * a[blk["f"]] if "f" in blk else dc.copy()
        for gate, operand in (("i", g), ("f", c)):  # da_i = dc∘c~∘σ', da_f = dc∘c∘σ'
            if gate in blk:
                d = np.multiply(dc, operand, out=dax[blk[gate]])
                dsigmoid_(d, a[blk[gate]])
                dc_prev += P[peep[gate], None] * d
                dP[peep[gate]] = np.einsum("hb,hb->h", d, c)
        da_c = dax[blk["c"]]
        if "i" in blk:
            np.multiply(dc, a[blk["i"]], out=da_c)
        else:
            da_c[...] = dc
        if self.input_act:
            dtanh_(da_c, g)
        dh = p["R"].T @ dax
        return dax, dh, dc_prev, ((slice(None), None, None),), {"P": dP}


NIG = GreffCell("nig", without="i")
NFG = GreffCell("nfg", without="f")
NOG = GreffCell("nog", without="o")
NIAF = GreffCell("niaf", input_act=False)
NOAF = GreffCell("noaf", output_act=False)

#: The five variants by ``--cell`` name.
GREFF_CELLS: dict[str, GreffCell] = {c.name: c for c in (NIG, NFG, NOG, NIAF, NOAF)}
