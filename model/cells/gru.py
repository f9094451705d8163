"""GRU in both reset forms, in the ONNX layout and gate order z, r, h. Column vectors, batch last.

Update-gate convention (ONNX and PyTorch; the tutorial writes the mirror image with z and 1-z swapped)::

    h' = (1 - z)∘h~ + z∘h          z -> 1 keeps the old state

``gru`` (the tutorial's form, ONNX ``linear_before_reset=0``): the reset gate acts before the recurrent matmul::

    z  = σ(ax_z + R_z h)
    r  = σ(ax_r + R_r h)
    h~ = tanh(ax_h + R_h (r∘h))

``gru-lbr`` (PyTorch/cuDNN form, ``linear_before_reset=1``): the reset gate scales the recurrent term, which has
its own bias ``Rb`` ``[H]`` (ONNX's Rb_h; the other recurrent biases are folded into b)::

    u  = R_h h + Rb
    h~ = tanh(ax_h + r∘u)

No weight mapping turns one form into the other. Backward (both forms)::

    da_z = dh'∘(h - h~)∘z∘(1-z)
    da_h = dh'∘(1-z)∘(1 - h~²)
    gru:     d(rh) = R_h^T da_h;  da_r = d(rh)∘h∘r∘(1-r);  dh = dh'∘z + d(rh)∘r + R_zr^T da_zr
    gru-lbr: du = da_h∘r;  da_r = da_h∘u∘r∘(1-r);  dh = dh'∘z + R^T [da_z; da_r; du];  dRb = Σ_b du

Initialisation: W, R ~ U(±1/sqrt(H)), b = 0, Rb = 0. ``forget_bias`` does not apply (a GRU has no forget gate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.cells.base import Array, Params, RecTerm, uniform_init
from model.nonlin import dsigmoid, dtanh, sigmoid_, tanh_


@dataclass(frozen=True)
class GRUCell:
    name: str
    linear_before_reset: bool = False
    G: int = 3
    has_c: bool = False

    def c_width(self, H: int) -> int:
        """No c: the state is h alone."""
        return 0

    def shapes(self, X: int, H: int) -> dict[str, tuple[int, ...]]:
        s: dict[str, tuple[int, ...]] = {"W": (3 * H, X), "R": (3 * H, H), "b": (3 * H,)}
        if self.linear_before_reset:
            s["Rb"] = (H,)
        return s

    def init(self, X: int, H: int, rng: np.random.Generator, forget_bias: float, dtype: Any) -> Params:
        W, R, b = uniform_init(X, H, 3, rng, dtype)
        p: Params = {"W": W, "R": R, "b": b}
        if self.linear_before_reset:
            p["Rb"] = np.zeros(H, dtype=dtype)
        return p

    def forward(
        self, p: Params, ax: Array, h: Array, c: Array | None, a: Array | None = None
    ) -> tuple[Array, None, Any]:
        """One step. ax ``[3H, B]``, h ``[H, B]`` -> h' ``[H, B]``, None, cache."""
        H = h.shape[0]
        R = p["R"]
        if a is None:
            a = np.empty_like(ax)
        zr, hh = a[: 2 * H], a[2 * H :]
        if self.linear_before_reset:
            np.matmul(R, h, out=a)
            u = hh + p["Rb"][:, None]
            zr += ax[: 2 * H]
            sigmoid_(zr)
            np.multiply(a[H : 2 * H], u, out=hh)
            hh += ax[2 * H :]
            extra = u
        else:
            np.matmul(R[: 2 * H], h, out=zr)
            zr += ax[: 2 * H]
            sigmoid_(zr)
            rh = a[H : 2 * H] * h
            np.matmul(R[2 * H :], rh, out=hh)
            hh += ax[2 * H :]
            extra = rh
        tanh_(hh)
        h2 = h - hh  # h' = h~ + z (h - h~)
        h2 *= a[:H]
        h2 += hh
        return h2, None, (a, h, extra)

    def backward(
        self, p: Params, cache: Any, dh2: Array, dc2: Array | None, dax: Array | None = None
    ) -> tuple[Array, Array, None, tuple[RecTerm, ...], dict[str, Array]]:
        """Backprop one step: dh' ``[H, B]`` -> dax ``[3H, B]``, dh ``[H, B]``, None, R terms, Rb grad."""
        a, h, extra = cache
        H = h.shape[0]
        R = p["R"]
        z, r, hh = a[:H], a[H : 2 * H], a[2 * H :]
        if dax is None:
            dax = np.empty_like(a)
        tmp = h - hh
        tmp *= dh2
        dsigmoid(tmp, z, out=dax[:H])
        np.subtract(1.0, z, out=tmp)
        tmp *= dh2
        da_h = dtanh(tmp, hh, out=dax[2 * H :])
        dh = dh2 * z
        if self.linear_before_reset:
            u = extra
            np.multiply(da_h, u, out=tmp)
            dsigmoid(tmp, r, out=dax[H : 2 * H])
            drec = dax.copy()
            du = drec[2 * H :]
            du *= r
            dh += R.T @ drec
            return dax, dh, None, ((slice(None), drec, None),), {"Rb": du.sum(axis=1)}
        rh = extra
        drh = R[2 * H :].T @ da_h
        np.multiply(drh, h, out=tmp)
        dsigmoid(tmp, r, out=dax[H : 2 * H])
        drh *= r
        dh += drh
        dh += R[: 2 * H].T @ dax[: 2 * H]
        return dax, dh, None, ((slice(0, 2 * H), None, None), (slice(2 * H, 3 * H), None, rh)), {}


GRU = GRUCell("gru")
GRU_LBR = GRUCell("gru-lbr", linear_before_reset=True)
