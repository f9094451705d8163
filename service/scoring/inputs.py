"""Offline scoring input: reading sequences (text, JSONL, a directory, stdin), lazily, as token ids.

Inputs, read lazily one sequence at a time so that memory does not grow with the input:

* a text file: one sequence per line (the line without its ``\\n`` / ``\\r\\n``); id = the 1-based line number;
  blank lines are skipped (their numbers are not reused, so ids still name lines);
* JSONL (``.jsonl`` / ``.ndjson``, or ``--format jsonl``): ``{"id": ..., "text": "..."}`` or
  ``{"id": ..., "tokens": [ids]}``; ``id`` a string or an integer, the line number when absent; other keys are
  ignored; blank lines are skipped;
* a directory: every regular file below it (sorted by path, hidden names skipped) is one sequence, its whole
  content; id = the path relative to the directory (``/``-separated);
* ``-``: standard input, as text lines (or JSONL with ``--format jsonl``). ``.gz`` files are decompressed.

A line (or file) that cannot be turned into a sequence gives a :class:`BadInput` naming where it is and what is
wrong, e.g. ``data.jsonl:12: tokens[3]: token id 99 is out of range [0, 65)``; the caller skips it or stops.

The output records are written by :mod:`service.scoring.records`.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.typing import NDArray

from model.data.tokenizers import ListTokenizer, Tokenizer, WordTokenizer
from model.errors import ConfigError, DataError

FORMATS = ("auto", "text", "jsonl")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
STDIN = "-"

IdArray = NDArray[np.int64]
SeqId = str | int


@dataclass(frozen=True)
class Item:
    """One input sequence: its position in the input, its id, its token ids and how many of its symbols were outside
    the vocabulary (scored as ``<unk>``, or dropped)."""

    index: int
    id: SeqId
    ids: IdArray
    unknown: int = 0


@dataclass(frozen=True)
class BadInput:
    """A line or file that is not a valid sequence: ``where`` (``file:line`` or a path) and what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def id_key(seq_id: object) -> str:
    """The canonical form ids are compared by (``--resume``): their JSON text, so ``1`` and ``"1"`` differ."""
    return json.dumps(seq_id, ensure_ascii=False)


