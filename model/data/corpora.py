"""Text corpora: a training and a validation string, loaded from a spec on the command line.

A spec is one of:

* ``"stdlib"``: the running Python's own standard-library ``.py`` sources (no network, works wherever
  Python runs), without ``site-packages`` / ``dist-packages``.
* ``"tinyshakespeare"``: Karpathy's Tiny Shakespeare (1,115,394 characters of Shakespeare's plays, public domain),
  shipped with the package as ``model/data/tinyshakespeare.txt.gz``; split like a text file.
* a text file: the first ``1 - val_fraction`` of its characters train, the rest validate (nanoGPT's
  90/10 split of tinyshakespeare).
* a directory: every text file under it, recursively (hidden entries and files with NUL bytes skipped).
* a glob pattern (contains ``*``, ``?`` or ``[``): the matching text files.

Several files are split BY FILE, so no file straddles train and validation: a file goes to validation
when ``crc32(relative path) mod 10000 < val_fraction * 10000``, which is deterministic across runs,
machines and file orders. If that puts every file on one side, the last (resp. first) file in sorted order
moves to the other side. A single file is split by characters. Files are read as UTF-8 with
``errors="replace"`` and joined with ``"\\n"`` in sorted order of their relative paths.
"""

from __future__ import annotations

import glob
import gzip
import os
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

from model.errors import DataError

_GLOB_CHARS = frozenset("*?[")
#: The corpus spec of the text shipped with the package, and its file (gzip; the text is plain UTF-8).
SHAKESPEARE = "tinyshakespeare"
SHAKESPEARE_FILE = Path(__file__).resolve().parent / "tinyshakespeare.txt.gz"
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


@dataclass(frozen=True)
class Corpus:
    """A loaded corpus.

    Attributes:
        name: the spec it was loaded from (``"stdlib"``, a path or a glob pattern).
        train: training text.
        val: validation text.
        files: absolute paths of the source files read, in order (train files first, then validation).
        val_files: the subset of ``files`` that went to validation; empty when one file was split by
            characters (it is then in both parts).
    """

    name: str
    train: str
    val: str
    files: tuple[str, ...]
    val_files: tuple[str, ...] = ()


def is_validation_file(rel_path: str, val_fraction: float) -> bool:
    """Whether the file at ``rel_path`` (relative, ``/``-separated) belongs to validation."""
    return zlib.crc32(rel_path.encode("utf-8", "surrogatepass")) % 10000 < val_fraction * 10000


