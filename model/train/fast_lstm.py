"""The trainer's fast path for a plain LSTM stack: loss, exact BPTT gradients and final state, batch-major.

:mod:`model.network` keeps sequences feature-major ``[F, T, B]`` so that every cell shares one driver. At the
trainer's batch shards (B = 16 rows per core) that layout pays for itself in copies: the per-step loop needs
time-major ``[T, F, B]`` slices, so the input term, the head's error and the gate errors are each transposed
once per sequence, and every step's rows are only B floats long. For ``cell="lstm"`` with a softmax head this
module runs the same network in PyTorch's batch-major layout ``[T, B, F]`` instead: ``x.reshape(T*B, F)`` is
free, so every large product is one GEMM on a free reshape (BLAS reads transposed operands in place)::

    Z   = X W^T + b            [T*B, 4H]    (layer 0: rows of the folded table E W^T + b, one per token)
    a_t = Z_t + h_{t-1} R^T    [4, B, H]    gates i, o, f, c~ (ONNX order), activations written in place
    c_t = f∘c_{t-1} + i∘c~,    h_t = o∘tanh(c_t)
    dR  = dZ^T H_prev,   dW = dZ^T X,   db = Σ dZ,   dX = dZ W        (one GEMM each, dZ [T*B, 4H])

A step's activations are gate-major ``[4, B, H]`` (NumPy's elementwise loops run 2-4x slower on the strided
column blocks of a ``[B, 4H]`` row), its recurrent product one batched GEMM per gate; the gate errors go back
into batch-major ``dZ`` so that ``dz R`` is a single GEMM again. The backward step is the cell's (see
:mod:`model.cells.lstm`): ``dc = dc' + dh∘o∘(1 - tanh²c)``, the gate errors, ``dc_prev = dc∘f`` and
``dh_prev = dz R``. Everything else follows :mod:`model.network`: the same parameters, the same loss (weighted
mean cross-entropy in nats), the same dropout masks drawn from the same generator, so for one batch both paths
agree up to float summation order (``tests/test_train_fast_lstm.py``). Every buffer comes from the thread's
:class:`~model.train.workspace.Workspace` and every elementwise op writes in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.cells.base import Array, Params
from model.config import ModelConfig
from model.network import FOLD_MAX_UNIQUE, State
from model.train.workspace import Workspace, for_this_thread


def supports(cfg: ModelConfig) -> bool:
    """True when this path computes what :func:`model.train.parallel.batch_grads` asks for ``cfg``."""
    return cfg.cell == "lstm" and cfg.token_input


@dataclass
class _Layer:
    """What the backward pass of one layer needs (all batch-major)."""

    X: Array | None  # [T*B, X] the layer's input (None when layer 0's projection was folded)
    A: Array  # [T, 4, B, H] activations i, o, f, c~
    Hs: Array  # [T+1, B, H] h_0 .. h_T
    Cs: Array  # [T+1, B, H] c_0 .. c_T
    TC: Array  # [T, B, H] tanh(c_1) .. tanh(c_T)
    mask: Array | None  # [T*B, X] dropout mask applied to X (layers above the first, when training)


def _zbuf(ws: Workspace, T: int, B: int, H: int, dt: np.dtype) -> Array:
    """The one ``T*B*4H`` buffer that holds, in turn, each layer's input terms (spent once its forward loop
    is done) and each layer's gate errors in the backward pass: a smaller working set, more of it in cache."""
    return ws.empty("Z", (T * B * 4 * H,), dt)


