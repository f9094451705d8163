"""service.scoring.inputs: reading sequences (text, JSONL, directory, stdin, gzip) and the resumable JSONL writer."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest

from model.data.tokenizers import ByteTokenizer, CharTokenizer, WordTokenizer
from model.errors import ConfigError, DataError
from service.scoring.inputs import BadInput, Encoder, InputReader, Item, default_on_unknown, id_key, input_format
from service.scoring.records import RecordWriter, dumps

TOK = CharTokenizer("abc \n")  # id 0 is <unk>


def enc(on_unknown: str = "error") -> Encoder:
    return Encoder(TOK, on_unknown)


def read(path: Path | str, fmt: str = "auto", **kw: object) -> list[Item | BadInput]:
    return list(InputReader(str(path), fmt, enc(), **kw))  # type: ignore[arg-type]


def test_format_by_suffix_and_flag(tmp_path: Path) -> None:
    for name, want in [("a.txt", "text"), ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"), ("a.jsonl.gz", "jsonl")]:
        (tmp_path / name).write_bytes(b"")
        assert input_format(str(tmp_path / name), "auto") == want
    assert input_format(str(tmp_path / "a.txt"), "jsonl") == "jsonl"
    assert input_format(str(tmp_path), "auto") == "dir"
    assert input_format("-", "auto") == "text"
    with pytest.raises(DataError, match=r"input: '.*missing.txt' does not exist"):
        input_format(str(tmp_path / "missing.txt"), "auto")
    with pytest.raises(ConfigError, match=r"--format text: input .* is a directory"):
        input_format(str(tmp_path), "text")


def test_text_lines_ids_are_line_numbers_blank_lines_skipped(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    p.write_bytes(b"ab\n\n  \r\nc a\r\nb")
    items = read(p)
    assert [(x.index, x.id) for x in items if isinstance(x, Item)] == [(0, 1), (1, 4), (2, 5)]
    got = [TOK.decode(x.ids) for x in items if isinstance(x, Item)]
    assert got == ["ab", "c a", "b"]  # no newline, no \r


def test_text_bad_utf8_and_unknown_symbol_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    p.write_bytes(b"ab\n\xff\nax\n" + "λ\n".encode())
    items = read(p)
    bad = [str(x) for x in items if isinstance(x, BadInput)]
    assert bad[0] == f"{p}:2: not valid UTF-8 (byte 0xff at offset 0)"
    assert bad[1].startswith(f"{p}:3: text: character 'x' at offset 1 is not in the model's vocabulary")
    assert "(--on-unknown unk scores it as <unk>, skip drops it)" in bad[1]
    assert len(bad) == 3 and bad[2].startswith(f"{p}:4: text: character 'λ' at offset 0")


def test_unknown_symbols_scored_as_unk_or_dropped_are_counted(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    p.write_text("axbx\n")
    (item,) = list(InputReader(str(p), "auto", enc("unk")))
    assert isinstance(item, Item) and item.unknown == 2 and item.ids.tolist() == [1, 0, 2, 0]
    (item,) = list(InputReader(str(p), "auto", enc("skip")))
    assert isinstance(item, Item) and item.unknown == 2 and TOK.decode(item.ids) == "ab"
    with pytest.raises(ConfigError, match="--on-unknown: must be one of error, skip, unk, got 'drop'"):
        enc("drop")
    assert default_on_unknown(TOK) == "unk" and default_on_unknown(ByteTokenizer()) == "error"


def test_word_tokenizer_names_the_unknown_word(tmp_path: Path) -> None:
    p = tmp_path / "in.txt"
    p.write_text("the cat sat\n")
    (bad,) = list(InputReader(str(p), "auto", Encoder(WordTokenizer(["the", " ", "cat"]), "error")))
    assert isinstance(bad, BadInput) and "word 'sat' (token 4)" in bad.message


def test_jsonl_records_and_every_error(tmp_path: Path) -> None:
    lines = [
        {"id": "a", "text": "abc"},
        {"id": 7, "tokens": [1, 2, 3]},
        {"text": "ba", "meta": {"ignored": True}},  # id defaults to the line number; other keys ignored
        "{not json",
        [1, 2],
        {"id": True, "text": "a"},
        {"id": "b"},
        {"id": "c", "text": "a", "tokens": [1]},
        {"id": "d", "tokens": [1, 99]},
        {"id": "e", "tokens": [1, 1.5]},
        {"id": "f", "tokens": "abc"},
        {"id": "g", "text": 5},
        {"id": "h", "text": ""},
    ]
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n")
    out = read(p)
    items = [x for x in out if isinstance(x, Item)]
    assert [(x.id, x.ids.tolist()) for x in items] == [
        ("a", TOK.encode("abc").tolist()),
        (7, [1, 2, 3]),
        (3, TOK.encode("ba").tolist()),
        ("h", []),
    ]
    assert [x.index for x in items] == [0, 1, 2, 3]
    bad = {int(x.where.rsplit(":", 1)[1]): x.message for x in out if isinstance(x, BadInput)}
    assert bad[4].startswith("invalid JSON (")
    assert bad[5] == "expected a JSON object, got [1, 2]"
    assert bad[6] == "id: must be a string or an integer, got true"
    assert bad[7] == "id \"b\": needs exactly one of 'text' and 'tokens', got neither 'text' nor 'tokens'"
    assert bad[8].endswith("got both 'text' and 'tokens'")
    assert bad[9] == f"tokens[1]: token id 99 is out of range [0, {TOK.vocab_size})"
    assert bad[10] == "tokens[1]: expected an integer token id, got 1.5"
    assert bad[11] == 'tokens: expected a list of token ids, got "abc"'
    assert bad[12] == "text: expected a string, got 5"


def test_directory_one_sequence_per_file_sorted_hidden_skipped(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b.txt").write_text("ab\n")
    (tmp_path / "sub" / "a.txt").write_text("c")
    (tmp_path / ".hidden").write_text("a")
    (tmp_path / ".git" / "x").write_text("a")
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    r = InputReader(str(tmp_path), "auto", enc())
    assert r.total == 3
    out = list(r)
    assert [x.id for x in out if isinstance(x, Item)] == ["b.txt", "sub/a.txt"]
    assert TOK.decode(out[0].ids) == "ab\n"  # type: ignore[union-attr]  # the whole file, newline included
    assert isinstance(out[1], BadInput) and out[1].where == str(tmp_path / "bin")
    assert out[1].message == "not valid UTF-8 (byte 0xff at offset 0)"


def test_stdin_and_gzip(tmp_path: Path) -> None:
    r = InputReader("-", "jsonl", enc(), stdin=io.BytesIO(b'{"id": "x", "text": "ab"}\n'))
    assert [x.id for x in r] == ["x"]  # type: ignore[union-attr]
    p = tmp_path / "in.txt.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"ab\nba\n")
    assert [x.id for x in read(p)] == [1, 2]  # type: ignore[union-attr]


def test_skip_predicate_is_asked_before_tokenizing(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_text('{"id": 1, "text": "ab"}\n{"id": "1", "text": "xx"}\n{"id": "z", "text": "xx"}\n')
    r = InputReader(str(p), "auto", enc(), skip={id_key(1), id_key("z")}.__contains__)
    out = list(r)
    assert r.skipped == 2
    # "1" (a string) is not the integer 1: it is read, and its unknown symbols reported
    assert len(out) == 1 and isinstance(out[0], BadInput) and out[0].where.endswith(":2")


def test_writer_refuses_existing_output_without_resume_or_overwrite(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    p.write_text('{"id": 1}\n')
    with pytest.raises(ConfigError, match=r"already exists; pass --resume .* or --overwrite"):
        RecordWriter(str(p))
    w = RecordWriter(str(p), overwrite=True)
    w.write([dumps({"id": 2})])
    w.close()
    assert p.read_text() == '{"id":2}\n'
    with pytest.raises(ConfigError, match="--resume: needs --out FILE"):
        RecordWriter(None, resume=True)


def test_writer_creates_its_file_only_with_a_record_or_on_success(tmp_path: Path) -> None:
    """A run that fails before its first record leaves no empty file (which would block the retry) and leaves a
    file it was to overwrite untouched; a successful run without records still writes its empty file."""
    p = tmp_path / "sub" / "out.jsonl"
    w = RecordWriter(str(p))
    w.write([])
    w.close(ok=False)
    assert not p.exists()
    RecordWriter(str(p)).close()
    assert p.read_text() == ""
    p.write_text('{"id": 1}\n')
    RecordWriter(str(p), overwrite=True).close(ok=False)
    assert p.read_text() == '{"id": 1}\n'
    w = RecordWriter(str(p), overwrite=True)
    w.write([dumps({"id": 2})])
    w.close(ok=False)  # what was written stays
    assert p.read_text() == '{"id":2}\n'


def test_writer_resume_drops_partial_line_and_collects_ids(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    p.write_text('{"id": 1, "x": 0}\n{"id": "a"}\n{"id": 3, "tot')
    w = RecordWriter(str(p), resume=True)
    assert w.dropped_bytes == len('{"id": 3, "tot')
    assert w.done == {id_key(1), id_key("a")}
    w.write([dumps({"id": 3})])
    w.close()
    assert [json.loads(x)["id"] for x in p.read_text().splitlines()] == [1, "a", 3]


def test_writer_resume_rejects_a_foreign_file(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    p.write_text("hello\n")
    with pytest.raises(ConfigError, match="line 1 is not JSON"):
        RecordWriter(str(p), resume=True)
    p.write_text('{"name": 1}\n')
    with pytest.raises(ConfigError, match="line 1 has no 'id'"):
        RecordWriter(str(p), resume=True)


def test_dumps_is_one_compact_line() -> None:
    line = dumps({"id": "é", "v": [np.float32(1.5).item()]})
    assert line == '{"id":"é","v":[1.5]}\n'