def input_format(path: str, fmt: str) -> str:
    """``text``, ``jsonl`` or ``dir`` for the INPUT argument (``fmt``: ``auto`` picks by suffix)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if path != STDIN:
        p = Path(path)
        if not p.exists():
            raise DataError(f"input: {path!r} does not exist")
        if p.is_dir():
            if fmt != "auto":
                raise ConfigError(f"--format {fmt}: input {path!r} is a directory (each file is one sequence)")
            return "dir"
        if not p.is_file():
            raise DataError(f"input: {path!r} is not a regular file or directory")
        if not os.access(p, os.R_OK):
            raise DataError(f"input: {path!r} is not readable")
    if fmt != "auto":
        return fmt
    name = path[: -len(".gz")] if path.endswith(".gz") else path
    return "jsonl" if name.endswith(JSONL_SUFFIXES) else "text"


#: What ``--on-unknown`` does with a symbol outside the vocabulary: refuse the sequence, drop it, score it as <unk>.
ON_UNKNOWN = ("error", "skip", "unk")


def default_on_unknown(tokenizer: Tokenizer) -> str:
    """``unk`` for a model with an ``<unk>`` token (every char and word model), else ``error`` (a byte model,
    which represents every string)."""
    return "unk" if tokenizer.unk_id is not None else "error"


class Encoder:
    """Text -> token ids with the model's tokenizer; a symbol outside the vocabulary is refused (``error``),
    dropped (``skip``) or kept as ``<unk>`` (``unk``), and counted."""

    def __init__(self, tokenizer: Tokenizer, on_unknown: str) -> None:
        if on_unknown not in ON_UNKNOWN:
            raise ConfigError(f"--on-unknown: must be one of {', '.join(ON_UNKNOWN)}, got {on_unknown!r}")
        self.tokenizer = tokenizer
        self.on_unknown = on_unknown
        self.vocab_size = tokenizer.vocab_size

    def text(self, text: str) -> tuple[IdArray, int]:
        """``(ids, number of unknown symbols)``: with ``skip`` they are left out of ``ids``; with ``error`` the
        first one raises DataError naming it."""
        ids = self.tokenizer.encode(text)
        unk = self.tokenizer.unk_id
        if unk is None or ids.size == 0:
            return ids, 0
        where = np.flatnonzero(ids == unk)
        if where.size and self.on_unknown == "error":
            raise DataError(f"text: {self._unknown(text, int(where[0]))} is not in the model's vocabulary "
                            "(--on-unknown unk scores it as <unk>, skip drops it)")  # fmt: skip
        if where.size and self.on_unknown == "skip":
            ids = np.delete(ids, where)
        return ids, int(where.size)

    def _unknown(self, text: str, pos: int) -> str:
        if self.tokenizer.kind == "char":
            return f"character {text[pos]!r} at offset {pos}"
        if self.tokenizer.kind == "word":
            return f"word {WordTokenizer.split(text)[pos]!r} (token {pos})"
        if isinstance(self.tokenizer, ListTokenizer):
            pieces = self.tokenizer.split(text)
            return f"character {pieces[pos]!r} at offset {sum(len(p) for p in pieces[:pos])}"
        return f"token {pos}"  # pragma: no cover - only char, word and list tokenizers have <unk>

    def tokens(self, tokens: object) -> IdArray:
        """Validated explicit token ids (a JSON list of integers in ``[0, V)``)."""
        if not isinstance(tokens, list):
            raise DataError(f"tokens: expected a list of token ids, got {_short(tokens)}")
        for k, t in enumerate(tokens):
            if isinstance(t, bool) or not isinstance(t, int):
                raise DataError(f"tokens[{k}]: expected an integer token id, got {_short(t)}")
            if not 0 <= t < self.vocab_size:
                raise DataError(f"tokens[{k}]: token id {t} is out of range [0, {self.vocab_size})")
        return np.array(tokens, dtype=np.int64)


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None


def _strip_newline(raw: bytes) -> bytes:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
    return raw


@dataclass(frozen=True)
class Part:
    """A slice of one INPUT that can be read on its own (``--engine ray`` reads parts in parallel).

    A file: the lines starting in bytes ``[start, stop)`` (``stop`` None: to the end), the first of them line
    ``first_line`` (cut points are line starts, so ids stay line numbers). A directory: the files ``files`` (paths
    relative to it), or all of them when None.
    """

    start: int = 0
    stop: int | None = None
    first_line: int = 1
    files: tuple[str, ...] | None = None


class InputReader:
    """Iterates the sequences of one INPUT (or one :class:`Part` of it) as :class:`Item` or :class:`BadInput`, in
    input order.

    ``skip(key)`` (with :func:`id_key`) is asked before a sequence is tokenized; skipped sequences are counted in
    :attr:`skipped` and not yielded (``--resume``). :attr:`total` is the number of sequences when known up front
    (directories), else None. ``name`` is the INPUT as the messages name it (default: ``path``).
    """

    def __init__(
        self,
        path: str,
        fmt: str,
        encoder: Encoder,
        skip: Callable[[str], bool] | None = None,
        stdin: IO[bytes] | None = None,
        part: Part | None = None,
        name: str | None = None,
    ) -> None:
        self.path = path
        self.kind = input_format(path, fmt)
        self.encoder = encoder
        self.skip = skip
        self.stdin = stdin
        self.skipped = 0
        self.part = part or Part()
        self.name = name or ("<stdin>" if path == STDIN else path)
        self._files: list[Path] | None = None
        if self.kind == "dir":
            root = Path(path)
            files = self.part.files
            self._files = list_files(root) if files is None else [root / f for f in files]
        self.total: int | None = None if self._files is None else len(self._files)

    def __iter__(self) -> Iterator[Item | BadInput]:
        if self.kind == "dir":
            return self._directory()
        return self._lines()

    def _open(self) -> IO[bytes]:
        if self.path == STDIN:
            return self.stdin if self.stdin is not None else sys.stdin.buffer
        if self.path.endswith(".gz"):
            return gzip.GzipFile(self.path, "rb")  # type: ignore[return-value]  # an IO[bytes] in all but name
        return open(self.path, "rb")

    def _lines(self) -> Iterator[Item | BadInput]:
        f = self._open()
        parse = self._jsonl if self.kind == "jsonl" else self._text
        index = 0
        pos, stop = self.part.start, self.part.stop
        if pos:
            f.seek(pos)
        try:
            for lineno, raw in enumerate(f, start=self.part.first_line):
                if stop is not None and pos >= stop:
                    break
                pos += len(raw)
                body = _strip_newline(raw)
                if not body.strip():
                    continue
                try:
                    item = parse(body, lineno, index)
                except DataError as e:
                    yield BadInput(f"{self.name}:{lineno}", str(e))
                    continue
                except (OSError, EOFError, gzip.BadGzipFile) as e:  # pragma: no cover - a truncated .gz
                    yield BadInput(f"{self.name}:{lineno}", f"unreadable ({e})")
                    return
                if item is not None:
                    index += 1
                    yield item
        finally:
            if f is not self.stdin and self.path != STDIN:
                f.close()

    def _text(self, body: bytes, lineno: int, index: int) -> Item | None:
        if self.skip is not None and self.skip(id_key(lineno)):
            self.skipped += 1
            return None
        ids, unknown = self.encoder.text(_decode(body))
        return Item(index, lineno, ids, unknown)

    def _jsonl(self, body: bytes, lineno: int, index: int) -> Item | None:
        try:
            obj = json.loads(body)
        except UnicodeDecodeError:
            _decode(body)  # raises the UTF-8 error with its offset
            raise
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {_short(obj)}")
        seq_id = obj.get("id", lineno)
        if isinstance(seq_id, bool) or not isinstance(seq_id, str | int):
            raise DataError(f"id: must be a string or an integer, got {_short(seq_id)}")
        if self.skip is not None and self.skip(id_key(seq_id)):
            self.skipped += 1
            return None
        has_text, has_tokens = "text" in obj, "tokens" in obj
        if has_text == has_tokens:
            which = "both 'text' and 'tokens'" if has_text else "neither 'text' nor 'tokens'"
            raise DataError(f"id {_short(seq_id)}: needs exactly one of 'text' and 'tokens', got {which}")
        if has_tokens:
            return Item(index, seq_id, self.encoder.tokens(obj["tokens"]))
        text = obj["text"]
        if not isinstance(text, str):
            raise DataError(f"text: expected a string, got {_short(text)}")
        ids, unknown = self.encoder.text(text)
        return Item(index, seq_id, ids, unknown)

    def _directory(self) -> Iterator[Item | BadInput]:
        root = Path(self.path)
        assert self._files is not None
        index = 0
        for p in self._files:
            rel = p.relative_to(root).as_posix()
            if self.skip is not None and self.skip(id_key(rel)):
                self.skipped += 1
                continue
            where = str(Path(self.name) / rel)
            try:
                raw = p.read_bytes()
                ids, unknown = self.encoder.text(_decode(raw))
            except OSError as e:
                yield BadInput(where, f"unreadable ({e.strerror or e})")
                continue
            except DataError as e:
                yield BadInput(where, str(e))
                continue
            yield Item(index, rel, ids, unknown)
            index += 1


def list_files(root: Path) -> list[Path]:
    """Regular files below ``root``, sorted by relative path, skipping hidden files and directories."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    files = [p for p in out if p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


__all__ = [
    "FORMATS",
    "ON_UNKNOWN",
    "BadInput",
    "Encoder",
    "InputReader",
    "Item",
    "Part",
    "default_on_unknown",
    "id_key",
    "input_format",
    "list_files",
]
