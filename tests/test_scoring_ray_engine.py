"""service.scoring.ray_engine: ``seqpred score --engine ray`` equals ``--engine local`` record for record.

One local Ray instance (``ray.init(num_cpus=2)``, a small object store) is shared by the module; Ray's start-up
and each run's actor start-up are slow, so every Ray run checks several things at once (ids, order, scores,
per-token and top-k fields, ``--resume``, ``--on-error``, part and block boundaries). Tests that need no Ray
instance (cutting INPUT into parts, the missing-Ray error) run without one, and those without Ray installed skip.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_scoring_cli import run_cli, tiny_config, tiny_model

from service.scoring.inputs import Encoder, InputReader, Item, Part, input_format
from service.scoring.ray_engine import split_input


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=128 << 20,
        logging_level=logging.ERROR,
        log_to_driver=False,
        _system_config={"worker_niceness": 0},  # Ray's default, 15, starves the actors on a busy machine
    )
    yield ray
    ray.shutdown()


def assert_same(a: Any, b: Any, where: str = "record") -> None:
    """Equal records: the same keys, ids and integers, floats to 1e-6 (nested lists and dicts too)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float) and isinstance(b, int | float), f"{where}: {a!r} != {b!r}"
        assert math.isclose(a, b, rel_tol=0, abs_tol=1e-6), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b and type(a) is type(b), f"{where}: {a!r} != {b!r}"


def jsonl_input(path: Path, rng: np.random.Generator) -> None:
    V = tiny_config().vocab_size
    rows: list[str] = []
    for k in range(40):
        if k % 3 == 0:
            rows.append(json.dumps({"id": f"s{k}", "tokens": rng.integers(0, V, rng.integers(0, 40)).tolist()}))
        else:
            rows.append(json.dumps({"id": k, "text": "the quick brown fox jumps over the lazy dog"[: k % 44]}))
    rows[7] = '{"id": 7, "text": "the λ cat"}'  # an unknown symbol: scored as <unk> with --allow-unknown
    rows[11] = '{"id": 11, "text": "the cat'  # malformed: skipped with a warning
    rows[13] = json.dumps({"id": 13, "text": "and the cat sat on the mat " * 4})  # longer than --chunk-len
    rows.insert(20, "")  # a blank line
    path.write_text("\n".join(rows) + "\n")


def test_jsonl_per_token_top_k_resume_and_skip_equal_the_local_engine(
    ray_instance: Any, tmp_path: Path, rng: np.random.Generator
) -> None:
    inp = tmp_path / "in.jsonl"
    jsonl_input(inp, rng)
    flags = ["--model", str(tiny_model()), str(inp), "--per-token", "--top-k", "3", "--allow-unknown"]
    flags += ["--on-error", "skip", "--chunk-len", "16", "--window-tokens", "64"]
    local_out, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    rc, _, local_err = run_cli([*flags, "--out", str(local_out)])
    assert rc == 0, local_err
    want = local_out.read_text().splitlines(keepends=True)
    assert len(want) == 39  # 40 rows, one malformed
    # an interrupted earlier run: 5 complete records and half of the 6th
    ray_out.write_text("".join(want[:5]) + want[5][:20])
    rc, _, err = run_cli([*flags, "--out", str(ray_out), "--engine", "ray", "--resume", "--part-bytes", "300"])
    assert rc == 0, err
    assert "dropped an incomplete last line" in err
    warning = f"seqpred: warning: {inp}:12: invalid JSON"
    assert warning in local_err and warning in err
    assert "; 1 malformed skipped; 5 already in OUTPUT" in err
    assert "seqpred score: 34 sequences" in err
    got = ray_out.read_text().splitlines(keepends=True)
    assert got[:5] == want[:5]  # the kept records are untouched
    recs = [json.loads(x) for x in got]
    assert [r["id"] for r in recs] == [json.loads(x)["id"] for x in want]  # ids, in input order
    assert_same([json.loads(x) for x in want], recs)
    assert [r["unknown_tokens"] for r in recs if r["id"] == 7] == [1]


