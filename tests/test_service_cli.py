"""``seqpred client`` on the command line against a real server: printf-style escapes in TEXT, predictions shown
escaped once, exit code 2 when no server answers (test_client.py has the rest of the command's tests)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from service_helpers import oracle, running_server

from service.cli import main_client


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with running_server(on_unknown="error") as st:  # --raw's backslash is refused, not fed as <unk>
        yield st


def test_text_escapes_are_read_like_printf(server: Any) -> None:
    typed = r"class Point:\n    def __init__(self"  # what the README's example passes: a backslash and an n
    out = io.StringIO()
    assert main_client(["--target", server.target, "--json", "--top-k", "3", typed], stdout=out) == 0
    obj = json.loads(out.getvalue())
    text = "class Point:\n    def __init__(self"
    assert obj["text"] == text and obj["position"] == len(text)  # char tokenizer: one token per character
    o = oracle()
    assert [p["id"] for p in obj["predictions"]] == o.top_k(o.encode(text), 3)


def test_raw_sends_the_backslash(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_client(["--target", server.target, "--raw", r"a\nb"], stdout=io.StringIO()) == 2
    assert capsys.readouterr().err.strip() == (
        "seqpred: error: INVALID_ARGUMENT: text: character '\\\\' at offset 1 is not in the model's vocabulary"
    )


def test_predictions_are_shown_escaped_once(server: Any) -> None:
    o = oracle()
    out = io.StringIO()
    assert main_client(["--target", server.target, "--top-k", str(o.V), "def add"], stdout=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "after 7 tokens, the next token is likely:"
    shown = [line.split("  ")[2] for line in lines[1:]]  # "  PROB%  'TEXT'  (id N)"
    assert len(shown) == o.V
    newline, space = o.encode("\n")[0], o.encode(" ")[0]
    assert any(line.endswith(f"  '\\n'  (id {newline})") for line in lines)  # a newline: backslash n, once
    assert any(line.endswith(f"  ' '  (id {space})") for line in lines)
    assert not any("\\\\" in x for x in shown)


def test_interactive_lines_show_escapes_once(server: Any) -> None:
    o = oracle()
    out = io.StringIO()
    argv = ["--target", server.target, "--complete", "30", "--top-k", str(o.V)]
    assert main_client(argv, stdin=io.StringIO("x = 1\n"), stdout=out) == 0
    (line,) = out.getvalue().splitlines()
    assert line.startswith("next: '") and "'\\n' " in line and "\\\\" not in line


def test_no_server_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_client(["--target", "localhost:1", "--timeout", "0.3", "x"]) == 2
    assert capsys.readouterr().err.strip() == "seqpred: error: no seqpred server answers at localhost:1"


def test_a_failed_rpc_names_its_request_id(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice:" + "a" * 20 + "\n")
    with running_server(auth_tokens=str(tokens)) as st:
        assert main_client(["--target", st.target, "def"], stdout=io.StringIO()) == 2
    # the in-process server may log on stderr too (and a handler left by an earlier in-process `serve` may complain)
    (err,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("seqpred: error:")]
    assert re.fullmatch(
        r"seqpred: error: UNAUTHENTICATED: authorization: no bearer token; send the metadata "
        r"'authorization: Bearer TOKEN' \[request id [0-9a-f]{16}\]",
        err,
    ), err
