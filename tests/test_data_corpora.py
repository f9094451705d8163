"""Corpus loading: the stdlib corpus, files, directories, globs, and every error case."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from model.data.corpora import SHAKESPEARE_FILE, Corpus, is_validation_file, load_corpus
from model.errors import DataError


def _make_dir(root: Path, n: int) -> dict[Path, str]:
    """``n`` text files with distinct contents under ``root`` (some in a subdirectory)."""
    contents: dict[Path, str] = {}
    for i in range(n):
        p = root / ("sub" if i % 3 == 0 else ".") / f"file{i:02d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        text = f"<<content of file {i}>>\n" * 3
        p.write_text(text, encoding="utf-8")
        contents[p.resolve()] = text
    return contents


def test_stdlib_small_slice_is_quick_deterministic_and_split_by_file() -> None:
    a = load_corpus("stdlib", max_chars=200_000)
    b = load_corpus("stdlib", max_chars=200_000)
    assert a == b
    assert a.name == "stdlib"
    assert a.train and a.val
    assert len(a.train) <= 180_000 and len(a.val) <= 20_000
    assert len(a.train) + len(a.val) > 100_000
    val_files = set(a.val_files)
    train_files = [f for f in a.files if f not in val_files]
    assert train_files and val_files and val_files <= set(a.files)
    assert all(f.endswith(".py") and os.path.isfile(f) for f in a.files)
    assert not any("site-packages" in f or "dist-packages" in f for f in a.files)
    # Each part starts with the text of its first file: no file is spread over both parts.
    first_train = Path(train_files[0]).read_text(encoding="utf-8", errors="replace")
    first_val = Path(a.val_files[0]).read_text(encoding="utf-8", errors="replace")
    assert a.train.startswith(first_train[:1000])
    assert a.val.startswith(first_val[:1000])
    assert first_val[:1000] not in a.train


def test_tinyshakespeare_is_shipped_and_split_like_a_text_file() -> None:
    """The built-in spec reads the gzip shipped in the package: Karpathy's file, byte for byte, split 90/10."""
    c = load_corpus("tinyshakespeare")
    text = c.train + c.val
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    )
    assert (len(c.train), len(c.val)) == (1_003_854, 111_540) and c.name == "tinyshakespeare"
    assert c.files == (str(SHAKESPEARE_FILE),) and SHAKESPEARE_FILE.name == "tinyshakespeare.txt.gz"
    small = load_corpus("tinyshakespeare", max_chars=1000)
    assert small.train + small.val == text[:1000]


def test_single_file_90_10_split(tmp_path: Path) -> None:
    f = tmp_path / "shakespeare.txt"
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    f.write_text(text, encoding="utf-8")
    c = load_corpus(str(f))
    assert isinstance(c, Corpus)
    assert c.train == text[:900] and c.val == text[900:]
    assert c.files == (str(f.resolve()),) and c.val_files == ()
    c2 = load_corpus(str(f), val_fraction=0.25, max_chars=400)
    assert c2.train == text[:300] and c2.val == text[300:400]


def test_single_file_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"caf\xe9 " * 20)
    c = load_corpus(str(f))
    assert "\ufffd" in c.train and "caf" in c.val


def test_directory_split_by_file(tmp_path: Path) -> None:
    contents = _make_dir(tmp_path, 30)
    (tmp_path / "binary.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / ".hidden.txt").write_text("HIDDEN", encoding="utf-8")
    c = load_corpus(str(tmp_path), val_fraction=0.2)
    assert set(c.files) == {str(p) for p in contents}
    assert c.val_files and len(c.val_files) < len(c.files)
    for p, text in contents.items():
        in_val = str(p) in c.val_files
        assert (text in c.val) == in_val and (text in c.train) != in_val
        assert in_val == is_validation_file(p.relative_to(tmp_path.resolve()).as_posix(), 0.2)
    assert "HIDDEN" not in c.train + c.val
    assert load_corpus(str(tmp_path), val_fraction=0.2) == c


def test_directory_where_hash_puts_everything_on_one_side_still_has_both(tmp_path: Path) -> None:
    contents = _make_dir(tmp_path, 2)
    first, last = sorted(contents, key=lambda p: p.relative_to(tmp_path.resolve()).as_posix())
    rel = [p.relative_to(tmp_path.resolve()).as_posix() for p in (first, last)]
    assert not any(is_validation_file(r, 0.01) for r in rel)  # precondition: the hash says "all train"
    c = load_corpus(str(tmp_path), val_fraction=0.01)
    assert c.val_files == (str(last),)
    assert c.train == contents[first] and c.val == contents[last]


def test_directory_with_one_text_file_splits_by_characters(tmp_path: Path) -> None:
    (tmp_path / "only.txt").write_text("x" * 90 + "y" * 10, encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00\x00")
    c = load_corpus(str(tmp_path))
    assert c.train == "x" * 90 and c.val == "y" * 10


def test_glob_corpus(tmp_path: Path) -> None:
    contents = _make_dir(tmp_path, 12)
    (tmp_path / "notes.md").write_text("markdown", encoding="utf-8")
    spec = str(tmp_path / "**" / "*.txt")
    c = load_corpus(spec, val_fraction=0.3)
    assert c.name == spec
    assert set(c.files) == {str(p) for p in contents}
    assert "markdown" not in c.train + c.val
    assert c.train and c.val and c.val_files


def test_max_chars_caps_directory_corpus(tmp_path: Path) -> None:
    _make_dir(tmp_path, 30)
    c = load_corpus(str(tmp_path), val_fraction=0.5, max_chars=200)
    assert 0 < len(c.train) <= 100 and 0 < len(c.val) <= 100


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5])
def test_bad_val_fraction(tmp_path: Path, frac: float) -> None:
    f = tmp_path / "a.txt"
    f.write_text("hello world", encoding="utf-8")
    with pytest.raises(DataError, match="val_fraction") as err:
        load_corpus(str(f), val_fraction=frac)
    assert str(f) in str(err.value)


def test_error_cases_name_the_spec(tmp_path: Path) -> None:
    empty_file = tmp_path / "empty.txt"
    empty_file.write_text("", encoding="utf-8")
    one_char = tmp_path / "one.txt"
    one_char.write_text("x", encoding="utf-8")
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    bin_dir = tmp_path / "bindir"
    bin_dir.mkdir()
    (bin_dir / "a.bin").write_bytes(b"\x00abc")
    (bin_dir / "b.bin").write_bytes(b"abc\x00")
    empty_files_dir = tmp_path / "emptyfiles"
    empty_files_dir.mkdir()
    (empty_files_dir / "a.txt").write_text("", encoding="utf-8")
    (empty_files_dir / "b.txt").write_text("", encoding="utf-8")
    cases = {
        str(tmp_path / "missing.txt"): "no such file",
        str(tmp_path / "nothing-*.txt"): "matches no files",
        str(empty_dir): "no text files",
        str(bin_dir): "no text files",
        str(empty_file): "empty",
        str(empty_files_dir): "empty",
        str(one_char): "empty",
    }
    for spec, what in cases.items():
        with pytest.raises(DataError, match=what) as err:
            load_corpus(spec)
        msg = str(err.value)
        assert repr(spec) in msg and "\n" not in msg, msg


def test_bad_max_chars(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="max_chars"):
        load_corpus("stdlib", max_chars=0)
