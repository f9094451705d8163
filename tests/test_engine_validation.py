"""``--on-unknown``: text outside the vocabulary fed as ``<unk>`` (the default for a model with one), skipped, or
refused, on a real server for ``Predict`` and ``Score``; the NumPy network is the oracle."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from service_helpers import oracle, running_server, status_message

from service._proto.seqpred.v1 import seqpred_pb2 as pb
from service._proto.seqpred.v1 import seqpred_pb2_grpc as pb_grpc
from service.errors import SettingsError
from service.settings import from_args

TEXT = "def λ(x)"  # 'λ' is not in the tiny char model's vocabulary


@contextlib.contextmanager
def _stub(mode: str | None) -> Iterator[pb_grpc.SeqPredStub]:
    kw = {} if mode is None else {"on_unknown": mode}
    with running_server(**kw) as st, grpc.insecure_channel(st.target) as ch:
        yield pb_grpc.SeqPredStub(ch)


def _check(stub: pb_grpc.SeqPredStub, ids: list[int]) -> pb.StreamResponse:
    """Predict and Score of TEXT agree with the oracle on ``ids`` (what the server should have fed)."""
    o = oracle()
    r = stub.Predict(pb.StreamRequest(text=TEXT, top_k=3, score=True, end=True))
    assert r.position == len(ids) and [p.id for p in r.predictions] == o.top_k(ids, 3)
    np.testing.assert_allclose(list(r.token_logprobs), o.token_logprobs(ids), atol=3e-5)
    sc = stub.Score(pb.ScoreRequest(sequences=[pb.Sequence(text=TEXT)]))
    np.testing.assert_allclose(sc.scores[0].total_logprob, o.token_logprobs(ids).sum(), atol=1e-4)
    return r


@pytest.mark.parametrize("mode", [None, "unk"])  # None: the default, auto
def test_unknown_text_is_fed_as_unk_by_default(mode: str | None) -> None:
    o = oracle()
    ids = o.encode(TEXT)
    assert ids[4] == 0 and o.tokenizer is not None and o.tokenizer.unk_id == 0
    with _stub(mode) as stub:
        _check(stub, ids)
        sc = stub.Score(pb.ScoreRequest(sequences=[pb.Sequence(text="λλ")]))
        assert sc.scores[0].num_tokens == 2


def test_skip_drops_unknown_symbols() -> None:
    with _stub("skip") as stub:
        _check(stub, oracle().encode(TEXT.replace("λ", "")))
        with pytest.raises(grpc.RpcError) as e:  # nothing left to score
            stub.Score(pb.ScoreRequest(sequences=[pb.Sequence(text="λλ")]))
        assert status_message(e.value) == "sequences[0]: empty; set tokens or text"


def test_error_refuses_the_request_naming_the_symbol() -> None:
    with _stub("error") as stub:
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(pb.StreamRequest(text=TEXT, top_k=3))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert status_message(e.value) == "text: character 'λ' at offset 4 is not in the model's vocabulary"
        with pytest.raises(grpc.RpcError) as e:
            stub.Score(pb.ScoreRequest(sequences=[pb.Sequence(text="ab"), pb.Sequence(text="λ")]))
        want = "sequences[1].text: character 'λ' at offset 0 is not in the model's vocabulary"
        assert status_message(e.value) == want


def test_the_setting_takes_four_values() -> None:
    assert from_args([], env={}).on_unknown == "auto"
    assert from_args([], env={"SEQPRED_ON_UNKNOWN": "skip"}).on_unknown == "skip"
    with pytest.raises(
        SettingsError, match=r"^--on-unknown \(SEQPRED_ON_UNKNOWN\): must be one of auto, error, skip, "
    ):
        from_args(["--on-unknown", "maybe"], env={})
