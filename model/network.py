"""The network: embedding (or real-valued input), L stacked recurrent layers, a linear head, and its loss.

Parameters are a flat dict in the ONNX operator layouts (nothing is permuted at export)::

    embed          [V, E]          token models only
    layer{l}/W     [G*H, X_l]      X_0 = E (or input_dim), X_l = H for l > 0
    layer{l}/R     [G*H, H]
    layer{l}/b     [G*H]
    layer{l}/P     [3H]            peephole only (ONNX order i, o, f)
    layer{l}/Rb    [H]             gru-lbr only (recurrent candidate bias)
    layer{l}/Rg    [3H, 3H]        fgr only (gate recurrence: gates i, o, f see the previous i, o, f)
    layer{l}/D     [2H]            depth-gated only (w_cd, w_ld; its R is [4H, H]: d has no recurrent rows)
    head/W         [V or O, H]     logits = head/W h + head/b (a Gemm with transB=1)
    head/b         [V or O]

The public state layout is ONNX's: a list, one ``(h, c)`` per layer, ``h`` ``[B, H]`` and ``c`` ``[B, C]`` with
C = ``cfg.c_width`` (H for the LSTM family; 4H for fgr, ``[c; i; o; f]``; 1 for clockwork, its step counter;
``c`` is None for GRU and RNN). Internally sequences are feature-major ``[F, T, B]`` (see :mod:`model.layer`).
Depth-gated layers also hand their cell sequence up and its gradient down (see :mod:`model.layer_depth`).

Loss: softmax head, weighted mean next-token cross-entropy in nats,
``L = -Σ_{t,b} w_tb log softmax(z_tb)[y_tb] / Σ w``; mse head, ``L = Σ w_tb ||y_tb - ŷ_tb||² / (O Σ w)``.
Dropout (inverted, probability ``cfg.dropout``) acts on the activations between layers while training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.cells import get_cell
from model.cells.base import Array, Params
from model.config import ModelConfig
from model.layer import LayerCache, layer_backward, layer_forward, recur_backward, recur_forward

State = list[tuple[Array, Array | None]]

#: Fold the embedding into layer 0's input projection when a batch has at most this many distinct tokens.
FOLD_MAX_UNIQUE = 256


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every parameter of ``cfg``, in a fixed order."""
    cell = get_cell(cfg.cell)
    shapes: dict[str, tuple[int, ...]] = {}
    X = cfg.embed if cfg.token_input else cfg.input_dim
    if cfg.token_input:
        shapes["embed"] = (cfg.vocab_size, cfg.embed)
    for l in range(cfg.layers):
        for k, s in cell.shapes(X, cfg.hidden).items():
            shapes[f"layer{l}/{k}"] = s
        X = cfg.hidden
    out = cfg.vocab_size if cfg.token_input else cfg.output_dim
    shapes["head/W"] = (out, cfg.hidden)
    shapes["head/b"] = (out,)
    return shapes


def init_params(cfg: ModelConfig, rng: np.random.Generator, dtype: Any = np.float32) -> Params:
    """Fresh parameters: each cell's own init (see its module), embedding ~ N(0, 1), head ~ U(±1/sqrt(H))."""
    cell = get_cell(cfg.cell)
    p: Params = {}
    X = cfg.embed if cfg.token_input else cfg.input_dim
    if cfg.token_input:
        p["embed"] = rng.standard_normal((cfg.vocab_size, cfg.embed)).astype(dtype)
    for l in range(cfg.layers):
        for k, v in cell.init(X, cfg.hidden, rng, cfg.forget_bias, dtype).items():
            p[f"layer{l}/{k}"] = v
        X = cfg.hidden
    out = cfg.vocab_size if cfg.token_input else cfg.output_dim
    s = 1.0 / np.sqrt(cfg.hidden)
    p["head/W"] = rng.uniform(-s, s, size=(out, cfg.hidden)).astype(dtype)
    p["head/b"] = np.zeros(out, dtype=dtype)
    return p


def zero_state(cfg: ModelConfig, batch: int, dtype: Any = np.float32) -> State:
    """All-zero initial state: per layer ``(h [B, H], c [B, C] or None)``, C = ``cfg.c_width``."""
    H, C = cfg.hidden, cfg.c_width

    def zeros(width: int) -> Array:
        return np.zeros((batch, width), dtype=dtype)

    return [(zeros(H), zeros(C) if C else None) for _ in range(cfg.layers)]