def _recur_forward(
    Zg: Array, R: Array, h0: Array, c0: Array, ws: Workspace, l: int
) -> tuple[Array, Array, Array, Array]:
    """The recurrence from the input terms ``Zg`` ``[T, 4, B, H]`` and ``h0``, ``c0`` ``[B, H]``.

    ``Zg`` may be a strided view (of a batch-major ``[T, B, 4H]``); a contiguous one is read faster.

    Returns ``(A, Hs, Cs, TC)``: the activations ``A`` ``[T, 4, B, H]`` (gate-major per step, so each gate
    block ``A[t, k]`` is one contiguous ``[B, H]`` run: NumPy's elementwise loops on strided column blocks of
    a ``[B, 4H]`` row cost 2-4x more), the states ``[T+1, B, H]`` from step 0 and ``tanh(c_t)`` ``[T, B, H]``.
    """
    T, _, B, H = Zg.shape
    dt = Zg.dtype
    one = np.ones((), dtype=dt)  # a 0-d operand: NumPy converts a Python float on every call
    A = ws.empty(f"A{l}", (T, 4, B, H), dt)
    Hs = ws.empty(f"Hs{l}", (T + 1, B, H), dt)
    Cs = ws.empty(f"Cs{l}", (T + 1, B, H), dt)
    TC = ws.empty(f"TC{l}", (T, B, H), dt)
    Hs[0], Cs[0] = h0, c0
    ig = ws.empty("ig", (B, H), dt)
    RT4 = ws.empty("RT4", (4, H, H), dt)  # [4, H_in, H_out]: h R_k^T per gate
    RT4[...] = R.reshape(4, H, H).transpose(0, 2, 1)
    with np.errstate(over="ignore"):  # exp(-x) -> inf for x < -88 gives σ = 1 / inf = 0, the right limit
        for t in range(T):
            a = A[t]
            np.matmul(Hs[t], RT4, out=a)
            a += Zg[t]
            s = a[:3]  # i, o, f: σ(x) = 1 / (1 + e^{-x})
            np.negative(s, out=s)
            np.exp(s, out=s)
            s += one
            np.reciprocal(s, out=s)
            i, o, f, g = a
            np.tanh(g, out=g)
            c = Cs[t + 1]
            np.multiply(f, Cs[t], out=c)
            np.multiply(i, g, out=ig)
            c += ig
            np.tanh(c, out=TC[t])
            np.multiply(o, TC[t], out=Hs[t + 1])
    return A, Hs, Cs, TC


def _recur_backward(L: _Layer, R: Array, dH: Array, ws: Workspace) -> Array:
    """BPTT through the recurrence given ``dH`` ``[T, B, H]`` (the error at each output h_t, from above).

    Returns ``dZ`` ``[T, B, 4H]``, the error at each step's gate pre-activations, batch-major so that
    ``dz R`` and every weight gradient are single GEMMs. The error at the initial state is not needed by the
    trainer (the state is detached between batches) and is not formed.
    """
    A, Cs, TC = L.A, L.Cs, L.TC
    T, _, B, H = A.shape
    dt = A.dtype
    one = np.ones((), dtype=dt)
    dZ = _zbuf(ws, T, B, H, dt).reshape(T, B, 4 * H)  # the forward's input terms are spent by now
    dh = ws.zeros("dh", (B, H), dt)
    dc = ws.zeros("dc", (B, H), dt)
    t1 = ws.empty("t1", (B, H), dt)
    D = ws.empty("D", (4, B, H), dt)  # each gate's activation derivative
    for t in range(T - 1, -1, -1):
        dh += dH[t]
        a, tc, d = A[t], TC[t], dZ[t]
        i, o, f, g = a
        np.subtract(one, a[:3], out=D[:3])  # σ' = s (1 - s)
        D[:3] *= a[:3]
        np.multiply(g, g, out=D[3])  # tanh' = 1 - c~²
        np.subtract(one, D[3], out=D[3])
        np.multiply(tc, tc, out=t1)  # dc += dh o (1 - tanh² c)
        np.subtract(one, t1, out=t1)
        t1 *= o
        t1 *= dh
        dc += t1
        np.multiply(dc, g, out=t1)  # i: dc c~ σ'
        np.multiply(t1, D[0], out=d[:, :H])
        np.multiply(dh, tc, out=t1)  # o: dh tanh(c) σ'
        np.multiply(t1, D[1], out=d[:, H : 2 * H])
        np.multiply(dc, Cs[t], out=t1)  # f: dc c_prev σ'
        np.multiply(t1, D[2], out=d[:, 2 * H : 3 * H])
        np.multiply(dc, i, out=t1)  # c~: dc i tanh'
        np.multiply(t1, D[3], out=d[:, 3 * H :])
        dc *= f  # the cell path to step t-1
        np.matmul(d, R, out=dh)
    return dZ


