"""service.scoring.cli: the offline scorer against a NumPy oracle and the running service, and ``seqpred score``.

The models are real: trained for 2 steps by ``seqpred train`` and exported by ``model.export.export_run``, once per
test process (:func:`tiny_model`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import itertools
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.errors import ConfigError, DataError
from model.network import forward, log_softmax, zero_state
from model.train.checkpoint import load_run
from service.scoring.cli import main_score
from service.scoring.inputs import Item
from service.scoring.scorer import WINDOWS_AHEAD, Scorer, plan_batches

CORPUS = "the quick brown fox jumps over the lazy dog\nand the cat sat on the mat\n" * 40
_TMP = Path(tempfile.mkdtemp(prefix="seqpred-scoring-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


def tiny_run(cell: str = "lstm", layers: int = 2) -> Path:
    return _tiny_run(cell, layers)


def tiny_model(cell: str = "lstm", layers: int = 2) -> Path:
    """A model directory (cached per process): ``cell`` x ``layers``, H=16, E=8, char tokenizer."""
    return _tiny_model(cell, layers)


@functools.cache
def _tiny_run(cell: str, layers: int) -> Path:
    from model.cli import main

    corpus = _TMP / "corpus.txt"
    corpus.write_text(CORPUS)
    out = _TMP / f"run-{cell}-{layers}"
    argv = ["train", "--corpus", str(corpus), "--steps", "2", "--hidden", "16", "--embed", "8", "--batch", "2",
            "--seq-len", "8", "--cell", cell, "--layers", str(layers), "--out", str(out), "--no-progress",
            "--eval-tokens", "200"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    return out


@functools.cache
def _tiny_model(cell: str, layers: int) -> Path:
    from model.export import export_run

    return export_run(tiny_run(cell, layers), _TMP / f"model-{cell}-{layers}")


def oracle(cell: str = "lstm", layers: int = 2) -> Any:
    return _oracle(cell, layers)


@functools.cache
def _oracle(cell: str, layers: int) -> Any:
    return load_run(tiny_run(cell, layers))


def oracle_logprobs(ids: np.ndarray, cell: str = "lstm", layers: int = 2) -> np.ndarray:
    """NumPy ``[T, V]``: row t is log p(. | ids[: t + 1]) from the zero state (float64 math on the run's weights)."""
    run = oracle(cell, layers)
    f = forward(run.model, run.params, np.asarray(ids, dtype=np.int64)[None, :], zero_state(run.model, 1))
    return np.asarray(log_softmax(f.out[:, :, 0], axis=0).T)


def encode(text: str) -> np.ndarray:
    tok = oracle().tokenizer
    return np.asarray(tok.encode(text), dtype=np.int64)


def random_seqs(rng: np.random.Generator, n: int, max_len: int, V: int) -> list[np.ndarray]:
    return [rng.integers(0, V, rng.integers(0, max_len + 1)).astype(np.int64) for _ in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# The scorer


@pytest.mark.parametrize(("cell", "layers"), [("lstm", 2), ("gru", 1), ("fgr", 2), ("clockwork", 2)])
def test_scores_match_the_numpy_oracle(cell: str, layers: int, rng: np.random.Generator) -> None:
    scorer = Scorer(tiny_model(cell, layers), top_k=3, threads=2, chunk_len=5)
    V = scorer.config.vocab_size
    seqs = [*random_seqs(rng, 12, 17, V), np.zeros(0, np.int64), np.array([3]), np.array([3, 4])]
    for ids, s in zip(seqs, scorer.score(seqs), strict=True):
        assert s.num_tokens == len(ids)
        assert s.token_logprobs.shape == (max(len(ids) - 1, 0),)
        if len(ids) == 0:
            continue
        lp = oracle_logprobs(ids, cell, layers)
        np.testing.assert_allclose(s.token_logprobs, lp[np.arange(len(ids) - 1), ids[1:]], atol=2e-5)
        assert s.top_ids is not None and s.top_logprobs is not None
        want = np.argsort(-lp, axis=1, kind="stable")[:, :3]
        np.testing.assert_allclose(s.top_logprobs, np.take_along_axis(lp, want, axis=1), atol=2e-5)
        # ids may swap only where two log-probabilities tie to within float32 rounding
        same = np.take_along_axis(lp, s.top_ids, axis=1)
        np.testing.assert_allclose(same, s.top_logprobs, atol=2e-5)


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=10),
    chunk_len=st.integers(1, 12),
    max_batch=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_chunking_and_batching_change_nothing(lengths: list[int], chunk_len: int, max_batch: int, seed: int) -> None:
    """State carried across chunks and any batch composition give the unchunked scores (to float32 rounding)."""
    rng = np.random.default_rng(seed)
    V = ref_scorer().config.vocab_size
    seqs = [rng.integers(0, V, n).astype(np.int64) for n in lengths]
    ref = [ref_scorer().score_batch([s])[0] for s in seqs]
    got = chunk_scorer(chunk_len, max_batch).score(seqs)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-5)


