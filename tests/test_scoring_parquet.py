"""service.scoring.parquet: ``--out-format parquet`` (a directory of complete part files, in input order) with the
local engine: the same records as JSONL, part files rolled and resumed, and its user errors. Needs pyarrow (it
comes with ``seqpred[ray]``); skipped without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_scoring_cli import run_cli, tiny_model

pq = pytest.importorskip("pyarrow.parquet")


def table(out: Path) -> list[dict[str, Any]]:
    return [r for p in sorted(out.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_parquet_holds_the_jsonl_records_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.scoring.parquet

    monkeypatch.setattr(service.scoring.parquet, "ROWS_PER_FILE", 3)
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        '{"id": 1, "text": "the cat"}\n{"id": "1", "text": "the dog"}\n{"id": "e", "tokens": []}\n'
        + "".join(f'{{"id": {k}, "text": "a cat {k}"}}\n' for k in range(10, 15))
    )
    base = ["--model", str(tiny_model()), str(inp), "--per-token", "--top-k", "2", "--allow-unknown"]
    rc, want, err = run_cli(base)
    assert rc == 0, err
    out = tmp_path / "out"
    rc, _, err = run_cli([*base, "--out-format", "parquet", "--out", str(out)])
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    got = table(out)
    assert got == [{**r, "id": str(r["id"])} for r in want]  # every field, ids as strings, in input order
    assert got[2]["token_ids"] == [] and got[2]["next_top_k"] is None and got[2]["nats_per_token"] is None
    # a killed run: the last part lost, a temporary file left; --resume removes it and scores only what is missing
    (out / "part-00002.parquet").unlink()
    (out / "part-00002.parquet.tmp").write_bytes(b"PAR1")
    rc, _, err = run_cli([*base, "--out-format", "parquet", "--out", str(out), "--resume"])
    assert rc == 0, err
    assert "removed part-00002.parquet.tmp, left incomplete by an interrupted run" in err
    assert "6 already in OUTPUT" in err  # ids 1 and "1" are one id in Parquet
    assert table(out) == got
    rc, _, err = run_cli([*base, "--out-format", "parquet", "--out", str(out), "--overwrite"])
    assert rc == 0 and table(out) == got


@pytest.mark.parametrize(
    ("out", "extra", "message"),
    [
        (None, [], "--out-format parquet: needs --out DIR"),
        ("file", [], "exists and is not a directory"),
        ("parts", [], "already holds part files; pass --resume"),
        ("bad", ["--resume"], "is not a Parquet part with an id"),
    ],
)
def test_parquet_user_errors_are_one_line_exit_2(
    tmp_path: Path, out: str | None, extra: list[str], message: str
) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("the cat\n")
    (tmp_path / "file").write_text("x")
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "part-00000.parquet").write_bytes(b"")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "part-00000.parquet").write_bytes(b"not parquet")
    argv = ["--model", str(tiny_model()), str(inp), "--out-format", "parquet", *extra]
    rc, recs, err = run_cli(argv if out is None else [*argv, "--out", str(tmp_path / out)])
    assert rc == 2 and recs == []
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("seqpred: error: ")