def batch_grads(
    cfg: ModelConfig,
    p: Params,
    x: Array,
    y: Array,
    state: State,
    weights: Array | None = None,
    dropout_rng: np.random.Generator | None = None,
) -> tuple[float, float, Params, State]:
    """:func:`model.train.parallel.batch_grads` for a token LSTM stack: ``(loss, weight_sum, grads, final_state)``.

    ``x``, ``y`` ``[B, T]`` token ids; ``state`` per layer ``(h [B, H], c [B, H])``; ``weights`` ``[B, T]``.
    """
    if not supports(cfg):
        raise ValueError(f"cell: the fast path runs token LSTM stacks only, not {cfg.cell!r}")
    B, T = x.shape
    H, dt = cfg.hidden, p["head/W"].dtype
    ws = for_this_thread()
    ids = np.asarray(x).T  # [T, B]
    u, inv = np.unique(ids, return_inverse=True)
    inv = inv.reshape(-1)
    fold = len(u) <= FOLD_MAX_UNIQUE
    layers: list[_Layer] = []
    X: Array | None = None if fold else p["embed"][ids.reshape(-1)]  # [T*B, E]
    for l in range(cfg.layers):
        W, b, R = p[f"layer{l}/W"], p[f"layer{l}/b"], p[f"layer{l}/R"]
        mask = None
        if l == 0 and fold:
            table = p["embed"][u] @ W.T  # [U, 4H]: the embedding folded into the input projection
            table += b
            # gathered straight into the gate-major layout: Zg[t, k, b] = table[id(t, b), block k]
            rows4 = inv.reshape(T, 1, B) * 4 + np.arange(4).reshape(1, 4, 1)
            Zg = np.take(table.reshape(-1, H), rows4, axis=0, out=_zbuf(ws, T, B, H, dt).reshape(T, 4, B, H))
        else:
            assert X is not None
            if l > 0 and dropout_rng is not None and cfg.dropout > 0:
                keep = 1.0 - cfg.dropout
                # drawn in network.forward's layout and order, so both paths drop the same units
                u01 = dropout_rng.random((H, T, B), out=ws.empty("u01", (H, T, B), np.float64))
                drawn = np.less(u01, keep, out=ws.empty("drawn", (H, T, B), np.bool_))
                mask = ws.empty(f"mask{l}", (T, B, H), dt)
                np.divide(drawn.transpose(1, 2, 0), dt.type(keep), out=mask)
                mask = mask.reshape(T * B, H)
                X = np.multiply(X, mask, out=ws.empty(f"X{l}", X.shape, dt))
            Z = np.matmul(X, W.T, out=_zbuf(ws, T, B, H, dt).reshape(T * B, 4 * H))
            Z += b
            Zg = Z.reshape(T, B, 4, H).transpose(0, 2, 1, 3)
        h0, c0 = state[l]
        assert c0 is not None
        A, Hs, Cs, TC = _recur_forward(Zg, R, h0, c0, ws, l)
        layers.append(_Layer(X, A, Hs, Cs, TC, mask))
        X = Hs[1:].reshape(T * B, H)
    assert X is not None
    logits = np.matmul(X, p["head/W"].T, out=ws.empty("logits", (T * B, cfg.vocab_size), dt))
    logits += p["head/b"]
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits, out=ws.empty("e", logits.shape, dt))
    se = e.sum(axis=1)
    yv = np.asarray(y).T.reshape(-1)
    rows = np.arange(T * B)
    w = np.ones(T * B, dtype=dt) if weights is None else np.asarray(weights, dtype=dt).T.reshape(-1)
    wsum = float(w.sum())
    if wsum <= 0:
        raise ValueError("weights: the batch has no position with a positive weight")
    nll = np.log(se) - logits[rows, yv]
    loss = float((nll * w).sum()) / wsum
    dout = e
    dout /= se[:, None]
    dout[rows, yv] -= 1.0
    dout *= (w / dt.type(wsum))[:, None]
    grads: Params = {"head/W": dout.T @ X, "head/b": dout.sum(axis=0)}
    dX = np.matmul(dout, p["head/W"], out=ws.empty("dX", (T * B, H), dt))
    for l in range(cfg.layers - 1, -1, -1):
        L = layers[l]
        W, R = p[f"layer{l}/W"], p[f"layer{l}/R"]
        dZ = _recur_backward(L, R, dX.reshape(T, B, H), ws).reshape(T * B, -1)
        grads[f"layer{l}/R"] = dZ.T @ L.Hs[:T].reshape(T * B, H)
        if L.X is None:  # folded: the table's error sums dZ over each id's positions
            onehot = ws.empty("onehot", (FOLD_MAX_UNIQUE, T * B), dt)[: len(u)]
            onehot.fill(0)
            onehot[inv, rows] = 1.0
            dtable = onehot @ dZ  # [U, 4H]
            grads["layer0/W"] = dtable.T @ p["embed"][u]
            grads["layer0/b"] = dtable.sum(axis=0)
            dE = np.zeros_like(p["embed"])
            dE[u] = dtable @ W
            grads["embed"] = dE
            continue
        grads[f"layer{l}/W"] = dZ.T @ L.X
        grads[f"layer{l}/b"] = dZ.sum(axis=0)
        dX = np.matmul(dZ, W, out=ws.empty(f"dX{l}", (T * B, W.shape[1]), dt))
        if L.mask is not None:
            dX *= L.mask
        if l == 0:
            dE = np.zeros_like(p["embed"])
            np.add.at(dE, ids.reshape(-1), dX)
            grads["embed"] = dE
    final: State = [(L.Hs[T].copy(), L.Cs[T].copy()) for L in layers]
    return loss, wsum, {k: grads[k] for k in p}, final