def layer_params(p: Params, l: int) -> Params:
    prefix = f"layer{l}/"
    return {k[len(prefix) :]: v for k, v in p.items() if k.startswith(prefix)}


@dataclass
class Forward:
    """The result of :func:`forward`: head outputs ``[O, T, B]`` and what backward needs."""

    out: Array  # logits (softmax head) or predictions (mse head), [O, T, B]
    state: State
    inputs: Array
    layers: list[LayerCache] = field(default_factory=list)
    masks: list[Array | None] = field(default_factory=list)
    fold: tuple[Array, Array] | None = None  # (distinct ids u [U], inverse index [T*B]) when folded


def embed_inputs(cfg: ModelConfig, p: Params, inputs: Array) -> Array:
    """Token ids ``[B, T]`` -> ``[E, T, B]``; real vectors ``[B, T, X]`` -> ``[X, T, B]``."""
    if cfg.token_input:
        ids = np.asarray(inputs)
        return np.take(np.ascontiguousarray(p["embed"].T), ids.T, axis=1)
    return np.ascontiguousarray(np.asarray(inputs, dtype=p["head/W"].dtype).transpose(2, 1, 0))


def forward(
    cfg: ModelConfig,
    p: Params,
    inputs: Array,
    state: State,
    dropout_rng: np.random.Generator | None = None,
) -> Forward:
    """Run the network over a ``[B, T]`` token batch (or ``[B, T, X]`` vectors) from ``state``.

    Dropout is applied only when ``dropout_rng`` is given (training). Returns head outputs ``[O, T, B]``,
    the final state and the caches for :func:`backward`.
    """
    cell = get_cell(cfg.cell)
    fwd = Forward(out=np.empty(0), state=[], inputs=np.asarray(inputs))
    x: Array | None = None
    if cfg.token_input:
        ids = fwd.inputs.T  # [T, B]
        u, inv = np.unique(ids, return_inverse=True)
        if len(u) <= FOLD_MAX_UNIQUE:
            fwd.fold = (u, inv.reshape(-1))
    if fwd.fold is None:
        x = embed_inputs(cfg, p, inputs)
    low: Array | None = None  # the layer below's cells c_1 .. c_T [T, H, B] (depth-gated only)
    for l in range(cfg.layers):
        lp = layer_params(p, l)
        h0, c0 = state[l]
        h0T, c0T = np.ascontiguousarray(h0.T), None if c0 is None else np.ascontiguousarray(c0.T)
        mask = None
        if l == 0 and fwd.fold is not None:
            # the embedding folded into the input projection: AX = (W E^T + b)[:, ids], one small GEMM over
            # the U distinct ids of the batch and a gather, instead of a GEMM over all T*B positions
            u, inv = fwd.fold
            tableT = lp["W"] @ p["embed"][u].T
            tableT += lp["b"][:, None]
            T, B = fwd.inputs.shape[1], fwd.inputs.shape[0]
            AX = np.take(tableT, inv.reshape(T, B), axis=1)
            Hs, cT, caches, Cs = recur_forward(cell, lp, AX, h0T, c0T, low)
            cache = LayerCache(None, Hs, caches, Cs)
        else:
            assert x is not None
            if l > 0 and dropout_rng is not None and cfg.dropout > 0:
                keep = 1.0 - cfg.dropout
                mask = (dropout_rng.random(x.shape) < keep).astype(x.dtype) / x.dtype.type(keep)
                x = x * mask
            Hs, cT, cache = layer_forward(cell, lp, x, h0T, c0T, low)
        low = cache.Cs
        fwd.layers.append(cache)
        fwd.masks.append(mask)
        fwd.state.append((np.ascontiguousarray(Hs[:, -1].T), None if cT is None else cT.T.copy()))
        x = Hs[:, 1:]
    assert x is not None
    H, T, B = x.shape
    out = p["head/W"] @ x.reshape(H, T * B)
    out += p["head/b"][:, None]
    fwd.out = out.reshape(-1, T, B)
    return fwd


