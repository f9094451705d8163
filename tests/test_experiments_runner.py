"""The shared experiment runner: output directory and resume rules, the records file, the process pool."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from model.errors import ConfigError
from model.experiments.runner import (
    RECORDS_FILE,
    append_record,
    mean_std_text,
    prepare_out,
    read_records,
    run_all,
    summarize,
)
from model.experiments.variants import VariantsConfig, load_char_data, plan, run_one


def test_prepare_out_refuses_resumes_and_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "o"
    cfg = {"cells": ["a"], "steps": 5}
    assert prepare_out(out, "memory", cfg, ["cells"], resume=False, overwrite=False) == []
    append_record(out / RECORDS_FILE, {"cell": "a", "x": math.nan})
    with pytest.raises(ConfigError, match=r"--out: .* already holds an experiment; pass --resume"):
        prepare_out(out, "memory", cfg, ["cells"], resume=False, overwrite=False)
    # resume: the enumerating list may change, the budget may not, nor the kind of experiment
    more = {"cells": ["a", "b"], "steps": 5}
    assert prepare_out(out, "memory", more, ["cells"], resume=True, overwrite=False) == [{"cell": "a", "x": None}]
    with pytest.raises(ConfigError, match=r"--resume: .* was run with steps=5, not 6"):
        prepare_out(out, "memory", {"cells": ["a"], "steps": 6}, ["cells"], resume=True, overwrite=False)
    with pytest.raises(ConfigError, match="holds a 'memory' experiment, not 'variants'"):
        prepare_out(out, "variants", cfg, ["cells"], resume=True, overwrite=False)
    assert prepare_out(out, "memory", cfg, ["cells"], resume=False, overwrite=True) == []
    assert not (out / RECORDS_FILE).exists()
    assert json.loads((out / "experiment.json").read_text()) == {"experiment": "memory", "config": cfg}
    # resume with nothing there starts afresh
    assert prepare_out(tmp_path / "new", "memory", cfg, ["cells"], resume=True, overwrite=False) == []


def test_a_record_cut_short_by_a_kill_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / RECORDS_FILE
    append_record(path, {"k": 1})
    with open(path, "a") as f:
        f.write('{"k": 2, "val')
    assert read_records(path) == [{"k": 1}]
    assert read_records(tmp_path / "missing.jsonl") == []


def test_two_worker_processes_give_the_serial_results(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("to be or not to be, that is the question. " * 100)
    exp = VariantsConfig(
        variants=("rnn", "gru"), corpus=str(path), hidden=8, embed=4, batch=4, seq_len=8, steps=3, lrs=(1e-2,), seeds=1
    )
    data = load_char_data(exp)
    keys = plan(exp)
    serial: list[dict[str, object]] = []
    pooled: list[dict[str, object]] = []
    run_all(run_one, (exp, data), keys, 1, serial.append)
    run_all(run_one, (exp, data), keys, 2, pooled.append)

    def strip(recs: list[dict[str, object]]) -> list[dict[str, object]]:
        out = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in recs]
        return sorted(out, key=lambda r: str(r["variant"]))

    assert len(serial) == 2 and strip(serial) == strip(pooled)


def test_summaries() -> None:
    assert summarize([1.0, None, 3.0, math.inf]) == (2.0, pytest.approx(math.sqrt(2)), 2, 4)
    assert mean_std_text([0.1, 1.1], ".4f") == "0.6000 ± 0.7071"
    assert mean_std_text([0.5], ".3f") == "0.500"
    assert mean_std_text([0.5, None], ".3f") == "0.500 ± 0.000 (1 diverged)"
    assert mean_std_text([None], ".3f") == "diverged"
