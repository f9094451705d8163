"""Damage found and salvaged (service/durability/salvage.py, ``seqpred durability check|salvage``): every intact
record kept, the session that lost a change dropped and named, the damaged file moved aside and never deleted,
not even by the snapshots of the server that starts on the salvaged directory."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_helpers import tiny_model

from service.durability import recovery, salvage, snapshot, statedir, wal
from service.durability.cli import main_durability
from service.durability.local import LocalLog
from service.runtime.bundle import load_bundle
from service.runtime.onnx_runtime import Runtime
from service.store.memory import MemoryStore

F32 = np.dtype(np.float32)


def history(*sessions: str) -> tuple[bytes, list[int]]:
    """Each session created with 3 tokens, then 2 more each, interleaved; with the records' offsets."""
    recs = []
    for s in sessions:
        recs += [wal.encode_create(1.0, "", s, 3), wal.encode_advance(1.0, "", s, np.array([1, 2, 3]), 3)]
    recs += [wal.encode_advance(2.0, "", s, np.array([4, 5]), 5) for s in sessions]
    offsets = [int(o) for o in np.cumsum([0] + [len(r) for r in recs[:-1]])]
    return b"".join(recs), offsets


def state_dir(d: Path, seg: bytes, n: int = 0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "meta.json").write_text(json.dumps({"format": 1, "widths": [4], "dtype": "float32"}))
    wal.segment_path(d, n).write_bytes(seg)
    return d


def positions(d: Path) -> dict[str, int]:
    return {k[1]: s.position for k, s in recovery.load(d, [4], F32).sessions.items()}


def test_every_flipped_byte_of_a_record_is_salvaged_to_the_other_sessions_intact(tmp_path: Path) -> None:
    """Record 2 (session a's first tokens) damaged at each of its bytes in turn: a is dropped (named), b and c keep
    every token, the damaged segment is kept in damaged/ byte for byte."""
    data, offsets = history("a", "b", "c")
    unattributed = 0
    for pos in range(offsets[1], offsets[2]):
        d = tmp_path / f"d{pos}"
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        state_dir(d, bytes(bad))
        report = salvage.check(d)
        (dmg,) = report.damage
        assert (dmg.offset, dmg.end) == (offsets[1], offsets[2])
        if not dmg.sessions:  # the damaged bytes no longer say whose record it was
            unattributed += 1
            with pytest.raises(ValueError, match="--accept-unknown-loss"):
                salvage.salvage(report)
        else:
            assert dmg.sessions == [("", "a")]
        assert report.lost == [("", "a")]  # attributed, or its later record no longer fits
        salvage.salvage(report, accept_unknown=True)
        assert positions(d) == {"b": 5, "c": 5}, pos
        assert (d / "damaged" / "log-000000000000.seg").read_bytes() == bytes(bad)
        assert wal.scan(wal.segment_path(d, 0).read_bytes()).problem == ""
    assert unattributed == 1  # the id's one byte: 'a' turned into a byte as far from 'b' and 'c' as from 'a'


def test_the_dropped_session_is_closed_when_later_records_keep_it_alive(tmp_path: Path) -> None:
    data, offsets = history("a", "b")
    bad = bytearray(data)
    bad[offsets[1] + 30] ^= 0x01  # a's first tokens: its later advance (position 5) no longer fits
    d = state_dir(tmp_path / "d", bytes(bad))
    report = salvage.check(d)
    assert report.lost == [("", "a")] and report.drop == [("", "a")] and report.kept == 1
    done = salvage.salvage(report)
    assert any("dropped 1 sessions (a CLOSE record each): a" in line for line in done)
    assert positions(d) == {"b": 5}
    note = json.loads((d / "damaged" / "salvage.json").read_text())
    assert note["lost"] == [["", "a"]] and note["damage"][0]["offset"] == offsets[1]


def test_damage_in_an_older_segment_is_salvaged(tmp_path: Path) -> None:
    data, offsets = history("a", "b")
    bad = bytearray(data)
    bad[offsets[3] + 20] ^= 0x08  # b's first tokens
    d = state_dir(tmp_path / "d", bytes(bad), 0)
    wal.segment_path(d, 1).write_bytes(wal.encode_advance(3.0, "", "a", 6, 6))
    report = salvage.check(d)
    assert [x.path.name for x in report.damage] == ["log-000000000000.seg"] and report.lost == [("", "b")]
    salvage.salvage(report)
    assert positions(d) == {"a": 6}


