"""Limits and load-time checks: message size, tokens per request (text included, checked before tokenizing),
generation length, unguessable server-created ids, graph files verified against the manifest as they are loaded.

Authentication and principals: tests/test_security_auth.py; TLS: tests/test_security_tls.py; pickle:
tests/test_train_checkpoint.py; hostile input at large: tests/test_service_fuzz.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from service_helpers import running_server, settings, status_message, tiny_model

from model.data.tokenizers import ByteTokenizer, WordTokenizer
from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.errors import ModelLoadError, TooManyTokens, UnknownSymbol
from service.runtime.bundle import HEAD, MANIFEST, STEP, load_bundle
from service.runtime.onnx_runtime import Runtime
from service.server import SeqpredServer


def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), status_message(e.value, strict=False)


def test_request_limits_everywhere() -> None:
    limits = {"max_request_tokens": 8, "max_generate_tokens": 4, "max_score_sequences": 2, "max_message_bytes": 4096}
    with running_server(**limits) as st, grpc.insecure_channel(st.target) as ch:
        stub = pb_grpc.SeqPredStub(ch)
        bad = [
            (pb.StreamRequest(tokens=[1] * 9), "tokens: 9 tokens, more than the limit of 8 per request"),
            (
                pb.StreamRequest(text="a" * 9),
                "text: 9 characters, at least 9 tokens, more than the limit of 8 per request",
            ),
            (
                pb.StreamRequest(text="ab", generate=pb.GenerateParams(max_tokens=5)),
                "generate.max_tokens: must be in [1, 4], got 5",
            ),
        ]
        for req, msg in bad:
            assert _code(lambda r=req: stub.Predict(r, timeout=5)) == (grpc.StatusCode.INVALID_ARGUMENT, msg)
            (resp,) = list(stub.Stream(iter([req]), timeout=5))
            assert resp.error.code_name == "INVALID_ARGUMENT" and resp.error.message == msg
        score_bad = [
            ([pb.Sequence(text="a"), pb.Sequence(text="a" * 9)], "sequences[1].text: 9 characters, at least 9"),
            ([pb.Sequence(tokens=[1] * 9)], "sequences[0].tokens: 9 tokens, more than the limit of 8"),
            ([pb.Sequence(text="a")] * 3, "sequences: 3 sequences, more than the limit of 2"),
        ]
        for seqs, msg in score_bad:
            code, details = _code(lambda s=seqs: stub.Score(pb.ScoreRequest(sequences=s), timeout=5))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(msg)
        # a message over --max-message-bytes is refused by gRPC before it is parsed
        code, details = _code(lambda: stub.Predict(pb.StreamRequest(text="a" * 5000), timeout=5))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
        # at the limits everything works, and the server is still up
        r = stub.Predict(pb.StreamRequest(text="a" * 8, generate=pb.GenerateParams(max_tokens=4)), timeout=5)
        assert r.position == 12 and len(r.generated) == 4
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).max_request_tokens == 8


def test_long_text_is_refused_before_it_is_tokenized(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        srv = SeqpredServer(settings(max_request_tokens=8, on_unknown="error"))
        try:
            engine = srv.engine
            calls: list[int] = []
            real = engine.tokenizer.encode

            def encode(text: str) -> Any:
                calls.append(len(text))
                return real(text)

            monkeypatch.setattr(engine.tokenizer, "encode", encode)
            with pytest.raises(TooManyTokens, match="text: 10000000 characters, at least 10000000 tokens"):
                engine.encode_text("a" * 10_000_000)
            assert calls == []  # refused from its length alone
            assert len(engine.encode_text("a" * 8)) == 8 and calls == [8]
            # word tokens are counted only up to the limit; a long text of few tokens is fine
            engine.tokenizer = WordTokenizer(["a", "b", " ", " " * 1000])
            with pytest.raises(TooManyTokens, match=r"^text: more than 8 tokens, the limit per request$"):
                engine.encode_text("a " * 5_000_000)
            assert len(engine.encode_text("a" + " " * 1000 + "a")) == 3  # 1002 characters, 3 tokens
            # an unknown symbol is named, but a huge one is not echoed whole
            with pytest.raises(UnknownSymbol) as e:
                engine.encode_text("a" + "\t" * 100_000)
            assert str(e.value) == (
                f"text: word {chr(9) * 32!r}... (100000 characters) at offset 1 is not in the model's vocabulary"
            )
            # bytes: fewer characters than the limit may still be more tokens
            engine.tokenizer = ByteTokenizer()
            with pytest.raises(TooManyTokens, match=r"^text: 10 tokens, more than the limit of 8 per request$"):
                engine.encode_text("λλλλλ")
        finally:
            srv.batcher.close()

    asyncio.run(main())


def test_server_created_ids_are_128_random_bits() -> None:
    with running_server() as st, grpc.insecure_channel(st.target) as ch:
        stub = pb_grpc.SeqPredStub(ch)
        ids = [stub.Predict(pb.StreamRequest(text="a", end=True), timeout=5).session_id for _ in range(200)]
    assert len(set(ids)) == len(ids)
    raw = [base64.urlsafe_b64decode(i + "==") for i in ids]
    assert all(len(i) == 22 and len(r) == 16 for i, r in zip(ids, raw, strict=True))
    bits = np.unpackbits(np.frombuffer(b"".join(raw), dtype=np.uint8))
    # 25,600 bits: a fair coin gives 0.5 +- 0.003 (1 sigma); a counter, a clock or a short seed does not
    assert abs(bits.mean() - 0.5) < 0.02
    per_position = bits.reshape(len(ids), 128).mean(axis=0)
    assert per_position.min() > 0.3 and per_position.max() < 0.7  # no fixed bit anywhere


def _copy_model(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(tiny_model(), d)
    return d


def test_graphs_are_verified_as_they_are_loaded(tmp_path: Path) -> None:
    d = _copy_model(tmp_path)
    bundle = load_bundle(d)  # checked once here...
    with open(d / STEP, "r+b") as f:  # ...then changed before onnxruntime reads it
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelLoadError) as e:
        Runtime(bundle, "cpu")
    assert str(e.value).startswith(f"model: {d / STEP}: sha256 ") and "does not match the manifest" in str(e.value)
    with pytest.raises(ModelLoadError, match=r"step\.onnx: sha256 .* does not match the manifest"):
        load_bundle(d)


def test_a_head_graph_must_be_listed_in_the_manifest(tmp_path: Path) -> None:
    d = _copy_model(tmp_path)
    rt = Runtime(load_bundle(d), "cpu")
    assert rt.has_head
    head = onnx.utils.Extractor(onnx.load(str(d / STEP))).extract_model([rt.head_input], ["logprobs"])
    data = head.SerializeToString()
    (d / HEAD).write_bytes(data)
    with pytest.raises(ModelLoadError, match=r"head\.onnx: not listed in model\.json's graphs"):
        Runtime(load_bundle(d), "cpu")
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["graphs"]["head"] = {"file": HEAD, "sha256": "0" * 64}
    (d / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"head\.onnx: sha256 .* does not match the manifest"):
        Runtime(load_bundle(d), "cpu")
    manifest["graphs"]["head"]["sha256"] = hashlib.sha256(data).hexdigest()
    (d / MANIFEST).write_text(json.dumps(manifest))
    listed = Runtime(load_bundle(d), "cpu")
    assert listed.has_head and listed.head_input == rt.head_input


def test_offline_scoring_verifies_the_graph_bytes_it_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import model.export as export
    from model.errors import ConfigError
    from service.runtime.bundle import SEQUENCE
    from service.scoring.scorer import Scorer

    d = _copy_model(tmp_path)
    checked = export.load_model_dir(d)  # the manifest check passes here...
    monkeypatch.setattr(export, "load_model_dir", lambda _path: checked)
    with open(d / SEQUENCE, "r+b") as f:  # ...then the graph changes before the scorer reads it
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ConfigError, match=r"sequence\.onnx: sha256 .* does not match the manifest"):
        Scorer(d)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"sequence\.onnx: sha256 .* does not match the manifest"):
        Scorer(d)
