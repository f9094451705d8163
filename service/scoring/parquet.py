"""Parquet output (``--out-format parquet``): OUTPUT is a directory of ``part-NNNNN.parquet`` files, in input order
(by name, then row), each holding the JSONL record's fields as columns (:func:`record_schema`; ``id`` as a string).

A part file is written as ``part-NNNNN.parquet.tmp`` and renamed when complete, so a killed run leaves only complete
parts plus at most one ``.tmp``, which ``--resume`` removes (and reports) before reading the ids of the complete
parts. pyarrow is imported only here, when Parquet is asked for (it comes with ``pip install 'seqpred[ray]'``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from model.errors import ConfigError
from service.scoring.inputs import STDIN, id_key

__all__ = ["ROWS_PER_FILE", "ParquetWriter", "import_pyarrow", "record_schema", "to_table"]

#: Rows per part file (a part is closed, and so survives a kill, once it holds this many) and per row group.
ROWS_PER_FILE = 65_536
ROWS_PER_GROUP = 8192
_PART = re.compile(r"part-(\d{5,})\.parquet")
_INT = re.compile(r"-?(0|[1-9]\d*)")


def import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # the writer and reader below
    except ImportError:
        raise ConfigError("--out-format parquet needs pyarrow: pip install 'seqpred[ray]'") from None
    return pyarrow


def record_schema(per_token: bool, top_k: int, unknown: bool) -> Any:
    """The Arrow schema of the records ``RecordFormatter`` makes with these flags (docs/scoring.md, *Output*)."""
    pa = import_pyarrow()
    pred = pa.struct([("id", pa.int64()), ("token", pa.string()), ("logprob", pa.float64())])
    fields = [
        ("id", pa.string()),
        ("num_tokens", pa.int64()),
        ("scored_tokens", pa.int64()),
        ("total_logprob", pa.float64()),
        ("nats_per_token", pa.float64()),
        ("perplexity", pa.float64()),
    ]
    if unknown:
        fields.append(("unknown_tokens", pa.int64()))
    if per_token:
        fields += [
            ("token_ids", pa.list_(pa.int64())),
            ("token_texts", pa.list_(pa.string())),
            ("token_logprobs", pa.list_(pa.float64())),
        ]
    if top_k:
        fields += [("top_k", pa.list_(pa.list_(pred))), ("next_top_k", pa.list_(pred))]
    return pa.schema(fields)


def to_table(records: list[dict[str, Any] | None], schema: Any) -> Any:
    """Records (None: an all-null row) as an Arrow table with ``schema``; ids become strings."""
    pa = import_pyarrow()
    rows = [{} if r is None else {**r, "id": str(r["id"])} for r in records]
    return pa.Table.from_pylist(rows, schema=schema)


class ParquetWriter:
    """Writes records or Arrow tables into OUTPUT's part files; the interface of ``RecordWriter``.

    ``done`` holds the ids already in OUTPUT (with ``resume``) in :func:`id_key` form: a stored id ``"7"`` counts
    as both ``7`` and ``"7"`` (Parquet keeps ids as strings). ``dropped`` lists the ``.tmp`` parts removed.
    """

    def __init__(self, path: str | None, schema: Any, *, resume: bool = False, overwrite: bool = False) -> None:
        self.pa = import_pyarrow()
        if path in (None, STDIN):
            raise ConfigError("--out-format parquet: needs --out DIR (a directory of part-NNNNN.parquet files)")
        assert path is not None
        self.dir = Path(path)
        self.schema = schema
        self.done: set[str] = set()
        self.dropped: list[str] = []
        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"--out: {path!r} exists and is not a directory (Parquet output is a directory)")
        ours = sorted(p for p in self.dir.glob("part-*.parquet*") if _PART.fullmatch(p.name.removesuffix(".tmp")))
        if ours and not resume and not overwrite:
            raise ConfigError(
                f"--out: {path!r} already holds part files; pass --resume to skip the ids they hold or --overwrite "
                "to replace them"
            )
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for p in ours:
                if overwrite or p.suffix == ".tmp":
                    p.unlink()
                    self.dropped += [p.name] if not overwrite else []
                else:
                    self._load(p)
        except OSError as e:
            raise ConfigError(f"--out: cannot write {path!r} ({e.strerror or e})") from None
        done = [int(m.group(1)) for p in self.dir.glob("part-*.parquet") if (m := _PART.fullmatch(p.name))]
        self.next = max(done, default=-1) + 1
        self._pending: list[Any] = []
        self._pending_rows = 0
        self._file: Any = None
        self._rows = 0

    def _load(self, p: Path) -> None:
        try:
            ids = self.pa.parquet.read_table(p, columns=["id"]).column("id").to_pylist()
        except (self.pa.ArrowException, KeyError):
            raise ConfigError(f"--out: {str(p)!r} is not a Parquet part with an id (not written by seqpred?)") from None
        for s in ids:
            self.done.add(id_key(s))
            if _INT.fullmatch(s):
                self.done.add(id_key(int(s)))

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append records (the ``RecordFormatter`` dicts)."""
        if records:
            self.write_table(to_table(list(records), self.schema))

    def write_table(self, table: Any) -> None:
        """Append an Arrow table with :attr:`schema`'s columns."""
        while table.num_rows:
            room = ROWS_PER_FILE - self._rows - self._pending_rows
            self._pending.append(table.slice(0, room))
            self._pending_rows += min(room, table.num_rows)
            table = table.slice(room)
            if self._rows + self._pending_rows >= ROWS_PER_FILE:
                self._close_part()
            elif self._pending_rows >= ROWS_PER_GROUP:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._file is None:
            self._file = self.pa.parquet.ParquetWriter(self._tmp(), self.schema)
        group = self.pa.concat_tables(self._pending)
        self._file.write_table(group)
        self._rows += group.num_rows
        self._pending, self._pending_rows = [], 0

    def _tmp(self) -> Path:
        return self.dir / f"part-{self.next:05d}.parquet.tmp"

    def _close_part(self) -> None:
        self._flush()
        if self._file is not None:
            self._file.close()
            self._tmp().rename(self._tmp().with_suffix(""))
            self._file, self._rows = None, 0
            self.next += 1

    def close(self, ok: bool = True) -> None:
        """Finish the open part (``ok`` as for :meth:`RecordWriter.close`: parts hold rows, so none is ever empty)."""
        self._close_part()