def test_a_damaged_snapshot_row_loses_its_session_only(tmp_path: Path) -> None:
    d = tmp_path / "d"
    state_dir(d, wal.encode_advance(3.0, "", "a", 6, 4) + wal.encode_advance(3.0, "", "b", 6, 6), 2)
    header = {"dtype": "float32", "widths": [4], "sessions": [["", "a", 3, 1.0], ["", "b", 5, 1.0]]}
    path = wal.snapshot_path(d, 2)
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    snapshot.write_snapshot(path, header, rows)
    bad = bytearray(path.read_bytes())
    bad[len(bad) - 12 - 16 + 5] ^= 0x01  # row 1: b's state
    path.write_bytes(bytes(bad))
    report = salvage.check(d)
    assert report.lost == [("", "b")] and report.drop == [("", "b")]
    salvage.salvage(report)
    loaded = recovery.load(d, [4], F32)
    assert {k[1]: s.position for k, s in loaded.sessions.items()} == {"a": 4}
    assert loaded.rows is not None and np.array_equal(loaded.rows[0], rows[0])
    assert (d / "damaged" / path.name).read_bytes() == bytes(bad)


def test_a_torn_tail_alone_is_not_damage(tmp_path: Path, capsys: Any) -> None:
    data, _ = history("a")
    torn = wal.encode_close(3.0, "", "a", "end")[:-1]
    d = state_dir(tmp_path / "d", data + torn)
    assert main_durability(["check", str(d)]) == 0
    out = capsys.readouterr()
    assert f"torn tail: the last {len(torn)} bytes" in out.out and out.err == ""
    assert main_durability(["salvage", str(d)]) == 2
    assert "has no damage; nothing to salvage" in capsys.readouterr().err


def test_the_command_checks_salvages_and_refuses_what_it_should(tmp_path: Path, capsys: Any) -> None:
    data, offsets = history("a", "b")
    bad = bytearray(data)
    bad[offsets[1] + 25] ^= 0x20
    d = state_dir(tmp_path / "d", bytes(bad))
    assert main_durability(["check", str(d), "--json"]) == 2  # (creates the lock file, as a server would)
    out = capsys.readouterr()
    assert json.loads(out.out.splitlines()[-1])["lost"] == [["", "a"]]
    assert out.err.splitlines() == [
        f"seqpred: error: log segment {str(wal.segment_path(d, 0))!r} is damaged at byte {offsets[1]} (a checksum "
        f"mismatch; intact records follow at byte {offsets[2]})"
    ]
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    assert main_durability(["check", str(d)]) == 2
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # check changes nothing
    capsys.readouterr()
    assert main_durability(["salvage", str(d)]) == 0
    out = capsys.readouterr()
    assert "seqpred: warning: sessions that lost a change (gone after salvage): a" in out.err
    assert positions(d) == {"b": 5}
    assert main_durability(["check", str(d)]) == 0
    assert main_durability(["check", str(tmp_path)]) == 2
    assert "not a seqpred state directory" in capsys.readouterr().err


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime(load_bundle(tiny_model()), "cpu")


def test_no_snapshot_ever_deletes_a_damaged_file(tmp_path: Path, runtime: Runtime) -> None:
    """A server started on the salvaged directory compacts its log at once (it replayed records): the damaged
    segment in damaged/ stays, and so does salvage.json."""
    data, offsets = history("a", "b")
    bad = bytearray(data)
    bad[offsets[1] + 25] ^= 0x20
    d = state_dir(tmp_path / "d", bytes(bad))
    (d / "meta.json").unlink()  # the server writes its own
    salvage.salvage(salvage.check(d))
    aside = sorted(p.name for p in (d / "damaged").iterdir())
    store = MemoryStore(runtime.new_state_memory(8), idle_timeout=0)
    log = LocalLog(d, "sync")
    assert log.recover(store, runtime) == 1

    async def snap() -> None:
        log.start()
        assert await log.snapshot()
        await log.close()

    asyncio.run(snap())
    assert wal.numbered(d, wal.SEGMENT_RE)[0][0] > 0  # the salvaged segments were compacted away
    assert sorted(p.name for p in (d / "damaged").iterdir()) == aside
    assert (d / "damaged" / "log-000000000000.seg").read_bytes() == bytes(bad)


def test_a_directory_in_use_is_left_alone_and_a_second_salvage_keeps_the_first_damage(
    tmp_path: Path, capsys: Any
) -> None:
    data, offsets = history("a", "b", "c")
    bad = bytearray(data)
    bad[offsets[1] + 25] ^= 0x20
    d = state_dir(tmp_path / "d", bytes(bad))
    fd = statedir.lock(d)  # a running server holds it
    assert fd is not None
    try:
        assert main_durability(["salvage", str(d)]) == 2
        assert "is in use by a running server; stop it first" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert main_durability(["salvage", str(d)]) == 0
    again = bytearray(wal.segment_path(d, 0).read_bytes())  # the salvaged segment: b's and c's records
    again[len(again) // 2] ^= 0x20
    wal.segment_path(d, 0).write_bytes(bytes(again))
    assert main_durability(["salvage", str(d), "--accept-unknown-loss"]) == 0
    aside = sorted(p.name for p in (d / "damaged").iterdir())
    assert aside == ["log-000000000000.seg", "log-000000000000.seg.1", "salvage.json", "salvage.json.1"]
    assert (d / "damaged" / "log-000000000000.seg").read_bytes() == bytes(bad)
    assert (d / "damaged" / "log-000000000000.seg.1").read_bytes() == bytes(again)
