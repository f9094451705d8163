"""recovery.load on damaged state directories: a torn tail is truncated (with a warning), anything else that is bad
stops the load with one line naming the file and the byte, and nothing in the directory is changed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.durability import recovery, snapshot, wal
from service.errors import StateDirError

F32 = np.dtype(np.float32)


def segment(*sessions: str) -> tuple[bytes, list[int]]:
    """Each session created with one token, then one more token each, interleaved; with the records' offsets."""
    recs = [wal.encode_create(1.0, "", s, 1) for s in sessions]
    recs = [r for s, c in zip(sessions, recs, strict=True) for r in (c, wal.encode_advance(1.0, "", s, 7, 1))]
    recs += [wal.encode_advance(2.0, "", s, 9, 2) for s in sessions]
    offsets = list(np.cumsum([0] + [len(r) for r in recs[:-1]]))
    return b"".join(recs), [int(o) for o in offsets]


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_a_torn_tail_is_truncated_with_a_warning(tmp_path: Path, caplog: Any) -> None:
    data, _ = segment("a", "b")
    for tail in (wal.encode_advance(3.0, "", "a", 5, 3)[:-2], b"\x00" * 11):  # cut short; zeros never written over
        path = wal.segment_path(tmp_path, 0)
        path.write_bytes(data + tail)
        with caplog.at_level(logging.WARNING, logger="seqpred.durability"):
            loaded = recovery.load(tmp_path, [4], F32)
        assert {k: s.position for k, s in loaded.sessions.items()} == {("", "a"): 2, ("", "b"): 2}
        assert loaded.truncated_bytes == len(tail) and path.read_bytes() == data
        assert caplog.records[-1].getMessage() == "session log: truncated a torn tail"


def test_a_last_record_failing_its_checksum_is_a_torn_tail(tmp_path: Path) -> None:
    """Its bytes may never have reached the disk (a power cut after the size grew): nothing follows it, so it
    cannot be told from a torn write, and it is truncated."""
    data, _ = segment("a")
    last = bytearray(wal.encode_advance(3.0, "", "a", 5, 3))
    last[-1] ^= 0xFF
    wal.segment_path(tmp_path, 0).write_bytes(data + bytes(last))
    loaded = recovery.load(tmp_path, [4], F32)
    assert loaded.sessions[("", "a")].position == 2 and loaded.truncated_bytes == len(last)


def test_every_byte_flipped_in_the_middle_of_the_newest_segment_stops_the_load(tmp_path: Path) -> None:
    """The probe of issue 14: one byte of the 2nd record of the newest segment. Records follow it, so it is damage,
    not a torn tail: one line naming the file and the record's first byte, and the directory unchanged."""
    snapshot.write_snapshot(
        wal.snapshot_path(tmp_path, 3),
        {"dtype": "float32", "widths": [4], "sessions": []},
        np.zeros((0, 4), np.float32),
    )
    wal.segment_path(tmp_path, 1).write_bytes(b"stale: before the snapshot")
    data, offsets = segment("a", "b", "c")
    path = wal.segment_path(tmp_path, 3)
    second = range(offsets[1], offsets[2])
    for pos in second:
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        path.write_bytes(bytes(bad))
        before = files(tmp_path)
        with pytest.raises(StateDirError) as e:
            recovery.load(tmp_path, [4], F32)
        msg = str(e.value)
        assert "\n" not in msg
        assert msg.startswith(f"--state-dir: log segment {str(path)!r} is damaged at byte {offsets[1]} (")
        assert "so it is not a torn tail" in msg and f"'seqpred durability salvage {tmp_path}'" in msg
        assert files(tmp_path) == before  # nothing truncated, nothing deleted


def test_damage_in_an_older_segment_stops_the_load(tmp_path: Path) -> None:
    data, offsets = segment("a", "b")
    bad = bytearray(data)
    bad[offsets[2] + 12] ^= 0x01
    wal.segment_path(tmp_path, 0).write_bytes(bytes(bad))
    wal.segment_path(tmp_path, 1).write_bytes(wal.encode_advance(3.0, "", "a", 5, 3))
    with pytest.raises(
        StateDirError, match=rf"log-000000000000\.seg' is damaged at byte {offsets[2]} \(a checksum mismatch"
    ):
        recovery.load(tmp_path, [4], F32)
    # its tail cut short is damage too: a later segment exists, so it was not the write a crash cut
    wal.segment_path(tmp_path, 0).write_bytes(data[:-3])
    with pytest.raises(StateDirError, match="later segments depend on it"):
        recovery.load(tmp_path, [4], F32)


def test_damage_in_a_snapshot_stops_the_load_naming_the_byte_and_the_session(tmp_path: Path) -> None:
    header = {"dtype": "float32", "widths": [4], "sessions": [["", "a", 3, 1.0], ["", "b", 5, 1.0]]}
    path = wal.snapshot_path(tmp_path, 2)
    snapshot.write_snapshot(path, header, np.ones((2, 4), np.float32))
    data = bytearray(path.read_bytes())
    row_b = len(data) - 4 * 3 - 16  # rows, then two row checksums and theirs
    data[row_b + 1] ^= 0x40
    path.write_bytes(bytes(data))
    wal.segment_path(tmp_path, 2).write_bytes(wal.encode_advance(3.0, "", "a", 5, 4))
    before = files(tmp_path)
    with pytest.raises(StateDirError) as e:
        recovery.load(tmp_path, [4], F32)
    assert str(e.value).startswith(
        f"--state-dir: snapshot {str(path)!r} is damaged at byte {row_b} "
        "(the state of session 'b' (row 1) fails its checksum)"
    )
    assert files(tmp_path) == before
