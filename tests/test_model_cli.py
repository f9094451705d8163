"""The command line end to end: train, resume, eval, sample, and every user error as one line + exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.cli import main
from model.train import parallel
from model.train.checkpoint import load_run

TEXT = "".join(
    f"def f{i}(self, x):\n    return x * {i} + self.y{i % 7}\n\n" for i in range(400)
)  # ~17k characters of Python-ish text


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def _train(corpus: Path, out: Path, *extra: str) -> int:
    args = [
        "train",
        "--corpus",
        str(corpus),
        "--hidden",
        "16",
        "--embed",
        "8",
        "--batch",
        "4",
        "--seq-len",
        "16",
        "--out",
        str(out),
        "--no-progress",
        "--eval-every",
        "3",
        "--eval-tokens",
        "500",
        *extra,
    ]
    return main(args)


def test_train_writes_a_self_describing_run(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _train(corpus, out, "--steps", "8", "--checkpoint-every", "4") == 0
    for name in ("config.json", "checkpoint.npz", "vocab.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r and "tokens_per_s" in r for r in records)
    val = [r for r in records if "val_nats_per_token" in r]
    assert val and {"val_bits_per_token", "val_perplexity"} <= set(val[-1])
    run = load_run(out)
    assert run.meta["step"] == 8 and run.model.hidden == 16
    assert "validation" in capsys.readouterr().out


def test_resume_is_exact(corpus: Path, tmp_path: Path) -> None:
    """8 steps in one go equal 4 steps plus a resumed 4, bit for bit (dropout RNG and stream state included)."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("--layers", "2", "--dropout", "0.2", "--checkpoint-every", "100")
    assert _train(corpus, a, "--steps", "8", *common) == 0
    assert _train(corpus, b, "--steps", "4", *common) == 0
    assert _train(corpus, b, "--steps", "8", "--resume", *common) == 0
    ra, rb = load_run(a, with_training_state=True), load_run(b, with_training_state=True)
    assert rb.meta["step"] == 8
    for k in ra.params:
        np.testing.assert_array_equal(ra.params[k], rb.params[k])
    for k in ra.opt_state:
        np.testing.assert_array_equal(ra.opt_state[k], rb.opt_state[k])