@functools.cache
def ref_scorer() -> Scorer:
    return Scorer(tiny_model(), threads=1, chunk_len=10_000)


@functools.cache
def chunk_scorer(chunk_len: int, max_batch: int) -> Scorer:
    return Scorer(tiny_model(), threads=2, chunk_len=chunk_len, max_batch=max_batch, batch_tokens=16)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 600), max_size=60),
    chunk_len=st.integers(1, 300),
    batch_tokens=st.integers(1, 2000),
    max_batch=st.integers(1, 50),
)
def test_plan_batches_covers_every_sequence_once(
    lengths: list[int], chunk_len: int, batch_tokens: int, max_batch: int
) -> None:
    batches = plan_batches(lengths, chunk_len, batch_tokens, max_batch)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(1, min(lengths[b[0]], chunk_len))
        assert 1 <= len(b) <= max(1, min(max_batch, batch_tokens // width))
        assert all(lengths[i] <= lengths[b[0]] for i in b)  # the first row is the widest
    order = [lengths[i] for b in batches for i in b]
    assert order == sorted(order, reverse=True)


def test_stream_keeps_input_order_and_reads_ahead_a_bounded_window(rng: np.random.Generator) -> None:
    scorer = Scorer(tiny_model(), threads=2)
    V = scorer.config.vocab_size
    pulled = 0

    def endless() -> Iterator[Item]:  # an input far larger than memory: never ends
        nonlocal pulled
        for k in itertools.count():
            pulled += 1
            yield Item(k, f"s{k}", rng.integers(0, V, 1 + k % 23).astype(np.int64))

    first = list(itertools.islice(scorer.score_stream(endless(), window_tokens=100, window_seqs=10), 35))
    assert [it.id for it, _ in first] == [f"s{k}" for k in range(35)]
    assert all(s.num_tokens == len(it.ids) for it, s in first)
    assert pulled <= 35 + (WINDOWS_AHEAD + 1) * 10  # a bounded number of windows is read ahead


def test_scorer_rejects_out_of_range_ids() -> None:
    V = ref_scorer().config.vocab_size
    with pytest.raises(DataError, match=rf"sequence 1: token id {V} is out of range \[0, {V}\)"):
        ref_scorer().score([np.array([1, 2]), np.array([0, V])])


def test_scorer_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--top-k: must be at most the vocabulary size"):
        Scorer(tiny_model(), top_k=10_000)
    with pytest.raises(ConfigError, match="--chunk-len: must be >= 1, got 0"):
        Scorer(tiny_model(), chunk_len=0)
    with pytest.raises(ConfigError, match=f"model: model directory '{tmp_path}' does not exist|model: .*no model.json"):
        Scorer(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# The command line


def run_cli(argv: list[str], stdin: bytes = b"") -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main_score(["--no-progress", *argv], stdin=io.BytesIO(stdin), stdout=out)
    return rc, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_text_file_records_in_input_order(tmp_path: Path) -> None:
    lines = ["the cat", "", "a", "the quick brown fox jumps over the lazy dog " * 8, "dog"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    rc, recs, err = run_cli(["--model", str(tiny_model()), str(tmp_path / "in.txt"), "--chunk-len", "16"])
    assert rc == 0, err
    assert [r["id"] for r in recs] == [1, 3, 4, 5]  # line numbers; the blank line 2 is skipped
    assert set(recs[0]) == {
        "id", "num_tokens", "scored_tokens", "total_logprob", "nats_per_token", "perplexity", "unknown_tokens"
    }  # fmt: skip
    for r, text in zip(recs, [lines[0], *lines[2:]], strict=True):
        ids = encode(text)
        lp = oracle_logprobs(ids)
        total = float(lp[np.arange(len(ids) - 1), ids[1:]].sum())
        assert r["num_tokens"] == len(ids) and r["scored_tokens"] == len(ids) - 1
        assert r["total_logprob"] == pytest.approx(total, abs=1e-3)
    one = recs[1]  # "a": one token, nothing to score
    assert one["scored_tokens"] == 0 and one["total_logprob"] == 0
    assert one["nats_per_token"] is None and one["perplexity"] is None
    r = recs[0]
    assert r["nats_per_token"] == pytest.approx(-r["total_logprob"] / r["scored_tokens"])
    assert r["perplexity"] == pytest.approx(np.exp(r["nats_per_token"]))
    assert "seqpred score: 4 sequences" in err


def test_cli_per_token_and_top_k_fields(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "x", "text": "the cat"}\n{"id": "e", "tokens": []}\n')
    rc, (r, empty), err = run_cli(["--model", str(tiny_model()), str(inp), "--per-token", "--top-k", "2"])
    assert rc == 0, err
    ids = encode("the cat")
    lp = oracle_logprobs(ids)
    assert r["token_ids"] == ids.tolist()
    assert "".join(r["token_texts"]) == "the cat"
    assert r["token_logprobs"][0] is None
    np.testing.assert_allclose(r["token_logprobs"][1:], lp[np.arange(len(ids) - 1), ids[1:]], atol=1e-5)
    assert sum(r["token_logprobs"][1:]) == pytest.approx(r["total_logprob"], abs=1e-4)
    assert r["top_k"][0] is None and len(r["top_k"]) == len(ids)
    for t in range(1, len(ids)):
        got = r["top_k"][t]
        assert [p["logprob"] for p in got] == pytest.approx(np.sort(lp[t - 1])[::-1][:2], abs=1e-5)
        assert {"id", "token", "logprob"} == set(got[0])
    assert [p["logprob"] for p in r["next_top_k"]] == pytest.approx(np.sort(lp[-1])[::-1][:2], abs=1e-5)
    assert empty["num_tokens"] == 0 and empty["token_ids"] == [] and empty["token_logprobs"] == []
    assert empty["top_k"] == [] and empty["next_top_k"] is None


def test_cli_directory_and_stdin(tmp_path: Path) -> None:
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("the dog\n")
    (d / "sub" / "a.txt").write_text("a cat")
    out = tmp_path / "out" / "scores.jsonl"
    rc, _, err = run_cli(["--model", str(tiny_model()), str(d), "--out", str(out)])
    assert rc == 0, err
    assert [(r["id"], r["num_tokens"]) for r in records(out)] == [("b.txt", 8), ("sub/a.txt", 5)]
    rc, recs, err = run_cli(["--model", str(tiny_model()), "-"], stdin=b"the dog\nthe cat\n")
    assert rc == 0, err
    assert [r["id"] for r in recs] == [1, 2]


def test_cli_malformed_line_fail_writes_everything_before_it(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "text": "the"}\n{"id": 2, "tokens": [1, 999]}\n{"id": 3, "text": "cat"}\n')
    out = tmp_path / "out.jsonl"
    rc, _, err = run_cli(["--model", str(tiny_model()), str(inp), "--out", str(out)])
    assert rc == 2
    V = tiny_config().vocab_size
    msg = f"seqpred: error: {inp}:2: tokens[1]: token id 999 is out of range [0, {V}) (pass --on-error skip"
    assert msg in err
    assert err.strip().splitlines()[-1].startswith("seqpred: error:")
    assert [r["id"] for r in records(out)] == [1]
    # fix nothing, skip it instead, and continue where the failed run stopped
    rc, _, err = run_cli(["--model", str(tiny_model()), str(inp), "--out", str(out), "--resume", "--on-error", "skip"])
    assert rc == 0, err
    assert f"seqpred: warning: {inp}:2: tokens[1]: token id 999" in err and "(skipped)" in err
    assert "1 malformed skipped; 1 already in OUTPUT" in err
    assert [r["id"] for r in records(out)] == [1, 3]


def test_cli_resume_after_a_crash_mid_line(tmp_path: Path) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("the cat\nthe dog\na fox\n")
    out = tmp_path / "out.jsonl"
    rc, _, _ = run_cli(["--model", str(tiny_model()), str(inp), "--out", str(out)])
    full = out.read_text()
    first, second = full.splitlines(keepends=True)[:2]
    out.write_text(first + second[: len(second) // 2])  # killed while writing line 2
    rc, _, err = run_cli(["--model", str(tiny_model()), str(inp), "--out", str(out), "--resume"])
    assert rc == 0, err
    assert "dropped an incomplete last line" in err
    assert out.read_text() == full


def test_cli_unknown_symbols(tmp_path: Path) -> None:
    """By default a char model scores a character it never saw as <unk> (and counts it); ``skip`` drops it;
    ``error`` makes the sequence malformed. A run that fails before its first record leaves no output file, so the
    same command can simply be run again."""
    inp = tmp_path / "in.txt"
    inp.write_text("the λ cat\nthe cat\n")
    model = str(tiny_model())
    rc, recs, err = run_cli(["--model", model, str(inp)])
    assert rc == 0, err
    assert [r["unknown_tokens"] for r in recs] == [1, 0] and recs[0]["num_tokens"] == 9
    unk = recs[0]
    rc, recs, err = run_cli(["--model", model, str(inp), "--allow-unknown"])  # the older spelling
    assert rc == 0 and recs[0] == unk
    rc, recs, err = run_cli(["--model", model, str(inp), "--on-unknown", "skip", "--per-token"])
    assert rc == 0, err
    assert recs[0]["unknown_tokens"] == 1 and "".join(recs[0]["token_texts"]) == "the  cat"
    out = tmp_path / "out.jsonl"
    rc, recs, err = run_cli(["--model", model, str(inp), "--on-unknown", "error", "--out", str(out)])
    assert rc == 2
    assert f"{inp}:1: text: character 'λ' at offset 4 is not in the model's vocabulary" in err
    assert "--on-unknown unk scores it as <unk>, skip drops it" in err
    assert not out.exists()  # nothing was written: no empty file to block the next run
    rc, recs, err = run_cli(["--model", model, str(inp), "--out", str(out)])
    assert rc == 0, err
    assert len(out.read_text().splitlines()) == 2
    rc, _, err = run_cli(["--model", model, str(inp), "--on-unknown", "error", "--allow-unknown"])
    assert rc == 2 and "--allow-unknown: means --on-unknown unk, but --on-unknown error was given" in err


def test_cli_progress_on_resume_counts_what_was_already_done(tmp_path: Path) -> None:
    """On a terminal the bar of a resumed run starts with the sequences OUTPUT already holds (a real pty)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.txt").write_text(f"the cat {i}")
    out = tmp_path / "out.jsonl"
    model = str(tiny_model())
    rc, _, err = run_cli(["--model", model, str(folder), "--out", str(out)])
    assert rc == 0, err
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:4]))  # as if interrupted after 4 of 6
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # tqdm draws nothing 0 columns wide
    cmd = [sys.executable, "-m", "model.cli", "score", "--model", model, str(folder), "--out", str(out), "--resume"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    shown = b"".join(chunks).decode(errors="replace")
    assert "scored: 100%" in shown and "| 6/6 [" in shown and "4 already in OUTPUT" in shown, shown
    assert "| 2/6 [" not in shown, shown  # it used to end at the 2 sequences this run scored
    assert len(out.read_text().splitlines()) == 6


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{missing}"], "seqpred: error: input: '{missing}' does not exist"),
        (["{inp}", "--top-k", "-1"], "seqpred: error: --top-k: must be >= 0, got -1"),
        (["{inp}", "--threads", "-2"], "seqpred: error: --threads: must be >= 0, got -2"),
        (["{inp}", "--out", "{inp}"], "already exists; pass --resume"),
        (["{inp}", "--resume"], "seqpred: error: --resume: needs --out FILE"),
        (["{inp}", "--format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_cli_user_errors_are_one_line_exit_2(tmp_path: Path, argv: list[str], message: str) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("the cat\n")
    subst = {"inp": str(inp), "missing": str(tmp_path / "missing.txt")}
    rc, recs, err = run_cli(["--model", str(tiny_model()), *(a.format(**subst) for a in argv)])
    assert rc == 2 and recs == []
    assert message.format(**subst) in err
    assert len([x for x in err.splitlines() if "error:" in x]) == 1


def test_cli_model_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("the cat\n")
    rc, _, err = run_cli(["--model", str(tmp_path), str(inp)])
    assert rc == 2 and "seqpred: error: model: model directory" in err and "no model.json" in err
    import service.settings

    monkeypatch.delenv("SEQPRED_MODEL", raising=False)
    monkeypatch.setattr(service.settings, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    rc, _, err = run_cli([str(inp)])
    assert rc == 2 and "model: the default model is not installed" in err and "--model DIR" in err
    monkeypatch.setenv("SEQPRED_MODEL", str(tiny_model()))
    rc, recs, err = run_cli([str(inp)])
    assert rc == 0 and len(recs) == 1, err


def test_cli_output_does_not_depend_on_threads_or_batching(tmp_path: Path, rng: np.random.Generator) -> None:
    V = tiny_config().vocab_size
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": k, "tokens": s.tolist()}) + "\n" for k, s in enumerate(random_seqs(rng, 40, 50, V)))
    )
    base = ["--model", str(tiny_model()), str(inp)]
    _, a, _ = run_cli([*base, "--threads", "1"])
    _, b, _ = run_cli([*base, "--threads", "2", "--batch-tokens", "40", "--chunk-len", "7", "--window-tokens", "64"])
    assert [r["id"] for r in a] == [r["id"] for r in b] == list(range(40))
    np.testing.assert_allclose([r["total_logprob"] for r in a], [r["total_logprob"] for r in b], atol=1e-4)


@functools.cache
def tiny_config() -> Any:
    return oracle().model


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_score(["--help"]) == 0
    assert "--on-error" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# Equivalence with the service


def test_offline_scores_equal_streaming_through_the_service_token_by_token(tmp_path: Path) -> None:
    """The same text scored by ``seqpred score`` and fed to a real server one token per request."""
    from service.client.sync import Client
    from service.server import ServerThread
    from service.settings import Settings

    texts = ["the quick brown fox", "a", "the cat sat on the mat\nand the dog"]
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(texts) + "\n")
    K = 3
    rc, recs, err = run_cli(
        ["--model", str(tiny_model()), str(inp), "--per-token", "--top-k", str(K), "--chunk-len", "4"]
    )
    assert rc == 0, err
    settings = Settings(model=tiny_model(), port=0, metrics_port=-1, host="localhost")
    with ServerThread(settings) as server, Client(server.target, timeout=10) as client:
        client.wait_ready(10)
        for rec in recs:
            streamed: list[float] = []
            preds: list[list[int]] = []
            with client.session(end_on_exit=True) as s:
                for t in rec["token_ids"]:
                    res = s.feed(tokens=[t], top_k=K, score=True)
                    streamed += res.token_logprobs
                    preds.append([p.id for p in res.predictions])
            assert len(streamed) == rec["scored_tokens"]
            np.testing.assert_allclose(streamed, rec["token_logprobs"][1:], atol=1e-5)
            offline = [[p["id"] for p in row] for row in rec["top_k"][1:]] + [[p["id"] for p in rec["next_top_k"]]]
            assert preds == offline
