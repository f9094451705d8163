"""Exported graphs = the NumPy model, for every cell, random small sizes, mixed lengths (float32, 1e-5).

Covers model/export/cells.py, step.py and sequence.py: onnxruntime on ``step.onnx`` and ``sequence.onnx``
against ``network.log_probs`` / ``network.forward`` run row by row at each row's own length, and
``step.onnx`` fed one token at a time against one ``sequence.onnx`` call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import network
from model.config import CELLS, ModelConfig
from model.export import build_graphs, make_session

TOL = 1e-5


def perturbed_params(cfg: ModelConfig, rng: np.random.Generator, scale: float = 0.3) -> dict[str, np.ndarray]:
    """Fresh parameters plus noise, so peepholes, Rb, biases and every gate are far from trivial."""
    p = network.init_params(cfg, rng)
    return {k: (v + rng.normal(0.0, scale, v.shape)).astype(np.float32) for k, v in p.items()}


def random_state(cfg: ModelConfig, B: int, rng: np.random.Generator) -> network.State:
    def r(width: int) -> np.ndarray:
        return rng.normal(0.0, 0.5, (B, width)).astype(np.float32)

    return [(r(cfg.hidden), r(cfg.c_width) if cfg.has_c else None) for _ in range(cfg.layers)]


def state_feeds(state: network.State) -> dict[str, np.ndarray]:
    feeds = {}
    for l, (h, c) in enumerate(state):
        feeds[f"h{l}"] = h
        if c is not None:
            feeds[f"c{l}"] = c
    return feeds


def run(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = make_session(model.SerializeToString())
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def row_state(state: network.State, b: int) -> network.State:
    return [(h[b : b + 1], None if c is None else c[b : b + 1]) for h, c in state]


def numpy_sequence(
    cfg: ModelConfig, p: dict[str, np.ndarray], x: np.ndarray, lengths: np.ndarray, state: network.State
) -> dict[str, np.ndarray]:
    """What sequence.onnx should return, from the NumPy model run on each row alone at its own length."""
    B, T = x.shape[:2]
    out: dict[str, np.ndarray] = {}
    if cfg.token_input:
        out["token_logprobs"] = np.zeros((B, T - 1), np.float32)
        out["next_logprobs"] = np.zeros((B, cfg.vocab_size), np.float32)
    else:
        out["outputs"] = np.zeros((B, T, cfg.output_dim), np.float32)
    finals: list[network.State] = []
    for b in range(B):
        n = int(lengths[b])
        s0 = row_state(state, b)
        if n == 0:
            fs = s0
            if cfg.token_input:
                z = p["head/W"] @ s0[-1][0][0] + p["head/b"]
                out["next_logprobs"][b] = network.log_softmax(z)
        elif cfg.token_input:
            lp, fs = network.log_probs(cfg, p, x[b : b + 1, :n], s0)
            out["token_logprobs"][b, : n - 1] = lp[0, np.arange(n - 1), x[b, 1:n]]
            out["next_logprobs"][b] = lp[0, n - 1]
        else:
            fwd = network.forward(cfg, p, x[b : b + 1, :n], s0)
            out["outputs"][b, :n] = fwd.out[:, :, 0].T
            fs = fwd.state
        finals.append(fs)
    for l in range(cfg.layers):
        out[f"h{l}_out"] = np.concatenate([f[l][0] for f in finals])
        if cfg.has_c:
            out[f"c{l}_out"] = np.concatenate([f[l][1] for f in finals])  # type: ignore[misc]
    return out


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], tol: float = TOL) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        err = float(np.abs(got[k] - want[k]).max()) if want[k].size else 0.0
        assert err <= tol, f"{k}: max abs error {err:.3g} > {tol}"


sizes = st.fixed_dictionaries(
    {
        "layers": st.integers(1, 2),
        "hidden": st.integers(1, 12),
        "vocab": st.integers(2, 9),
        "embed": st.integers(1, 6),
        "batch": st.integers(1, 4),
        "time": st.integers(1, 7),
        "seed": st.integers(0, 2**31),
    }
)


def make_case(cell: str, token: bool, s: dict[str, int]) -> tuple[ModelConfig, dict[str, np.ndarray], Any, Any]:
    rng = np.random.default_rng(s["seed"])
    if token:
        cfg = ModelConfig(cell=cell, layers=s["layers"], hidden=s["hidden"], vocab_size=s["vocab"], embed=s["embed"])
        x = rng.integers(0, s["vocab"], (s["batch"], s["time"]))
    else:
        cfg = ModelConfig(
            cell=cell, layers=s["layers"], hidden=s["hidden"], head="mse", input_dim=s["embed"], output_dim=2
        )
        x = rng.normal(0.0, 1.0, (s["batch"], s["time"], s["embed"])).astype(np.float32)
    p = perturbed_params(cfg, rng)
    lengths = rng.integers(0, s["time"] + 1, s["batch"])
    lengths[0] = s["time"]  # at least one full row
    return cfg, p, x, (lengths, random_state(cfg, s["batch"], rng))


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=6, deadline=None)
@given(s=sizes, token=st.booleans())
def test_sequence_matches_numpy(cell: str, s: dict[str, int], token: bool) -> None:
    cfg, p, x, (lengths, state) = make_case(cell, token, s)
    g = build_graphs(cfg, p)
    feeds = {"tokens" if token else "inputs": x, "lengths": lengths, **state_feeds(state)}
    assert_close(run(g["sequence"], feeds), numpy_sequence(cfg, p, x, lengths, state))


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=4, deadline=None)
@given(s=sizes, token=st.booleans())
def test_step_matches_numpy(cell: str, s: dict[str, int], token: bool) -> None:
    cfg, p, x, (_, state) = make_case(cell, token, s)
    x0 = x[:, 0]
    got = run(build_graphs(cfg, p)["step"], {"tokens" if token else "inputs": x0, **state_feeds(state)})
    if token:
        lp, fs = network.log_probs(cfg, p, x0[:, None], state)
        want = {"logprobs": lp[:, 0]}
    else:
        fwd = network.forward(cfg, p, x0[:, None], state)
        want, fs = {"output": fwd.out[:, 0].T}, fwd.state
    for l, (h, c) in enumerate(fs):
        want[f"h{l}_out"] = h
        if c is not None:
            want[f"c{l}_out"] = c
    assert_close(got, want)


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=3, deadline=None)
@given(s=sizes, token=st.booleans())
def test_step_by_step_equals_sequence(cell: str, s: dict[str, int], token: bool) -> None:
    """Feeding step.onnx one position at a time, each row frozen after its own length, = one sequence call."""
    cfg, p, x, (lengths, state) = make_case(cell, token, s)
    g = build_graphs(cfg, p)
    seq = run(g["sequence"], {"tokens" if token else "inputs": x, "lengths": lengths, **state_feeds(state)})
    step = make_session(g["step"].SerializeToString())
    names = [o.name for o in step.get_outputs()]
    cur = state_feeds(state)
    B, T = x.shape[:2]
    scores = np.zeros((B, max(T - 1, 0)), np.float32)
    preds = np.zeros((B, T, cfg.output_dim), np.float32)
    for t in range(T):
        out = dict(zip(names, step.run(None, {"tokens" if token else "inputs": x[:, t], **cur}), strict=True))
        live = t < lengths
        if token and t + 1 < T:
            picked = out["logprobs"][np.arange(B), x[:, t + 1]]
            scores[:, t] = np.where(t + 1 < lengths, picked, 0.0)
        if not token:
            preds[:, t] = np.where(live[:, None], out["output"], 0.0)
        cur = {k: np.where(live[:, None], out[f"{k}_out"], v) for k, v in cur.items()}
    for k, v in cur.items():
        np.testing.assert_allclose(seq[f"{k}_out"], v, atol=TOL, rtol=0)
    if token:
        np.testing.assert_allclose(seq["token_logprobs"], scores, atol=TOL, rtol=0)
    else:
        np.testing.assert_allclose(seq["outputs"], preds, atol=TOL, rtol=0)


def test_lengths_are_clipped_and_zero_keeps_state(rng: np.random.Generator) -> None:
    cfg = ModelConfig(cell="lstm", layers=1, hidden=5, vocab_size=7, embed=3)
    p = perturbed_params(cfg, rng)
    x = rng.integers(0, 7, (3, 4))
    state = random_state(cfg, 3, rng)
    feeds = {"tokens": x, **state_feeds(state)}
    g = build_graphs(cfg, p)["sequence"]
    over = run(g, {**feeds, "lengths": np.array([9, 0, -2])})
    want = numpy_sequence(cfg, p, x, np.array([4, 0, 0]), state)
    assert_close(over, want)
    np.testing.assert_array_equal(over["h0_out"][1], state[0][0][1])
