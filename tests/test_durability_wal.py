"""The session log's format: records (round trip, torn tails, checksum mismatches) and finding intact records after
damage (resync). Snapshots: test_durability_snapshot.py."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.durability import wal

names = st.text(max_size=40)
walls = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@st.composite
def records(draw: st.DrawFn) -> wal.Record:
    kind = draw(st.sampled_from([wal.CREATE, wal.RESET, wal.ADVANCE, wal.CLOSE, wal.UNDO]))
    wall, principal, sid = draw(walls), draw(names), draw(names)
    if kind == wal.ADVANCE:
        tokens = np.array(draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50)), dtype=np.int64)
        return wal.Record(kind, wall, principal, sid, tokens, draw(st.integers(0, 2**63 - 1)))
    if kind == wal.CLOSE:
        return wal.Record(kind, wall, principal, sid, reason=draw(st.sampled_from(wal.REASONS)))
    if kind == wal.UNDO:
        return wal.Record(kind, wall, principal, sid)
    return wal.Record(kind, wall, principal, sid, then=draw(st.integers(0, 2**32 - 1)))


def encode(r: wal.Record) -> bytes:
    if r.kind == wal.CREATE:
        return wal.encode_create(r.wall, r.principal, r.session_id, r.then)
    if r.kind == wal.RESET:
        return wal.encode_reset(r.wall, r.principal, r.session_id, r.then)
    if r.kind == wal.UNDO:
        return wal.encode_undo(r.wall, r.principal, r.session_id)
    if r.kind == wal.CLOSE:
        return wal.encode_close(r.wall, r.principal, r.session_id, r.reason)
    assert r.tokens is not None
    tokens: np.ndarray | int = int(r.tokens[0]) if len(r.tokens) == 1 else r.tokens
    return wal.encode_advance(r.wall, r.principal, r.session_id, tokens, r.position)


def same(a: wal.Record, b: wal.Record) -> bool:
    toks = (a.tokens is None and b.tokens is None) or (
        a.tokens is not None and b.tokens is not None and np.array_equal(a.tokens, b.tokens)
    )
    return toks and (a.kind, a.wall, a.principal, a.session_id, a.position, a.reason, a.then) == (
        b.kind, b.wall, b.principal, b.session_id, b.position, b.reason, b.then,
    )  # fmt: skip


@settings(deadline=None)
@given(st.lists(records(), max_size=20))
def test_records_round_trip(recs: list[wal.Record]) -> None:
    sc = wal.scan(b"".join(encode(r) for r in recs))
    assert sc.problem == "" and sc.good == sc.size
    assert len(sc.records) == len(recs) and all(same(a, b) for a, b in zip(sc.records, recs, strict=True))


@settings(max_examples=200, deadline=None)
@given(st.lists(records(), min_size=1, max_size=10), st.data())
def test_a_torn_tail_keeps_exactly_the_whole_records(recs: list[wal.Record], data: st.DataObject) -> None:
    parts = [encode(r) for r in recs]
    blob = b"".join(parts)
    cut = data.draw(st.integers(0, len(blob)))
    sc = wal.scan(blob[:cut])
    ends = np.cumsum([len(p) for p in parts])
    whole = int(np.searchsorted(ends, cut, side="right"))
    assert len(sc.records) == whole and all(same(a, b) for a, b in zip(sc.records, recs, strict=False))
    assert sc.good == (int(ends[whole - 1]) if whole else 0)
    assert (sc.problem == "") == (sc.good == cut)
    if sc.problem:
        assert "torn" in sc.problem


@settings(max_examples=200, deadline=None)
@given(st.lists(records(), min_size=1, max_size=10), st.data())
def test_a_flipped_payload_byte_stops_the_scan_at_its_record(recs: list[wal.Record], data: st.DataObject) -> None:
    parts = [encode(r) for r in recs]
    k = data.draw(st.integers(0, len(parts) - 1))
    pos = data.draw(st.integers(8, len(parts[k]) - 1))  # in the payload, after length and checksum
    bad = bytearray(parts[k])
    bad[pos] ^= 1 << data.draw(st.integers(0, 7))
    sc = wal.scan(b"".join(parts[:k]) + bytes(bad) + b"".join(parts[k + 1 :]))
    assert len(sc.records) == k and sc.good == sum(len(p) for p in parts[:k])
    assert sc.problem == "a checksum mismatch"


def test_a_corrupt_length_is_reported_not_trusted() -> None:
    rec = wal.encode_create(1.0, "", "a")
    sc = wal.scan(rec + struct.pack("<II", wal.MAX_RECORD + 1, 0) + b"x" * 100)
    assert len(sc.records) == 1 and sc.good == len(rec)
    assert sc.problem == f"a record length of {wal.MAX_RECORD + 1} bytes"


def test_a_record_with_a_good_checksum_but_an_unknown_kind_is_malformed() -> None:
    import zlib

    payload = bytes([9]) + struct.pack("<dHH", 0.0, 0, 0)
    sc = wal.scan(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)
    assert sc.records == [] and sc.problem == "a malformed record (unknown record kind 9)"
