"""Slow end-to-end check (``make test-slow``): a short real training run on the default corpus learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.cli import main


@pytest.mark.slow
def test_short_stdlib_run_learns(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--corpus", "stdlib", "--max-chars", "400000", "--max-vocab", "96", "--hidden", "96",
            "--batch", "32", "--seq-len", "64", "--steps", "300", "--lr", "4e-3", "--eval-every", "100",
            "--check-tokens", "20000", "--eval-tokens", "20000", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    vals = [r["val_nats_per_token"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "val_nats_per_token" in r]  # fmt: skip
    # uniform over 96 symbols is ln 96 = 4.56 nats; a working trainer is far below after 300 steps
    assert vals[-1] < 2.6, vals
    assert vals[-1] < vals[0], vals
