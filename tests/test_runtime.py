"""The runtime on real exported graphs, against the NumPy network: steps, prompts, the head graph, devices."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from service_helpers import tiny_model, tiny_run

from model.network import forward, log_softmax
from model.train.checkpoint import load_run
from service.errors import ModelLoadError, SettingsError
from service.runtime.bundle import load_bundle
from service.runtime.onnx_runtime import Runtime, resolve_providers
from service.runtime.state_memory import HostStateMemory
from service.server import load_runtime
from service.settings import DEFAULT_MODEL_DIR, Settings

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(
    scope="module",
    params=[("lstm", 2), ("gru", 1), ("fgr", 2), ("clockwork", 2)],
    ids=["lstm-2", "gru-1", "fgr-2", "clockwork-2"],
)
def rt(request: pytest.FixtureRequest) -> tuple[Runtime, object]:
    cell, layers = request.param
    return Runtime(load_bundle(tiny_model(cell, layers)), "cpu"), load_run(tiny_run(cell, layers))


def _state_lists(runtime: Runtime, rng: np.random.Generator, B: int) -> tuple[list[np.ndarray], list]:
    flat = [rng.standard_normal((B, w)).astype(np.float32) for w in runtime.state_widths]
    per_layer = []
    k = 0
    for _ in range(runtime.config.layers):
        h = flat[k]
        c = flat[k + 1] if runtime.config.has_c else None
        k += 2 if runtime.config.has_c else 1
        per_layer.append((h, c))
    return flat, per_layer


def test_state_layout(rt: tuple[Runtime, object]) -> None:
    runtime, _ = rt
    cfg = runtime.config
    assert runtime.state_names == (["h0", "c0", "h1", "c1"] if cfg.has_c else ["h0"])
    assert runtime.has_head
    mem = runtime.new_state_memory(4)
    assert mem.bytes_per_slot == sum(runtime.state_widths) * 4
    want = [cfg.hidden, cfg.c_width] * cfg.layers if cfg.has_c else [cfg.hidden] * cfg.layers
    assert runtime.state_widths == want  # c: H (lstm), 4H (fgr: [c; i; o; f]), 1 (clockwork's step counter)


def test_step_and_head_match_numpy(rt: tuple[Runtime, object], rng: np.random.Generator) -> None:
    runtime, run = rt
    B = 3
    flat, per_layer = _state_lists(runtime, rng, B)
    mem = runtime.new_state_memory(8)
    assert isinstance(mem, HostStateMemory)
    slots = np.array([5, 1, 6])
    for b, slot in enumerate(slots):
        mem.write(int(slot), [a[b] for a in flat])
    tokens = rng.integers(0, runtime.config.vocab_size, B)
    out = runtime.step(mem, slots, tokens, head_rows=np.array([0, 2]))
    f = forward(run.model, run.params, tokens[:, None], per_layer)
    np.testing.assert_allclose(out.logprobs, log_softmax(f.out[:, 0, :], axis=0).T, atol=2e-5)
    # head rows: the distribution before the step, i.e. from the given top-layer h
    top_h = per_layer[-1][0]
    expect_head = log_softmax(run.params["head/W"] @ top_h.T + run.params["head/b"][:, None], axis=0).T
    np.testing.assert_allclose(out.head, expect_head[[0, 2]], atol=2e-5)
    for b, slot in enumerate(slots):
        got = mem.read(int(slot))
        want = [x for h, c in f.state for x in ((h[b], c[b]) if c is not None else (h[b],))]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=2e-6)
    np.testing.assert_allclose(runtime.head(mem, slots[:1]), out.logprobs[:1], atol=2e-5)


def test_sequence_with_lengths_matches_numpy(rt: tuple[Runtime, object], rng: np.random.Generator) -> None:
    runtime, run = rt
    lengths = np.array([7, 2, 5])
    tokens = rng.integers(0, runtime.config.vocab_size, (3, 7))
    flat, per_layer = _state_lists(runtime, rng, 3)
    mem = runtime.new_state_memory(3)
    slots = np.arange(3)
    for b in range(3):
        mem.write(b, [a[b] for a in flat])
    out = runtime.sequence(mem, slots, tokens, lengths)
    for b, n in enumerate(lengths):
        f = forward(
            run.model,
            run.params,
            tokens[b : b + 1, :n],
            [(h[b : b + 1], None if c is None else c[b : b + 1]) for h, c in per_layer],
        )
        lp = log_softmax(f.out[:, :, 0], axis=0)
        np.testing.assert_allclose(out.next_logprobs[b], lp[:, -1], atol=2e-5)
        np.testing.assert_allclose(out.token_logprobs[b, : n - 1], lp[tokens[b, 1:n], np.arange(n - 1)], atol=2e-5)
        np.testing.assert_allclose(mem.read(b)[0], f.state[0][0][0], atol=2e-6)


def test_host_memory_with_mixed_widths(rng: np.random.Generator) -> None:
    """Per-tensor widths (fgr's c is 4H, clockwork's counter 1): slots stay separate in every plane, one slot
    gathers as views, released pages read back as zeros, and a slot costs exactly sum(widths) values."""
    widths = [16, 64, 16, 1]
    mem = HostStateMemory(4096, widths)
    assert mem.K == 4 and mem.bytes_per_slot == 97 * 4
    rows = {s: [rng.standard_normal(w).astype(np.float32) for w in widths] for s in (0, 7, 4095)}
    for s, v in rows.items():
        mem.write(s, v)
    for s, v in rows.items():
        for got, want in zip(mem.read(s), v, strict=True):
            np.testing.assert_array_equal(got, want)
    slots = np.array([4095, 0, 3])
    g = mem.gather(slots)
    assert [a.shape for a in g] == [(3, w) for w in widths]
    np.testing.assert_array_equal(g[1][0], rows[4095][1])
    assert not any(a[2].any() for a in g)  # slot 3 was never written
    one = mem.gather(np.array([7]))
    assert all(np.shares_memory(a, p) for a, p in zip(one, mem.planes, strict=True))
    mem.scatter(slots, [a[::-1].copy() for a in g])  # swap slots 4095 and 3
    np.testing.assert_array_equal(mem.read(3)[3], rows[4095][3])
    assert not mem.read(4095)[2].any()
    mem.zero(7)
    assert not any(v.any() for v in mem.read(7))
    mem.write(2000, [np.ones(w, np.float32) for w in widths])
    mem.release(8)
    np.testing.assert_array_equal(mem.read(3)[3], rows[4095][3])  # below first_free: kept
    assert not any(v.any() for v in mem.read(2000))  # whole pages above slot 8 in every plane: released


def test_missing_and_corrupt_model_dirs(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as e:
        load_bundle(tmp_path / "nope")
    assert str(e.value).startswith("model: model directory") and "does not exist" in str(e.value)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model(), bad)
    with open(bad / "step.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(ModelLoadError) as e:
        load_bundle(bad)
    assert "step.onnx: sha256" in str(e.value) and "does not match the manifest" in str(e.value)


def test_missing_default_model_is_a_clear_error() -> None:
    if (DEFAULT_MODEL_DIR / "model.json").is_file():
        pytest.skip("the default model is installed")
    with pytest.raises(ModelLoadError) as e:
        load_runtime(Settings())
    assert str(e.value) == (
        f"model: the default model is not installed ({str(DEFAULT_MODEL_DIR)!r} has no model.json); "
        "pass --model DIR (or SEQPRED_MODEL) naming a directory written by `seqpred export`"
    )


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(SettingsError) as e:
        resolve_providers("cuda")
    assert str(e.value).startswith("--device cuda: onnxruntime") and "install onnxruntime-gpu" in str(e.value)
    assert resolve_providers("auto") == ["CPUExecutionProvider"]


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider in this onnxruntime build (CPU-only machine)")
@pytest.mark.parametrize("cell", ["lstm", "fgr", "clockwork"])  # c of width H, 4H and 1
def test_cuda_states_stay_on_device_and_match_cpu(cell: str, rng: np.random.Generator) -> None:  # pragma: no cover
    cpu = Runtime(load_bundle(tiny_model(cell)), "cpu")
    gpu = Runtime(load_bundle(tiny_model(cell)), "cuda")
    assert gpu.on_cuda and gpu.provider == "CUDAExecutionProvider"
    mc, mg = cpu.new_state_memory(4), gpu.new_state_memory(4)
    slots = np.array([2, 0])
    for step in range(3):
        tokens = rng.integers(0, cpu.config.vocab_size, 2)
        a = cpu.step(mc, slots, tokens, head_rows=np.array([1]) if step else None)
        b = gpu.step(mg, slots, tokens, head_rows=np.array([1]) if step else None)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    seq = rng.integers(0, cpu.config.vocab_size, (2, 5))
    a2 = cpu.sequence(mc, slots, seq, np.array([5, 3]))
    b2 = gpu.sequence(mg, slots, seq, np.array([5, 3]))
    np.testing.assert_allclose(a2.next_logprobs, b2.next_logprobs, atol=1e-4)
    for s in slots:
        for x, y in zip(mc.read(int(s)), mg.read(int(s)), strict=True):
            np.testing.assert_allclose(x, y, atol=1e-4)