def log_softmax(z: Array, axis: int = 0) -> Array:
    """log softmax along ``axis``, stable (max subtracted)."""
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def loss_and_dout(cfg: ModelConfig, out: Array, targets: Array, weights: Array | None) -> tuple[float, Array]:
    """Loss and its gradient w.r.t. the head outputs ``[O, T, B]``; targets ``[B, T]`` ids or ``[B, T, O]``."""
    O, T, B = out.shape
    w = np.ones((T, B), dtype=out.dtype) if weights is None else np.asarray(weights, dtype=out.dtype).T
    wsum = float(w.sum())
    if wsum <= 0:
        raise ValueError("weights: the batch has no position with a positive weight")
    if cfg.token_input:
        y = np.asarray(targets).T  # [T, B]
        logp = log_softmax(out)
        tb = np.ix_(np.arange(T), np.arange(B))
        picked = logp[y, tb[0], tb[1]]
        loss = -float((picked * w).sum()) / wsum
        dout = np.exp(logp)
        dout[y, tb[0], tb[1]] -= 1.0
        dout *= w / out.dtype.type(wsum)
        return loss, dout
    yt = np.asarray(targets, dtype=out.dtype).transpose(2, 1, 0)
    diff = out - yt
    loss = float((diff * diff * w).sum()) / (wsum * O)
    return loss, diff * (w * out.dtype.type(2.0 / (wsum * O)))


def backward(
    cfg: ModelConfig, p: Params, fwd: Forward, dout: Array, dstate: State | None = None
) -> tuple[Params, State]:
    """Exact BPTT through head, layers (top to bottom) and embedding.

    Args:
        dout: ``[O, T, B]`` gradient w.r.t. the head outputs.
        dstate: optional gradient w.r.t. the final state (same layout as the state).

    Returns ``(grads, dstate0)``: gradients keyed like ``p`` and w.r.t. the initial state.
    """
    cell = get_cell(cfg.cell)
    O, T, B = dout.shape
    top = fwd.layers[-1].Hs[:, 1:]
    H = top.shape[0]
    d2 = dout.reshape(O, T * B)
    grads: Params = {"head/W": d2 @ top.reshape(H, T * B).T, "head/b": d2.sum(axis=1)}
    dx = (p["head/W"].T @ d2).reshape(H, T, B)
    dstate0: State = []
    dC: Array | None = None  # gradient w.r.t. layer l's cells from layer l+1's depth gate (depth-gated only)
    for l in range(cfg.layers - 1, -1, -1):
        dhT = dcT = None
        if dstate is not None:
            dh_, dc_ = dstate[l]
            dhT = np.ascontiguousarray(dh_.T)
            dcT = None if dc_ is None else np.ascontiguousarray(dc_.T)
        lp = layer_params(p, l)
        if l == 0 and fwd.fold is not None:
            first = fwd.layers[0]
            dAX, dh0, dc0, g, dC = recur_backward(cell, lp, first.Hs, first.caches, dx, dhT, dcT, dC)
            u, inv = fwd.fold
            onehot = np.zeros((inv.size, len(u)), dtype=dAX.dtype)
            onehot[np.arange(inv.size), inv] = 1.0
            dtableT = dAX.reshape(dAX.shape[0], -1) @ onehot  # [G*H, U]: Σ of dAX over each id's positions
            Eu = p["embed"][u]
            g["W"] = dtableT @ Eu
            g["b"] = dtableT.sum(axis=1)
            dE = np.zeros_like(p["embed"])
            dE[u] = (lp["W"].T @ dtableT).T
            grads["embed"] = dE
        else:
            dx, dh0, dc0, g, dC = layer_backward(cell, lp, fwd.layers[l], dx, dhT, dcT, dC)
        for k, v in g.items():
            grads[f"layer{l}/{k}"] = v
        dstate0.insert(0, (dh0.T.copy(), None if dc0 is None else dc0.T.copy()))
        mask = fwd.masks[l]
        if mask is not None:
            dx = dx * mask
    if cfg.token_input and fwd.fold is None:
        E = dx.shape[0]
        dE = np.zeros_like(p["embed"])
        np.add.at(dE, fwd.inputs.T.reshape(-1), dx.reshape(E, -1).T)
        grads["embed"] = dE
    return {k: grads[k] for k in p}, dstate0


def log_probs(cfg: ModelConfig, p: Params, ids: Array, state: State) -> tuple[Array, State]:
    """Inference: next-token log-probabilities ``[B, T, V]`` after each input token, and the final state."""
    fwd = forward(cfg, p, ids, state)
    return log_softmax(fwd.out).transpose(2, 1, 0), fwd.state
