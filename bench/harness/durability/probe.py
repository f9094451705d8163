"""The damage probe of issue 14 on both stores: three changes committed (each synced, as ``sync`` acknowledges
them), the files copied as a crash leaves them, one byte flipped inside the 2nd change, then a recovery.

The hand-written log refuses to start (damage, not a torn tail). SQLite in WAL mode checks each WAL frame's
checksum when it opens the database after a crash and treats the first frame that fails as the end of the log:
the commits after it are dropped without an error (``PRAGMA quick_check`` says ok).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from harness.durability.sqlite_log import DB_NAME, connect
from service.durability import recovery, wal
from service.errors import StateDirError

RECORDS = [wal.encode_create(1.0, "", f"s{i}") for i in range(3)]


def probe_log(directory: Path) -> dict[str, Any]:
    directory.mkdir(parents=True)
    data = bytearray(b"".join(RECORDS))
    second = len(RECORDS[0]) + len(RECORDS[1]) // 2
    data[second] ^= 0xFF
    wal.segment_path(directory, 0).write_bytes(bytes(data))
    try:
        loaded = recovery.load(directory, [1], np.dtype(np.float32))
    except StateDirError as e:
        return {"starts": False, "kept": None, "said": str(e)}
    return {"starts": True, "kept": len(loaded.sessions), "said": ""}


def probe_sqlite(directory: Path) -> dict[str, Any]:
    directory.mkdir(parents=True)
    db = connect(directory / DB_NAME)
    db.execute("PRAGMA wal_autocheckpoint=0")  # as between two snapshots: the commits are in the WAL
    for i, rec in enumerate(RECORDS):
        db.execute("BEGIN")
        db.execute("INSERT INTO log (seq, rec) VALUES (?, ?)", (i, rec[8:]))
        db.execute("COMMIT")
    image = directory.parent / (directory.name + "-crash")
    image.mkdir()
    for name in (DB_NAME, DB_NAME + "-wal"):
        shutil.copy(directory / name, image / name)  # what kill -9 leaves: the files as they are
    db.close()
    wal_file = image / (DB_NAME + "-wal")
    data = bytearray(wal_file.read_bytes())
    frames = [i for i in range(len(data)) if data[i : i + len(RECORDS[1]) - 8] == RECORDS[1][8:]]
    data[frames[0] + 4] ^= 0xFF  # inside the 2nd change, in the WAL frame its commit wrote
    wal_file.write_bytes(bytes(data))
    try:
        db = sqlite3.connect(image / DB_NAME)
        kept = db.execute("SELECT count(*) FROM log").fetchone()[0]
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        db.close()
    except sqlite3.Error as e:
        return {"starts": False, "kept": None, "said": str(e)}
    return {"starts": True, "kept": int(kept), "said": f"quick_check: {check}"}
