"""The client library (sync and asyncio) and the command-line entry points, against a real server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from service_helpers import oracle, running_server, tiny_model

from service.cli import main_client, main_serve
from service.client.aio import AsyncClient
from service.client.sync import Client
from service.client.types import RequestError


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with running_server(on_unknown="error") as st:  # the tests show how an unknown character is reported
        yield st


def test_sync_client(server: Any) -> None:
    o = oracle()
    with Client(server.target, timeout=10) as c:
        assert c.model_info().vocab_size == o.V
        with c.session() as s:
            r = s.feed("def ", top_k=3, score=True)
            assert r.position == 4 and [p.id for p in r.predictions] == o.top_k(o.encode("def "), 3)
            gen = s.generate(5, temperature=0.0)
            first = next(gen)  # abandon the generation after one token ...
            assert first.id == o.top_k(o.encode("def "), 1)[0]
            del gen
            r = s.feed("x", top_k=1)  # ... the next request still gets its own answer
            assert r.position == 4 + 5 + 1
            sid = s.session_id
            assert c.get_session(sid).position == 10
            assert s.reset().position == 0
            with pytest.raises(RequestError) as e:
                s.feed("λ")
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.message == "text: character 'λ' at offset 0 is not in the model's vocabulary"
            s.end()
        with pytest.raises(RequestError) as e:
            c.close_session(sid)
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        r = c.predict("class ", top_k=2, generate=3, temperature=0.0)
        assert len(r.generated) == 3 and len(r.predictions) == 2
        assert c.close_session(r.session_id) == 9
        (sc,) = c.score(["self.x = x"])
        np.testing.assert_allclose(sc.token_logprobs, o.token_logprobs(o.encode("self.x = x")), atol=3e-5)


def test_async_client(server: Any) -> None:
    o = oracle()

    async def main() -> None:
        async with AsyncClient(server.target, timeout=10) as c:
            assert (await c.model_info()).cell == "lstm"
            async with c.session(end_on_exit=True) as s:
                r = await s.feed("for i", top_k=2)
                assert [p.id for p in r.predictions] == o.top_k(o.encode("for i"), 2)
                toks = [t.id async for t in s.generate(3, temperature=0.0)]
                assert len(toks) == 3
                sid = s.session_id
            with pytest.raises(RequestError) as e:  # ended on exit
                await c.get_session(sid)
            assert e.value.code == grpc.StatusCode.NOT_FOUND
            (sc,) = await c.score([o.encode("abc")], top_k=1)
            assert sc.num_tokens == 3 and len(sc.predictions) == 1
            r = await c.predict("ab", top_k=1)
            assert await c.close_session(r.session_id) == 2

    asyncio.run(main())


def test_cli_client_one_shot(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    o = oracle()
    out = io.StringIO()
    assert main_client(["--target", server.target, "--json", "--top-k", "3", "def add"], stdout=out) == 0
    obj = json.loads(out.getvalue())
    assert obj["position"] == 7 and [p["id"] for p in obj["predictions"]] == o.top_k(o.encode("def add"), 3)
    with pytest.raises(RequestError):  # the one-shot session was ended
        Client(server.target).get_session(obj["session_id"])
    out = io.StringIO()
    assert main_client(["--target", server.target, "--generate", "4", "def add"], stdout=out) == 0
    text = out.getvalue()
    assert text.startswith("completion: ") and "after 11 tokens, the next token is likely:" in text
    assert main_client(["--target", server.target, "λ"], stdout=io.StringIO()) == 2
    assert capsys.readouterr().err.strip() == (
        "seqpred: error: INVALID_ARGUMENT: text: character 'λ' at offset 0 is not in the model's vocabulary"
    )


def test_cli_client_interactive_lines(server: Any) -> None:
    out = io.StringIO()
    rc = main_client(
        ["--target", server.target, "--json", "--complete", "5"],
        stdin=io.StringIO("def a\nλ\nclass Point\n"),
        stdout=out,
    )
    assert rc == 0
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines[1] == {"error": "INVALID_ARGUMENT: text: character 'λ' at offset 0 is not in the model's vocabulary"}
    del lines[1]  # a bad line is reported and skipped; the session goes on
    assert [x["position"] for x in lines] == [6, 18]
    assert all(len(x["predictions"]) == 5 and isinstance(x["completion"], str) for x in lines)


def test_cli_client_without_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_client(["--target", "localhost:1", "--timeout", "0.3", "x"]) == 2
    assert capsys.readouterr().err.strip() == "seqpred: error: no seqpred server answers at localhost:1"


def test_cli_serve_bad_model(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_serve(["--model", str(tmp_path / "missing"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seqpred: error: model: model directory") and "does not exist" in err
    assert main_serve(["--max-sessions", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "seqpred: error: --max-sessions (SEQPRED_MAX_SESSIONS): must be >= 1, got 0"
    )


def test_cli_serve_runs_and_drains_on_sigterm() -> None:
    env = {**os.environ, "SEQPRED_METRICS_PORT": "off", "SEQPRED_LOG_FORMAT": "json"}
    code = "import sys; from service.cli import main_serve; sys.exit(main_serve(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--model", str(tiny_model()), "--port", "0", "--grace", "2"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        port = None
        t0 = time.monotonic()
        while port is None and time.monotonic() - t0 < 60:
            line = proc.stderr.readline()
            if line.startswith("seqpred: serving"):
                port = int(line.rsplit(" ", 1)[1])
        assert port, "the server did not start"
        with Client(f"localhost:{port}", timeout=10) as c:
            assert c.predict("ab", top_k=1).position == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        logs = [json.loads(x) for x in proc.stderr.read().splitlines() if x.startswith("{")]
        assert [x["msg"] for x in logs][-2:] == ["draining", "stopped"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
