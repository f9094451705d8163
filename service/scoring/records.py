"""Offline scoring output: the JSONL records (:class:`RecordFormatter`; every field in ``docs/scoring.md``) and
:class:`RecordWriter`, which appends them one JSON object per line, flushed in groups; with ``resume`` it first
drops an incomplete last line left by an interrupted run and collects the ids already written."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from model.errors import ConfigError
from service.scoring.inputs import STDIN, Item, id_key
from service.scoring.scorer import SeqScore

__all__ = ["RecordFormatter", "RecordWriter", "dumps", "round_floats"]


def round_floats(values: NDArray[Any]) -> list[float | None]:
    """float32 values as short JSON numbers (6 decimals: float32 keeps ~7 significant digits); NaN -> null."""
    out: list[float | None] = np.round(values.astype(np.float64), 6).tolist()
    return [None if v is None or math.isnan(v) else v for v in out]


class RecordWriter:
    """Appends JSON lines to OUTPUT (a file, or stdout for ``-``), one ``write`` per group, flushed each time.

    A file that exists needs ``resume`` (keep it, skip its ids) or ``overwrite`` (replace it); otherwise
    ConfigError. With ``resume``, an incomplete last line (a run killed mid-write) is cut off and reported in
    :attr:`dropped_bytes`; every complete line must be a JSON object with an ``id``.

    The file is opened (created, or truncated for ``overwrite``) at the first record, or by ``close(ok=True)``:
    a run that fails or is interrupted before its first record leaves no empty file behind (one that would stop
    the retry) and leaves a file it was to overwrite as it was.
    """

    def __init__(
        self, path: str | None, *, resume: bool = False, overwrite: bool = False, stdout: IO[str] | None = None
    ) -> None:
        self.path = None if path in (None, STDIN) else Path(path)
        self.done: set[str] = set()
        self.dropped_bytes = 0
        self._f: IO[str]
        if self.path is None:
            if resume:
                raise ConfigError("--resume: needs --out FILE (ids already scored are read from it)")
            self._f = stdout if stdout is not None else sys.stdout
            self._own = False
            return
        p = self.path
        if p.exists() and not p.is_file():
            raise ConfigError(f"--out: {str(p)!r} exists and is not a regular file")
        if p.exists() and not resume and not overwrite:
            raise ConfigError(
                f"--out: {str(p)!r} already exists; pass --resume to skip the ids it holds or --overwrite to replace it"
            )
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            if resume and p.exists():
                self._load(p)
            if not os.access(p if p.exists() else p.parent, os.W_OK):
                raise PermissionError(errno.EACCES, "Permission denied")
        except OSError as e:
            raise ConfigError(f"--out: cannot write {str(p)!r} ({e.strerror or e})") from None
        self._mode = "a" if resume else "w"
        self._own = True
        self._opened = False

    def _load(self, p: Path) -> None:
        with open(p, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # an interrupted run left half a line
                self.dropped_bytes = len(data) - end
                f.truncate(end)
        for lineno, raw in enumerate(io.BytesIO(data[:end]), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ConfigError(
                    f"--out: {str(p)!r} line {lineno} is not JSON (not written by seqpred score?)"
                ) from None
            if not isinstance(obj, dict) or "id" not in obj:
                raise ConfigError(f"--out: {str(p)!r} line {lineno} has no 'id' (not written by seqpred score?)")
            self.done.add(id_key(obj["id"]))

    def _open(self) -> None:
        assert self.path is not None
        try:
            self._f = open(self.path, self._mode, encoding="utf-8")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise ConfigError(f"--out: cannot write {str(self.path)!r} ({e.strerror or e})") from None
        self._opened = True

    def write(self, lines: list[str]) -> None:
        """Write complete lines (each already ending in a newline) and flush them."""
        if lines:
            if self._own and not self._opened:
                self._open()
            self._f.write("".join(lines))
            self._f.flush()

    def close(self, ok: bool = True) -> None:
        """Close OUTPUT; with ``ok`` (the run succeeded) a run without records still leaves its (empty) file."""
        if not self._own:
            self._f.flush()
            return
        if ok and not self._opened:
            self._open()
        if self._opened:
            self._f.close()
            self._opened = False


def dumps(record: dict[str, Any]) -> str:
    """One output line."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"


class RecordFormatter:
    """Turns ``(item, score)`` into the output record (a dict; see docs/scoring.md for every field)."""

    def __init__(self, vocab_texts: Sequence[str], per_token: bool, top_k: int, unknown: bool) -> None:
        self.texts = list(vocab_texts)
        self.per_token = per_token
        self.top_k = top_k
        self.unknown = unknown

    def _preds(self, ids: NDArray[np.int64], lps: NDArray[np.float32]) -> list[dict[str, Any]]:
        return [
            {"id": i, "token": self.texts[i], "logprob": lp}
            for i, lp in zip(ids.tolist(), round_floats(lps), strict=True)
        ]

    def __call__(self, item: Item, s: SeqScore) -> dict[str, Any]:
        n = s.num_tokens
        scored = max(n - 1, 0)
        total = s.total_logprob
        nats = -total / scored if scored else None
        rec: dict[str, Any] = {
            "id": item.id,
            "num_tokens": n,
            "scored_tokens": scored,
            "total_logprob": total,
            "nats_per_token": nats,
            "perplexity": None if nats is None else math.exp(min(nats, 700.0)),
        }
        if self.unknown:
            rec["unknown_tokens"] = item.unknown
        if self.per_token:
            ids = item.ids.tolist()
            rec["token_ids"] = ids
            rec["token_texts"] = [self.texts[i] for i in ids]
            rec["token_logprobs"] = ([None] if n else []) + round_floats(s.token_logprobs)
        if self.top_k:
            assert s.top_ids is not None and s.top_logprobs is not None
            rows = [self._preds(s.top_ids[t], s.top_logprobs[t]) for t in range(n)]
            rec["top_k"] = ([None] if n else []) + rows[:-1]
            rec["next_top_k"] = rows[-1] if n else None
        return rec