def load_corpus(spec: str, val_fraction: float = 0.1, max_chars: int | None = None) -> Corpus:
    """Load the corpus ``spec`` (see the module docstring).

    ``max_chars`` caps the characters read: train gets at most ``max_chars * (1 - val_fraction)`` and
    validation at most ``max_chars * val_fraction``; files are read in order until a side is full (the
    last one truncated), so a small cap on ``"stdlib"`` reads only a few files.

    Raises :class:`DataError` naming ``spec``: missing path, a glob matching nothing, no text files, an
    empty corpus, an empty train or validation part, ``val_fraction`` outside (0, 1), bad ``max_chars``.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 < val_fraction < 1:
        raise DataError(f"corpus {spec!r}: val_fraction must be in (0, 1), got {val_fraction!r}")
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 2):
        raise DataError(f"corpus {spec!r}: max_chars must be an integer >= 2 or None, got {max_chars!r}")

    if spec == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        paths = _walk(root, suffix=".py")
        if not paths:
            raise DataError(f"corpus {spec!r}: no .py files under the standard library at {root}")
        return _split_files(spec, root, paths, val_fraction, max_chars)

    if spec == SHAKESPEARE:
        try:
            shipped = gzip.decompress(SHAKESPEARE_FILE.read_bytes()).decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise DataError(f"corpus {spec!r}: the shipped {SHAKESPEARE_FILE} is unreadable ({e})") from None
        return _split_chars(spec, SHAKESPEARE_FILE, shipped, val_fraction, max_chars)

    path = Path(spec)
    if not path.exists() and any(c in spec for c in _GLOB_CHARS):
        matches = sorted(Path(p) for p in glob.glob(spec, recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise DataError(f"corpus {spec!r}: the glob pattern matches no files")
        return _split_files(spec, None, files, val_fraction, max_chars)
    if path.is_dir():
        files = _walk(path, suffix=None)
        if not files:
            raise DataError(f"corpus {spec!r}: the directory holds no text files")
        return _split_files(spec, path, files, val_fraction, max_chars)
    if path.is_file():
        text = _read_text(path)
        if text is None:
            raise DataError(f"corpus {spec!r}: not a text file (it contains NUL bytes)")
        return _split_chars(spec, path, text, val_fraction, max_chars)
    raise DataError(f"corpus {spec!r}: no such file or directory")


def _walk(root: Path, suffix: str | None) -> list[Path]:
    """Regular files under ``root`` ending in ``suffix``, sorted by relative path; hidden entries (names
    starting with ``.``) and the directories in ``_EXCLUDED_DIRS`` are skipped."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS and not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or (suffix is not None and not name.endswith(suffix)):
                continue
            p = Path(dirpath) / name
            if p.is_file():
                found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _read_text(path: Path) -> str | None:
    """The file as UTF-8 (undecodable bytes -> U+FFFD), or None if it contains NUL bytes (binary)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def _split_chars(spec: str, path: Path, text: str, val_fraction: float, max_chars: int | None) -> Corpus:
    if max_chars is not None:
        text = text[:max_chars]
    if not text:
        raise DataError(f"corpus {spec!r}: the corpus is empty (0 characters)")
    cut = int(len(text) * (1 - val_fraction))
    train, val = text[:cut], text[cut:]
    if not train or not val:
        part = "train" if not train else "validation"
        raise DataError(
            f"corpus {spec!r}: too small to split: {len(text)} characters leave the {part} part empty "
            f"(val_fraction={val_fraction})"
        )
    return Corpus(name=spec, train=train, val=val, files=(str(path.resolve()),))


def _rel(root: Path | None, p: Path) -> str:
    return p.relative_to(root).as_posix() if root is not None else p.as_posix()


def _split_files(spec: str, root: Path | None, files: list[Path], val_fraction: float, max_chars: int | None) -> Corpus:
    is_val = [is_validation_file(_rel(root, p), val_fraction) for p in files]
    if len(files) >= 2 and all(is_val):
        is_val[0] = False
    elif len(files) >= 2 and not any(is_val):
        is_val[-1] = True
    caps: tuple[int | None, int | None] = (None, None)
    if max_chars is not None:
        val_cap = max(1, int(max_chars * val_fraction))
        caps = (max(1, max_chars - val_cap), val_cap)
    parts: tuple[list[str], list[str]] = ([], [])
    used: tuple[list[Path], list[Path]] = ([], [])
    sizes = [0, 0]  # characters so far per side, counting the "\n" separators
    n_text = n_chars = 0
    for p, v in zip(files, is_val, strict=True):
        side = int(v)
        cap = caps[side]
        if cap is not None and sizes[side] >= cap:
            if all(c is not None and s >= c for c, s in zip(caps, sizes, strict=True)):
                break
            continue
        text = _read_text(p)
        if text is None:
            continue
        n_text += 1
        n_chars += len(text)
        sizes[side] += len(text) + (1 if parts[side] else 0)
        parts[side].append(text)
        used[side].append(p)
    if n_text == 0:
        raise DataError(f"corpus {spec!r}: no text files (every file contains NUL bytes)")
    if n_text == 1:  # one text file: split it by characters
        side = 0 if parts[0] else 1
        return _split_chars(spec, used[side][0], parts[side][0], val_fraction, max_chars)
    if n_chars == 0:
        raise DataError(f"corpus {spec!r}: the corpus is empty (0 characters)")
    train, val = ("\n".join(part)[:cap] for part, cap in zip(parts, caps, strict=True))
    for name, text in (("train", train), ("validation", val)):
        if not text:
            raise DataError(
                f"corpus {spec!r}: the {name} part is empty ({n_text} text files, val_fraction={val_fraction})"
            )
    return Corpus(
        name=spec,
        train=train,
        val=val,
        files=tuple(str(p.resolve()) for p in used[0] + used[1]),
        val_files=tuple(str(p.resolve()) for p in used[1]),
    )
