"""An imported model is a first-class model: served by the real gRPC service (streams carry the state between
requests, unary scoring, durability across a restart, sessions shared by two replicas through Redis) and scored
by ``seqpred score``, equal to onnxruntime on the source file; a model imported without ``--vocab`` serves token
ids and answers a text request with a message naming the field."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from import_helpers import Spec, as_logprobs, build, run_source
from redis_helpers import redis_server
from service_helpers import running_server

from model.importers.write import import_onnx
from service.client.sync import Client
from service.client.types import RequestError
from service.scoring.cli import main_score

#: A list vocabulary (index = id) with a multi-character token and an <unk> entry.
TOKENS = ["<unk>", "a", "b", "c", "ab", " ", "\n"]
SPEC = Spec(op="GRU", lbr=1, layers=2, V=len(TOKENS), final="LogSoftmax")
TOL = 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("served")
    source = build(SPEC)
    src = root / "src.onnx"
    onnx.save(source, src)
    (root / "tokens.json").write_text(json.dumps(TOKENS))
    return {
        "source": source,
        "text": import_onnx(src, root / "with-vocab", vocab=str(root / "tokens.json")),
        "ids": import_onnx(src, root / "ids-only"),
        "root": root,
    }


def source_logprobs(source: onnx.ModelProto, ids: list[int]) -> np.ndarray:
    """``[T, V]`` log-probs of the source model after each of ``ids`` (one sequence, from the zero state)."""
    return as_logprobs(run_source(source, SPEC, np.array([ids]), [len(ids)]), SPEC.final)[0]


def test_a_stream_carries_the_state_of_an_imported_model(models: dict[str, Any]) -> None:
    ids = [4, 5, 3, 6, 1]  # "ab c\na": the list tokenizer splits "ab" as one token
    ref = source_logprobs(models["source"], ids)
    with running_server(model=str(models["text"])) as server, Client(server.target, timeout=10) as client:
        info = client.model_info()
        assert (info.cell, info.tokenizer, info.vocab_size) == ("gru-lbr", "list", len(TOKENS))
        with client.session() as s:
            r = s.feed("ab c", top_k=3)
            assert r.position == 3
            assert [p.id for p in r.predictions] == list(np.argsort(-ref[2])[:3])
            np.testing.assert_allclose([p.logprob for p in r.predictions], np.sort(ref[2])[::-1][:3], atol=TOL)
            r = s.feed("\na", top_k=len(TOKENS))
            assert r.position == 5
            got = {p.text: p.logprob for p in r.predictions}
            np.testing.assert_allclose([got[t] for t in TOKENS], ref[4], atol=TOL)
        (sc,) = client.score(["ab c\na"])
        want = [ref[t, ids[t + 1]] for t in range(len(ids) - 1)]
        np.testing.assert_allclose(sc.token_logprobs, want, atol=TOL)
        # 'd' is not in the list, which holds "<unk>": the default --on-unknown (auto) feeds <unk> for it
        with client.session() as s:
            r = s.feed("abd", top_k=3)
        assert r.position == 2
        ref2 = source_logprobs(models["source"], [4, 0])
        assert [p.id for p in r.predictions] == list(np.argsort(-ref2[1])[:3])
        np.testing.assert_allclose([p.logprob for p in r.predictions], np.sort(ref2[1])[::-1][:3], atol=TOL)


def test_a_model_without_vocabulary_serves_token_ids_and_refuses_text(models: dict[str, Any]) -> None:
    ids = [1, 2, 3]
    ref = source_logprobs(models["source"], ids)
    with running_server(model=str(models["ids"])) as server, Client(server.target, timeout=10) as client:
        assert client.model_info().tokenizer == "ids"
        with client.session() as s:
            r = s.feed(tokens=ids, top_k=1)
            (best,) = r.predictions
            assert best.id == int(np.argmax(ref[-1])) and best.text == f"<{best.id}>"
            assert abs(best.logprob - ref[-1].max()) < TOL
        with pytest.raises(RequestError) as e:
            client.predict("abc")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.message == (
        "text: this model has no vocabulary (imported without --vocab); send token ids in 'tokens' instead"
    )


def _score(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main_score(argv, stdout=out)
    return rc, out.getvalue(), err.getvalue()


def test_seqpred_score_on_imported_models(models: dict[str, Any]) -> None:
    root: Path = models["root"]
    lines = root / "lines.txt"
    lines.write_text("ab c\nca b\n")
    rc, out, err = _score(["--model", str(models["text"]), str(lines)])
    assert rc == 0, err
    for rec, text in zip(map(json.loads, out.splitlines()), ["ab c", "ca b"], strict=True):
        ids = [TOKENS.index(t) for t in {"ab c": ["ab", " ", "c"], "ca b": ["c", "a", " ", "b"]}[text]]
        ref = source_logprobs(models["source"], ids)
        assert abs(rec["total_logprob"] - sum(ref[t, ids[t + 1]] for t in range(len(ids) - 1))) < 1e-4
    data = root / "ids.jsonl"
    data.write_text('{"id": "a", "tokens": [1, 2, 3]}\n{"id": "b", "text": "abc"}\n')
    rc, out, err = _score(["--model", str(models["ids"]), str(data), "--on-error", "skip"])
    assert rc == 0
    (rec,) = map(json.loads, out.splitlines())
    ref = source_logprobs(models["source"], [1, 2, 3])
    assert rec["id"] == "a" and abs(rec["total_logprob"] - (ref[0, 2] + ref[1, 3])) < 1e-4
    assert (
        f"{data}:2: text: this model has no vocabulary (imported without --vocab); send token ids instead of text"
        in err
    )


def test_an_imported_models_sessions_survive_a_restart(models: dict[str, Any], tmp_path: Path) -> None:
    """Durability works on an imported model as on any other: a session continues after a restart."""
    ids = [4, 5, 3, 6, 1]
    ref = source_logprobs(models["source"], ids)
    kw = {"model": str(models["text"]), "durability": "sync", "state_dir": str(tmp_path / "state")}
    with running_server(**kw) as server, Client(server.target, timeout=10) as c, c.session("imported") as s:
        assert s.feed("ab c", top_k=1, start=True).position == 3
    with running_server(**kw) as server, Client(server.target, timeout=10) as c, c.session("imported") as s:
        r = s.feed("\na", top_k=len(TOKENS))
    assert r.position == 5
    got = {p.text: p.logprob for p in r.predictions}
    np.testing.assert_allclose([got[t] for t in TOKENS], ref[4], atol=TOL)


def test_two_replicas_share_an_imported_models_sessions_through_redis(models: dict[str, Any]) -> None:
    """``--store redis`` works on an imported model as on any other: a session goes on on another replica."""
    ids = [4, 5, 3, 6, 1]
    ref = source_logprobs(models["source"], ids)
    with redis_server() as redis:
        kw = {"model": str(models["text"]), "store": "redis", "redis_url": redis.url}
        with running_server(**kw) as a, running_server(**kw) as b:
            with Client(a.target, timeout=10) as ca, ca.session("shared") as s:
                assert s.feed("ab c", top_k=1, start=True).position == 3
            with Client(b.target, timeout=10) as cb, cb.session("shared") as s:
                r = s.feed("\na", top_k=len(TOKENS))
    assert r.position == 5
    got = {p.text: p.logprob for p in r.predictions}
    np.testing.assert_allclose([got[t] for t in TOKENS], ref[4], atol=TOL)
