"""The experiments' tables: mean ± sample std, each variant's best learning rate, Welch's Δ against the reference."""

from __future__ import annotations

import math

import pytest

from model.experiments.memory import MemoryConfig, RunResult, plan
from model.experiments.tables import best_lrs, memory_markdown, variants_markdown, welch
from model.experiments.variants import VariantResult, VariantsConfig, available_variants


def test_memory_table_has_mean_and_sample_std() -> None:
    exp = MemoryConfig(cells=("rnn", "gru"), adding_lengths=(5,), lags=(3, 4), seeds=2)

    def fake(c: str, t: str, n: int, s: int) -> RunResult:
        acc = None if t == "adding" else 0.5 + s / 4
        return RunResult(c, t, n, s, "mse" if t == "adding" else "accuracy", 0.1 + s, 1.0, acc, 1, 0.1, 0.0, 0.1)

    md = memory_markdown(exp, [fake(*r) for r in plan(exp)])
    assert "| rnn | 0.6000 ± 0.7071 |" in md  # mean ± sample std of 0.1 and 1.1
    assert "0.625 ± 0.177" in md


def _result(variant: str, lr: float, seed: int, nats: float | None) -> VariantResult:
    v = available_variants()[variant]
    return VariantResult(variant, lr, seed, v.cell, v.layers, v.forget_bias, nats, 2.0, 10, 100, 1.0, 0.1, nats is None)


def test_best_lr_and_delta_against_the_reference() -> None:
    exp = VariantsConfig(corpus="stdlib", variants=("peephole", "lstm", "nfg"), lrs=(0.01, 0.001), seeds=3)
    table = {
        ("peephole", 0.001): [2.0, 2.1, 2.2],  # best for peephole: mean 2.1
        ("peephole", 0.01): [2.3, 2.3, 2.4],
        ("lstm", 0.001): [2.5, 2.5, 2.5],
        ("lstm", 0.01): [2.2, 2.3, 2.4],  # best for lstm: mean 2.3
        ("nfg", 0.001): [None, None, None],  # every seed diverged: never the best
        ("nfg", 0.01): [3.0, None, 3.2],
    }
    results = [_result(v, lr, s, x) for (v, lr), xs in table.items() for s, x in enumerate(xs)]
    assert best_lrs(exp, results) == {"peephole": 0.001, "lstm": 0.01, "nfg": 0.01}
    d, se, t = welch([2.2, 2.3, 2.4], [2.0, 2.1, 2.2])
    assert (
        d == pytest.approx(0.2) and se == pytest.approx(math.sqrt(0.01 / 3 + 0.01 / 3)) and t == pytest.approx(d / se)
    )
    md = variants_markdown(exp, results, available_variants())
    assert "| peephole | V: vanilla LSTM, peepholes | 1 | 100 | 0.001 | 2.1000 ± 0.1000 |  |  |  |" in md
    assert (
        f"| lstm | NP: no peepholes | 1 | 100 | 0.01 | 2.3000 ± 0.1000 | peephole | +0.2000 ± {se:.4f} | +{t:.1f} |"
        in md
    )
    assert "| nfg | **3.1000 ± 0.1414 (1 diverged)** |" not in md  # per-lr rows list the lrs in ascending order
    assert "| nfg | diverged | **3.1000 ± 0.1414 (1 diverged)** |" in md
    assert "18 runs" in md and "4 diverged" in md
    assert math.isnan(welch([1.0], [2.0, 3.0])[1])
