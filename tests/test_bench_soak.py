"""bench/soak.py: its offline checker catches every kind of wrong response, and a short soak is clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import harness.soak.check as sc  # noqa: E402
from service_helpers import tiny_model, tiny_run  # noqa: E402

TOL = 1e-4


def onnx_oracle() -> sc.OnnxOracle:
    return sc.OnnxOracle(tiny_model())


def history(seed: int, n: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(0, onnx_oracle().V, n)]


def honest_segment(toks: list[int], L: np.ndarray) -> sc.Segment:
    """The checks a correct server would produce for ``toks``: top-k after each prefix, scores, a greedy token."""
    seg = sc.Segment("s", list(toks))
    for p in range(1, len(toks) + 1):
        ids = [int(i) for i in np.argsort(-L[p - 1], kind="stable")[:3]]
        seg.checks.append((sc.TOP, p, ids, [float(L[p - 1][i]) for i in ids], 3))
    seg.checks.append((sc.SCORE, 0, 4, [float(L[a - 1][toks[a]]) for a in range(1, 4)]))
    seg.checks.append((sc.SCORE, 4, 3, [float(L[a - 1][toks[a]]) for a in range(4, 7)]))
    a = len(toks) - 1
    seg.checks.append((sc.GEN, a, toks[a], float(L[a - 1][toks[a]]), False))
    return seg


def test_oracles_agree_and_chunking_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    seqs = [history(1, 30), history(2, 7), history(3, 1)]
    onnx_lp = onnx_oracle().logprobs(seqs)
    numpy_lp = sc.NumpyOracle(tiny_run()).logprobs(seqs)
    for s, a, b in zip(seqs, onnx_lp, numpy_lp, strict=True):
        assert a.shape == b.shape == (len(s), onnx_oracle().V)
        np.testing.assert_allclose(a, b, atol=1e-5)
    monkeypatch.setattr(sc, "BATCH_ELEMENTS", 4 * onnx_oracle().V)  # batches of a few rows, 1-4 steps per chunk
    for a, c in zip(onnx_lp, onnx_oracle().logprobs(seqs), strict=True):
        np.testing.assert_allclose(a, c, atol=1e-6)


def test_an_honest_segment_passes() -> None:
    toks = history(4, 12)
    (L,) = onnx_oracle().logprobs([toks])
    v = sc.check_segment(honest_segment(toks, L), L, TOL)
    assert (v.mismatches, v.checks, v.tokens, v.samples) == (0, 12 + 3, 12, [])


def corrupt(seg: sc.Segment, i: int, c: tuple[Any, ...]) -> sc.Segment:
    out = sc.Segment(seg.name, list(seg.tokens), list(seg.checks))
    out.checks[i] = c
    return out


CASES = {  # how -> what the mismatch says
    "logprob_off": "vs offline",
    "wrong_position": "vs offline",
    "order": "not sorted",
    "missing_best": "beats them",
    "too_few": "predictions for top_k=3",
    "repeated_id": "repeat",
    "nan": "vs offline",
    "score_value": "score of tokens",
    "score_length": "log-probs, expected",
    "gen_not_in_history": "not in the acknowledged history",
    "gen_logprob": "generated token",
    "gen_not_greedy": "not an argmax",
    "position": "position 5, expected 6",
}


@pytest.mark.parametrize("how", CASES)
def test_the_checker_catches_a_wrong_response(how: str) -> None:
    toks = history(5, 12)
    (L,) = onnx_oracle().logprobs([toks])
    seg = honest_segment(toks, L)  # checks: TOP after 1..12 tokens, SCORE [0, 4), SCORE [4, 7), GEN at 11
    _, p, ids, lps, k = seg.checks[5]  # top-3 after 6 tokens
    worst = int(np.argmin(L[5]))
    other = (toks[11] + 1) % L.shape[1]
    bad: dict[str, tuple[int, tuple[Any, ...]]] = {
        "logprob_off": (5, (sc.TOP, p, ids, [lps[0], lps[1] + 3 * TOL, lps[2]], k)),
        "wrong_position": (5, (sc.TOP, p + 1, ids, lps, k)),
        "order": (5, (sc.TOP, p, ids[::-1], lps[::-1], k)),
        "missing_best": (5, (sc.TOP, p, [*ids[1:], worst], [*lps[1:], float(L[5][worst])], k)),
        "too_few": (5, (sc.TOP, p, ids[:2], lps[:2], k)),
        "repeated_id": (5, (sc.TOP, p, [ids[0], ids[0], ids[1]], [lps[0], lps[0], lps[1]], k)),
        "nan": (5, (sc.TOP, p, ids, [float("nan"), lps[1], lps[2]], k)),
        "score_value": (13, (sc.SCORE, 4, 3, [float(L[a - 1][toks[a]]) for a in range(4, 6)] + [0.0])),
        "score_length": (12, (sc.SCORE, 0, 4, [float(L[a - 1][toks[a]]) for a in range(0, 4)])),
        "gen_not_in_history": (14, (sc.GEN, 11, other, float(L[10][other]), False)),
        "gen_logprob": (14, (sc.GEN, 11, toks[11], float(L[10][toks[11]]) - 0.01, False)),
        "gen_not_greedy": (14, (sc.GEN, 11, toks[11], float(L[10][toks[11]]), True)),
        "position": (5, (sc.POS, "feed", 6, 5)),
    }
    if how == "gen_not_greedy" and L[10].max() <= L[10][toks[11]] + TOL:
        pytest.skip("the random token happens to be the argmax")
    v = sc.check_segment(corrupt(seg, *bad[how]), L, TOL)
    assert v.mismatches == 1, v.samples
    assert CASES[how] in v.samples[0], v.samples


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), k=st.integers(1, 8), bump=st.floats(2 * TOL, 1.0), j=st.integers(0, 7))
def test_check_top_accepts_a_true_top_k_and_rejects_any_value_moved_past_the_tolerance(
    seed: int, k: int, bump: float, j: int
) -> None:
    rng = np.random.default_rng(seed)
    L = np.log(rng.dirichlet(np.ones(37))).astype(np.float32)
    ids = [int(i) for i in np.argsort(-L, kind="stable")[:k]]
    lps = [float(L[i]) for i in ids]
    assert sc.check_top(L, ids, lps, k, TOL)[0] is None
    j %= k
    moved = list(lps)
    moved[j] += bump if j == 0 else -bump  # keeps the order, changes a value
    assert sc.check_top(L, ids, moved, k, TOL)[0] is not None


def soak(*extra: str) -> tuple[int, dict[str, Any], str]:
    argv = [sys.executable, str(BENCH / "soak.py"), "--model", str(tiny_model()), "--streams", "3", "--minutes"]
    argv += ["0.04", "--disconnect-every", "5", "--min-len", "5", "--max-len", "40", "--json", *extra]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1]), out.stdout + out.stderr


def test_a_short_soak_with_disconnects_is_clean() -> None:
    rc, res, text = soak("--run", str(tiny_run()))
    assert (rc, res["errors"], res["mismatches"]) == (0, 0, 0), text
    assert res["tokens"] > 100 and res["checks"] > 100, text
    assert res["reconnects"] > 5 and res["sessions"] > res["live_sessions"], text  # churn and disconnects happened
    assert res["rss_growth_mb"] is not None and res["rss_growth_mb"] < 50, text


@pytest.mark.slow
def test_a_soak_checked_against_another_model_fails() -> None:
    rc, res, text = soak("--run", str(tiny_run("gru", 1)), "--streams", "2")
    assert rc == 1 and res["mismatches"] > 0, text


@pytest.mark.slow
def test_a_soak_that_kills_a_sync_durable_server_loses_nothing() -> None:
    rc, res, text = soak("--durability", "sync", "--kill-every", "2", "--minutes", "0.12")
    assert (rc, res["errors"], res["mismatches"], res["lost_tokens"]) == (0, 0, 0, 0), text
    assert res["kills"] >= 2 and res["tokens"] > 100, text
