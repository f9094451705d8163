"""The snapshot format: round trip, a checksum per session row, damage reported with its byte and session, and the
earlier format (one checksum for the whole file) still read."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from service.durability import snapshot, wal


def header(n: int, dtype: str = "float32", widths: list[int] | None = None) -> dict[str, object]:
    return {"dtype": dtype, "widths": widths or [4, 4, 1], "sessions": [["p", f"s{i}", i, 1.5] for i in range(n)]}


@pytest.mark.parametrize("n", [0, 1, 5])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_snapshot_round_trip(tmp_path: Path, n: int, dtype: str) -> None:
    h = header(n, dtype)
    rows = np.random.default_rng(n).standard_normal((n, 9)).astype(dtype)
    path = wal.snapshot_path(tmp_path, 7)
    nbytes = snapshot.write_snapshot(path, h, rows)
    assert path.stat().st_size == nbytes and not list(tmp_path.glob("*.tmp"))
    got_header, got = snapshot.read_snapshot(path)
    assert got_header == h and got.dtype == np.dtype(dtype) and np.array_equal(got, rows)
    assert wal.numbered(tmp_path, wal.SNAPSHOT_RE) == [(7, path)]


def test_every_flipped_byte_is_found_and_a_bad_row_names_its_session(tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    rows = np.arange(3 * 9, dtype=np.float32).reshape(3, 9)
    snapshot.write_snapshot(path, header(3), rows)
    good = path.read_bytes()
    head_end = good.index(b"]]}") + 3 + 4  # the header JSON, then its checksum
    row_bytes = 9 * 4
    for pos in range(len(good)):
        bad = bytearray(good)
        bad[pos] ^= 0x10
        path.write_bytes(bytes(bad))
        snap = snapshot.inspect_snapshot(path)
        assert snap.damage is not None, pos
        with pytest.raises(snapshot.SnapshotDamage):
            snapshot.read_snapshot(path)
        if head_end <= pos < head_end + 3 * row_bytes:  # a state row: the others stay readable
            i = (pos - head_end) // row_bytes
            assert snap.bad_rows == [i] and snap.damage.offset == head_end + i * row_bytes
            assert f"session 's{i}' (row {i})" in snap.damage.why
            assert snap.rows is not None and snap.header == header(3)
            others = [k for k in range(3) if k != i]
            assert np.array_equal(snap.rows[others], rows[others])
        elif pos < head_end:
            assert snap.header is None and snap.damage.offset <= pos


def test_a_cut_or_foreign_file_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    snapshot.write_snapshot(path, header(2), np.ones((2, 9), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(snapshot.SnapshotDamage, match="bytes where"):
        snapshot.read_snapshot(path)
    path.write_bytes(b"not a snapshot at all")
    with pytest.raises(snapshot.SnapshotDamage, match="bad magic"):
        snapshot.read_snapshot(path)


def test_format_1_is_still_read(tmp_path: Path) -> None:
    """Snapshots written before the per-row checksums: one crc32 over the whole file."""
    h = header(2)
    rows = np.random.default_rng(0).standard_normal((2, 9)).astype(np.float32)
    head = json.dumps(h).encode()
    body = snapshot.MAGIC1 + struct.pack("<Q", len(head)) + head + rows.astype("<f4").tobytes()
    path = tmp_path / "old.bin"
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    got_header, got = snapshot.read_snapshot(path)
    assert got_header == h and np.array_equal(got, rows)
    bad = bytearray(path.read_bytes())
    bad[-10] ^= 1
    path.write_bytes(bytes(bad))
    with pytest.raises(snapshot.SnapshotDamage, match="format 1"):
        snapshot.read_snapshot(path)