def test_text_on_error_fail_writes_everything_before_it_across_parts(ray_instance: Any, tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    lines = [b"the cat sat", b"", b"a", b"the dog " * 9, b"on the mat"] * 6
    lines[22] = b"the \xff cat"  # line 23: not UTF-8
    inp.write_bytes(b"\n".join(lines) + b"\n")
    flags = ["--model", str(tiny_model()), str(inp), "--window-tokens", "32"]
    rc, want, local_err = run_cli(flags)
    assert rc == 2
    rc, got, err = run_cli([*flags, "--engine", "ray", "--part-bytes", "40"])
    assert rc == 2
    message = f"seqpred: error: {inp}:23: not valid UTF-8 (byte 0xff at offset 4) (pass --on-error skip"
    assert message in local_err and message in err
    assert err.strip().splitlines()[-1].startswith("seqpred: error:")
    assert [r["id"] for r in got] == [k + 1 for k in range(22) if lines[k]]  # line numbers across 40-byte parts
    assert_same(want, got)


def test_parquet_directory_resume_equals_the_local_engine(
    ray_instance: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import service.scoring.parquet

    monkeypatch.setattr(service.scoring.parquet, "ROWS_PER_FILE", 4)
    d = tmp_path / "docs"
    for k in range(13):
        f = d / f"g{k % 3}" / f"{k:02d}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("the cat sat on the mat\n"[: k * 2])  # 00.txt is empty
    flags = ["--model", str(tiny_model()), str(d), "--per-token", "--top-k", "2", "--out-format", "parquet"]
    rc, _, err = run_cli([*flags, "--out", str(tmp_path / "local")])
    assert rc == 0, err
    parts = sorted((tmp_path / "local").iterdir())
    assert [p.name for p in parts] == [f"part-{k:05d}.parquet" for k in range(4)]  # 4 + 4 + 4 + 1 rows
    rc, want, err = run_cli(["--model", str(tiny_model()), str(d), "--per-token", "--top-k", "2"])
    assert rc == 0, err

    def table(out: Path) -> list[dict[str, Any]]:
        return [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]

    assert_same([{**r, "id": str(r["id"])} for r in want], table(tmp_path / "local"))
    # an interrupted Ray run: two complete parts and the temporary file of the third
    out = tmp_path / "ray"
    out.mkdir()
    for p in parts[:2]:
        (out / p.name).write_bytes(p.read_bytes())
    (out / "part-00002.parquet.tmp").write_bytes(b"PAR1 half a file")
    rc, _, err = run_cli([*flags, "--out", str(out), "--engine", "ray", "--resume", "--part-bytes", "30"])
    assert rc == 0, err
    assert "seqpred: warning: --out: removed part-00002.parquet.tmp" in err
    assert "8 already in OUTPUT" in err
    assert not list(out.glob("*.tmp"))
    assert_same(table(tmp_path / "local"), table(out))


@pytest.mark.parametrize(
    ("flags", "want"), [(["--actors", "3"], "3 actor(s) of 1"), (["--intra-op-threads", "3"], "1 actor(s) of 3")]
)
def test_more_actors_than_cpus_is_one_line_exit_2(
    ray_instance: Any, tmp_path: Path, flags: list[str], want: str
) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("the cat\n")
    rc, recs, err = run_cli(["--model", str(tiny_model()), str(inp), "--engine", "ray", *flags])
    assert rc == 2 and recs == []
    tail = "CPU(s) each (--intra-op-threads) need more than the 2 CPUs of the cluster"
    assert err.strip() == f"seqpred: error: --actors: {want} {tail}"


def test_without_ray_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError, as when it is not installed
    inp = tmp_path / "in.txt"
    inp.write_text("the cat\n")
    out = tmp_path / "out.jsonl"
    rc, _, err = run_cli(["--model", str(tiny_model()), str(inp), "--out", str(out), "--engine", "ray"])
    assert rc == 2
    assert err.strip() == "seqpred: error: --engine ray needs Ray: pip install 'seqpred[ray]'"
    assert not out.exists()


def test_stdin_is_refused_before_ray_starts() -> None:
    pytest.importorskip("ray")
    rc, _, err = run_cli(["--model", str(tiny_model()), "-", "--engine", "ray"], stdin=b"the cat\n")
    assert rc == 2 and err.strip().startswith("seqpred: error: --engine ray: INPUT - (stdin)")
    assert "write it to a file" in err


def test_a_bad_ray_address_is_one_line_exit_2(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    inp = tmp_path / "in.txt"
    inp.write_text("the cat\n")
    argv = ["--model", str(tiny_model()), str(inp), "--engine", "ray", "--ray-address", "nonsense"]
    p = subprocess.run(  # a process of its own: this one is already connected to the module's instance
        [sys.executable, "-m", "service.scoring.cli", *argv], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 2 and p.stdout == ""
    last = p.stderr.strip().splitlines()[-1]  # Ray's reason, in its words: "Invalid address format: nonsense" (2.60)
    assert last.startswith("seqpred: error: --ray-address: cannot connect to 'nonsense' (") and last.endswith(")")
    assert "nonsense" in last[len("seqpred: error: --ray-address: cannot connect to 'nonsense' (") :]


@pytest.mark.slow
def test_the_command_starts_and_stops_its_own_instance(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    inp = tmp_path / "in.txt"
    inp.write_text("the cat\n\nthe dog sat\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    short = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # sockets live below it: a path of at most 107 bytes
    env["RAY_TMPDIR"] = short  # its own session directory, apart from any other instance
    argv = ["--model", str(tiny_model()), str(inp), "--engine", "ray", "--per-token"]
    try:
        p = subprocess.run(
            [sys.executable, "-m", "service.scoring.cli", *argv], env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert p.returncode == 0, p.stderr
    rc, want, err = run_cli([*argv[:3], "--per-token"])
    assert rc == 0, err
    assert_same(want, [json.loads(x) for x in p.stdout.splitlines()])
    assert "seqpred score: 2 sequences" in p.stderr


# ----------------------------------------------------------------------------------------------------------------
# Cutting INPUT into parts (no Ray needed)


def read_all(path: Path, parts: list[Part]) -> list[tuple[Any, list[int]]]:
    enc = Encoder(tiny_model_tokenizer(), "unk")
    out = []
    for part in parts:
        for x in InputReader(str(path), "auto", enc, part=part):
            assert isinstance(x, Item)
            out.append((x.id, x.ids.tolist()))
    return out


def tiny_model_tokenizer() -> Any:
    from model.export import load_model_dir

    tok = load_model_dir(tiny_model()).tokenizer
    assert tok is not None
    return tok


@pytest.mark.parametrize("part_bytes", [1, 7, 30, 1 << 20])
def test_parts_of_a_file_read_as_the_whole_file(tmp_path: Path, part_bytes: int) -> None:
    p = tmp_path / "in.txt"
    p.write_bytes(b"the cat\n\n\r\nthe dog sat\r\na\nlast line without newline")
    parts, size = split_input(str(p), input_format(str(p), "auto"), part_bytes)
    assert size == p.stat().st_size
    whole = read_all(p, [Part()])
    assert [i for i, _ in whole] == [1, 4, 5, 6]
    assert read_all(p, parts) == whole
    assert len(parts) == {1: 6, 1 << 20: 1}.get(part_bytes, len(parts))  # 1 byte: a part per line, blank or not
    assert parts[0].start == 0 and parts[-1].stop in (None, size)
    assert all(a.stop == b.start for a, b in itertools.pairwise(parts))


def test_parts_of_a_directory_and_a_gzip_file(tmp_path: Path) -> None:
    d = tmp_path / "d"
    for name in ["b.txt", "a/x.txt", "a/y.txt", ".hidden"]:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("the cat " * 3)
    parts, size = split_input(str(d), "dir", 40)
    assert [p.files for p in parts] == [("a/x.txt", "a/y.txt"), ("b.txt",)]
    assert size == 72
    assert read_all(d, parts) == read_all(d, [Part()])
    gz = tmp_path / "in.txt.gz"
    gz.write_bytes(gzip.compress(b"the cat\nthe dog\n" * 50))
    parts, _ = split_input(str(gz), "text", 16)
    assert parts == [Part()]