def test_divergence_keeps_last_good_checkpoint(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    real = parallel.batch_grads
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        loss, wsum, grads, state = real(*args, **kwargs)
        calls["n"] += 1
        return (float("nan") if calls["n"] == 6 else loss), wsum, grads, state

    monkeypatch.setattr(parallel, "batch_grads", poisoned)
    args = ("--steps", "10", "--checkpoint-every", "2", "--eval-every", "100", "--threads", "1")
    assert _train(corpus, out, *args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "not finite" in err[0] and "last good checkpoint" in err[0]
    run = load_run(out)
    assert run.meta["step"] == 4
    assert all(np.isfinite(v).all() for v in run.params.values())


def test_eval_json_and_sample(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _train(corpus, out, "--steps", "3") == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["nats_per_token"] > 0 and res["tokens"] > 0
    assert res["bits_per_token"] == pytest.approx(res["nats_per_token"] / np.log(2))
    assert main(["sample", str(out), "--prompt", "def ", "--length", "20", "--seed", "3"]) == 0
    s1 = capsys.readouterr().out
    assert main(["sample", str(out), "--prompt", "def ", "--length", "20", "--seed", "3"]) == 0
    assert s1 == capsys.readouterr().out and s1.startswith("def ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--corpus", "/no/such/file.txt"], "/no/such/file.txt"),
        (["--cell", "lsmt"], "cell: unknown cell 'lsmt'"),
        (["--hidden", "0"], "hidden: must be a positive integer, got 0"),
        (["--batch", "-3"], "batch: must be a positive integer, got -3"),
        (["--lr", "0"], "lr: must be a positive number"),
        (["--steps", "0"], "give --steps or --minutes"),
        (["--batch", "4", "--seq-len", "100000"], "fewer than batch * (seq_len + 1)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    base = [
        "train",
        "--corpus",
        str(corpus),
        "--steps",
        "2",
        "--hidden",
        "8",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqpred: error:") and message in err[0]
    assert not out.exists()  # nothing written


def test_empty_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["train", "--corpus", str(empty), "--steps", "1", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "empty" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _train(corpus, out, "--steps", "2") == 0
    before = (out / "checkpoint.npz").read_bytes()
    assert _train(corpus, out, "--steps", "2") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "checkpoint.npz").read_bytes() == before
    assert _train(corpus, out, "--steps", "2", "--overwrite", "--seed", "5") == 0
    assert (out / "checkpoint.npz").read_bytes() != before


def test_resume_with_other_config_is_refused(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _train(corpus, out, "--steps", "2") == 0
    before = (out / "checkpoint.npz").read_bytes()
    assert (
        main(
            [
                "train",
                "--corpus",
                str(corpus),
                "--hidden",
                "32",
                "--embed",
                "8",
                "--batch",
                "4",
                "--seq-len",
                "16",
                "--steps",
                "4",
                "--out",
                str(out),
                "--resume",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "resume: hidden is 16 in the checkpoint, 32 requested" in capsys.readouterr().err
    assert (out / "checkpoint.npz").read_bytes() == before
    assert main(["train", "--corpus", str(corpus), "--steps", "2", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_corrupt_checkpoint(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _train(corpus, out, "--steps", "2") == 0
    (out / "checkpoint.npz").write_bytes(b"not a zip file")
    assert main(["eval", str(out)]) == 2
    assert "corrupt checkpoint" in capsys.readouterr().err


def test_export_to_an_existing_directory_names_the_flag(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CLI user is told about ``--overwrite`` (not the Python API's ``overwrite=True``); nothing is replaced."""
    run, model = tmp_path / "run", tmp_path / "model"
    assert _train(corpus, run, "--steps", "2") == 0
    model.mkdir()
    (model / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"seqpred: error: out: {str(model)!r} already exists; pass --overwrite to replace it"]
    assert (model / "keep.txt").read_text() == "mine"
    assert main(["export", str(run), "--out", str(model), "--overwrite"]) == 0
    assert (model / "model.json").is_file() and not (model / "keep.txt").exists()


def test_resume_of_a_finished_run_says_so_and_does_nothing(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert _train(corpus, out, "--steps", "6") == 0
    before = {name: (out / name).read_bytes() for name in ("checkpoint.npz", "metrics.jsonl", "config.json")}
    capsys.readouterr()
    assert _train(corpus, out, "--steps", "6", "--resume") == 0
    cap = capsys.readouterr()
    val = load_run(out).meta["val_nats_per_token"]
    assert cap.out.splitlines() == [
        f"{out}: the run already finished at step 6 (validation {val:.4f} nats/token); nothing to do "
        "(a larger --steps or --minutes trains on)"
    ]
    assert cap.err == ""
    assert {name: (out / name).read_bytes() for name in before} == before
    assert _train(corpus, out, "--steps", "8", "--resume") == 0  # more steps: it trains on
    assert load_run(out).meta["step"] == 8


def test_final_evaluation_is_a_bounded_sample_with_its_standard_error(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--eval-tokens N`` scores about N validation tokens (``all``: every one), logs the count and the standard
    error, and ``seqpred eval`` with the same ``--max-tokens`` scores the same sample (the same number)."""
    out = tmp_path / "run"
    capsys.readouterr()
    assert _train(corpus, out, "--steps", "4", "--eval-tokens", "600") == 0
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    # 600 tokens make 4 streams (each at least one 128-token window) of 150, each but its first token scored
    assert final["step"] == 4 and final["val_tokens"] == final["val_sample_tokens"] == 4 * (150 - 1)
    assert final["val_stderr"] > 0
    stdout = capsys.readouterr().out
    val = f"{final['val_nats_per_token']:.4f} ± {final['val_stderr']:.4f} nats/token"
    assert f"{val} (596 of 1,938 validation tokens)" in stdout
    assert main(["eval", str(out), "--max-tokens", "600", "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tokens"] == 596 and res["nats_per_token"] == pytest.approx(final["val_nats_per_token"], abs=1e-6)
    assert res["stderr"] == pytest.approx(final["val_stderr"], abs=1e-6)
    assert main(["eval", str(out), "--max-tokens", "all", "--json"]) == 0
    cap = capsys.readouterr()
    whole = json.loads(cap.out)
    assert whole["streams"] == 1938 // 129 and whole["tokens"] == 15 * (1938 // 15 - 1)  # each but its first token
    assert "validation" in cap.err and f"{whole['tokens'] / 1000:.2f}k" in cap.err  # the progress bar, completed
    with pytest.raises(SystemExit) as e:
        main(["eval", str(out), "--max-tokens", "1"])
    assert e.value.code == 2 and "--max-tokens: must be >= 2 (or 'all'), got 1" in capsys.readouterr().err


def test_training_progress_ends_with_the_final_evaluation_bar(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["train", "--corpus", str(corpus), "--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "16"]
    assert main([*args, "--steps", "5", "--eval-tokens", "600", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "5/5" in err and "validation (step 5)" in err and "596/596" in err
