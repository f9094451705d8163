"""The serving benchmark's round aggregation: medians per server, ratios as medians of per-round ratios."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from harness.serve.report import level_summary, summarize


def _m(tps: float, p50: float) -> dict[str, float]:
    return {"tokens": tps, "tokens_per_s": tps, "p50_ms": p50, "p99_ms": 2 * p50, "server_cpu_us_per_token": 100.0}


def test_ratios_are_medians_of_per_round_ratios_not_ratios_of_medians() -> None:
    # drift: the machine halves its speed in round 2; per-round ratios stay 0.5 / 0.5 / 0.8
    runs = {
        "echo": [_m(1000, 0.2), _m(500, 0.4), _m(1000, 0.2)],
        "service": [_m(500, 0.4), _m(250, 0.8), _m(800, 0.3)],
        "stub": [_m(900, 0.25), _m(450, 0.5), _m(950, 0.21)],
    }
    lv = level_summary(runs)
    assert lv["rounds"] == 3
    assert lv["echo"]["tokens_per_s"] == 1000 and "ratio" not in lv["echo"]
    assert lv["service"]["tokens_per_s"] == 500
    assert lv["ratio"] == pytest.approx(0.5) and lv["p50_ratio"] == pytest.approx(2.0)
    assert lv["stub"]["ratio"] == pytest.approx(0.9) and lv["stub"]["p50_ratio"] == pytest.approx(1.25)
    out = {"levels": {1: lv, 64: lv}, "prompt": {"service_tokens_per_s": 3.0, "offline_tokens_per_s": 4.0}}
    s = summarize(out)
    assert s["throughput_ratio_64"] == 0.5 and s["p50_ratio_1"] == 2.0 and s["prompt_ratio"] == 0.75
    assert s["stub_throughput_ratio_64"] == 0.9 and s["stub_p50_ratio_1"] == 1.25
    assert "floor_p50_ratio_1" not in s


def test_rounds_must_pair_up() -> None:
    with pytest.raises(ValueError):
        level_summary({"echo": [_m(1, 1)], "service": [_m(1, 1), _m(1, 1)]})
