"""Offline scoring speed: ``service.scoring.scorer.Scorer`` against PyTorch eager ``nn.LSTM`` and ONNX's native LSTM op.

Model: a char LSTM, V=65 (Tiny Shakespeare's symbols), E=64, H=256, one layer, weights from ``init_params`` (seed
0; speed does not depend on their values), exported with ``model.export.export_model`` (fp32).
Workload (tokens counted = every input token): ``lines``, the first N non-empty lines of Tiny Shakespeare (1-60+
characters each), and ``chunks``, M consecutive 256-character chunks of it. Every engine gets the same
sequences; the two ONNX engines and PyTorch also get the same length-sorted batches (``plan_batches``).

Engines:
* ``ours``: ``Scorer`` (explicit-gate Scan graph) with its defaults: one worker thread per core, each running whole
  batches with 1 onnxruntime thread; ``ours 1x{n}``: one worker, {n} intra-op threads.
* ``native``: the same ``Scorer`` running ``model.export.native.native_sequence_model`` (onnxruntime's LSTM kernel).
* ``torch``: ``nn.Embedding -> nn.LSTM -> nn.Linear -> log_softmax -> gather`` under ``torch.no_grad()``, same
  weights (ONNX gate blocks i,o,f,c permuted to PyTorch's i,f,g,o; our one bias as ``b_ih``, ``b_hh`` = 0), checked
  against our scores before timing. Three settings: {n} intra-op threads (PyTorch's default), 1 thread, and
  {n} Python threads x 1 intra-op thread sharing the batches (our scheme). ``ratio`` uses the *fastest* of them.
* ``e2e``: ``seqpred score`` on the same data as a JSONL file, output to a file (parsing, tokenizing, JSON, I/O).

Timing: engines alternate within each round (so background load hits all alike); tokens/s from the median round.

    python bench/score_speed.py              # table
    python bench/score_speed.py --json       # ... and one JSON object on the last line
    python bench/score_speed.py --engine ray --json   # seqpred score --engine ray vs --engine local (below)

``--engine ray`` times the whole ``seqpred score`` command (JSONL in, JSONL out) on the same input (both workloads
repeated ``--repeat`` times) with ``--engine local`` and ``--engine ray``, alternating, on one local Ray instance
started once (``ray.init(num_cpus=cores)``, its start-up reported apart as ``ray_init_s``). Each Ray run pays
its actors' start-up (``ray_fixed_s``: a run on a 20-line input); ``ray_steady_tokens_per_s`` leaves it out.
``ray_unordered`` is the same run without ``preserve_order`` (what ordered output costs). The outputs are
checked to hold the same ids in the same order and the same totals (1e-6) before anything is reported. JSON keys:
``local_tokens_per_s``, ``ray_tokens_per_s``, ``ray_ratio`` (target >= 0.8), ``ray_steady_tokens_per_s``,
``ray_steady_ratio``, ``ray_unordered_tokens_per_s``, ``ray_per_actor_tokens_per_s``, the times and the load.

JSON keys (default engine): ``ratio`` (our tokens/s / the best PyTorch setting's; target >= 1.0),
``ratio_torch_default``, ``ratio_native``, ``{engine}_tok_s`` per engine, per-workload
``{workload}_{engine}_tok_s``, the config and load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from model.config import ModelConfig
from model.data.tokenizers import CharTokenizer
from model.export import export_model
from model.export.native import native_sequence_model
from model.network import init_params
from service.scoring.cli import main_score
from service.scoring.scorer import BATCH_TOKENS, CHUNK_LEN, MAX_BATCH, Scorer, plan_batches, usable_cores

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
E, H = 64, 256


def load_text(path: Path) -> str:
    if path.is_file():
        return path.read_text()
    # no corpus on this machine: a deterministic stand-in with the same shape (65 symbols, lines of 1-60 chars)
    rng = np.random.default_rng(0)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'-&$3\n"))
    return "".join(rng.choice(alphabet[:-1], rng.integers(1, 60))) + "\n" * 50_000


def workloads(text: str, n_lines: int, n_chunks: int) -> dict[str, list[str]]:
    lines = [ln for ln in text.split("\n") if ln.strip()][:n_lines]
    chunks = [text[k * CHUNK_LEN : (k + 1) * CHUNK_LEN] for k in range(n_chunks)]
    return {"lines": lines, "chunks": chunks}


def torch_engine(params: dict[str, np.ndarray], threads: int) -> Callable[[list[np.ndarray]], Any]:
    """PyTorch eager scoring with our weights; returns ``run(batch) -> per-row total log-probability``."""
    import torch

    V = params["embed"].shape[0]
    emb = torch.nn.Embedding(V, E)
    lstm = torch.nn.LSTM(E, H)
    head = torch.nn.Linear(H, V)
    perm = np.concatenate([np.arange(k * H, (k + 1) * H) for k in (0, 2, 3, 1)])  # ONNX i,o,f,c -> torch i,f,g,o
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(params["embed"]))
        lstm.weight_ih_l0.copy_(torch.from_numpy(params["layer0/W"][perm]))
        lstm.weight_hh_l0.copy_(torch.from_numpy(params["layer0/R"][perm]))
        lstm.bias_ih_l0.copy_(torch.from_numpy(params["layer0/b"][perm]))
        lstm.bias_hh_l0.zero_()
        head.weight.copy_(torch.from_numpy(params["head/W"]))
        head.bias.copy_(torch.from_numpy(params["head/b"]))

    def run(seqs: list[np.ndarray]) -> np.ndarray:
        lens = np.array([len(s) for s in seqs])
        T = int(lens.max())
        x = np.zeros((T, len(seqs)), dtype=np.int64)
        for b, s in enumerate(seqs):
            x[: len(s), b] = s
        xt = torch.from_numpy(x)
        with torch.no_grad():
            y, _ = lstm(emb(xt))  # [T, B, H]; right padding: padded steps come after the valid ones
            lp = torch.log_softmax(head(y[:-1]), dim=-1)  # [T-1, B, V]
            tok = lp.gather(2, xt[1:, :, None])[:, :, 0]  # log p(x[t+1] | x[:t+1])
            mask = torch.arange(T - 1)[:, None] < torch.from_numpy(lens - 1)[None, :]
            return (tok * mask).sum(0).double().numpy()

    torch.set_num_threads(threads)
    return run


def run_batches(fn: Callable[[list[np.ndarray]], Any], batches: list[list[np.ndarray]], py_threads: int) -> None:
    if py_threads <= 1:
        for b in batches:
            fn(b)
        return
    with ThreadPoolExecutor(py_threads) as ex:
        list(ex.map(fn, batches))


def e2e(model_dir: Path, jsonl: Path, out: Path) -> float:
    """Seconds for ``seqpred score`` on ``jsonl`` (fresh output file)."""
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        rc = main_score([str(jsonl), "--model", str(model_dir), "--out", str(out), "--overwrite", "--no-progress"])
    if rc != 0:
        raise SystemExit(f"seqpred score failed with exit code {rc}")
    return time.perf_counter() - t


def score_cli(argv: list[str]) -> float:
    """Seconds for ``seqpred score ARGV`` (in this process); exits on a non-zero exit code."""
    t = time.perf_counter()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main_score([*argv, "--overwrite", "--no-progress"])
    if rc != 0:
        raise SystemExit(f"seqpred score {' '.join(argv)} failed with exit code {rc}: {err.getvalue()[-2000:]}")
    return time.perf_counter() - t


def main_ray(a: argparse.Namespace, model_dir: Path, tmp: Path, data: dict[str, list[str]], n_tokens: int) -> int:
    """``--engine ray``: the whole command, local engine vs Ray, on the same JSONL input (see the docstring)."""
    import ray

    import service.scoring.ray_engine as ray_engine

    cores = usable_cores()
    load0 = os.getloadavg()[0]
    jsonl, tiny = tmp / "ray-input.jsonl", tmp / "tiny.jsonl"
    rows = [s for _ in range(a.repeat) for v in data.values() for s in v]
    jsonl.write_text("".join(json.dumps({"id": i, "text": s}) + "\n" for i, s in enumerate(rows)))
    tiny.write_text("".join(json.dumps({"id": i, "text": s}) + "\n" for i, s in enumerate(rows[:20])))
    tokens = n_tokens * a.repeat
    t = time.perf_counter()
    ray.init(
        num_cpus=cores,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        _system_config={"worker_niceness": 0},  # as seqpred score's own instance: the local engine runs at nice 0
    )
    init_s = time.perf_counter() - t
    base = ["--model", str(model_dir)]
    times: dict[str, list[float]] = {"local": [], "ray": [], "ray_unordered": [], "ray_fixed": []}
    try:
        for _ in range(a.rounds):
            times["local"].append(score_cli([*base, str(jsonl), "--out", str(tmp / "local.jsonl")]))
            times["ray"].append(score_cli([*base, str(jsonl), "--out", str(tmp / "ray.jsonl"), "--engine", "ray"]))
            times["ray_fixed"].append(score_cli([*base, str(tiny), "--out", str(tmp / "t.jsonl"), "--engine", "ray"]))
            ray_engine.PRESERVE_ORDER = False
            try:
                out = str(tmp / "unordered.jsonl")
                times["ray_unordered"].append(score_cli([*base, str(jsonl), "--out", out, "--engine", "ray"]))
            finally:
                ray_engine.PRESERVE_ORDER = True
        actors = int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()
    want = [json.loads(x) for x in (tmp / "local.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (tmp / "ray.jsonl").read_text().splitlines()]
    assert [r["id"] for r in got] == [r["id"] for r in want], "Ray's records are not the local engine's, in order"
    diff = max(abs(x["total_logprob"] - y["total_logprob"]) for x, y in zip(want, got, strict=True))
    assert diff <= 1e-6, f"Ray's totals differ from the local engine's by {diff:.3g}"
    med = {k: statistics.median(v) for k, v in times.items()}
    steady = tokens / max(med["ray"] - med["ray_fixed"], 1e-9)
    res: dict[str, Any] = {
        "local_tokens_per_s": tokens / med["local"],
        "ray_tokens_per_s": tokens / med["ray"],
        "ray_unordered_tokens_per_s": tokens / med["ray_unordered"],
        "ray_steady_tokens_per_s": steady,
        "ray_per_actor_tokens_per_s": steady / actors,
        "ray_init_s": init_s,
        "ray_fixed_s": med["ray_fixed"],
        "local_s": med["local"],
        "ray_s": med["ray"],
    }
    res["ray_ratio"] = res["ray_tokens_per_s"] / res["local_tokens_per_s"]
    res["ray_steady_ratio"] = steady / res["local_tokens_per_s"]
    res["ray_unordered_ratio"] = res["ray_unordered_tokens_per_s"] / res["local_tokens_per_s"]
    res.update(
        config=f"lstm L=1 H={H} E={E}",
        sequences=len(rows),
        tokens=tokens,
        cores=cores,
        actors=actors,
        rounds=a.rounds,
        ray=ray.__version__,
        max_abs_diff_total_logprob=diff,
        loadavg_start=round(load0, 2),
        loadavg_end=round(os.getloadavg()[0], 2),
    )
    print(
        f"seqpred score, --engine local vs ray, {res['config']}, {cores} cores, Ray {res['ray']} ({actors} actors); "
        f"{len(rows):,} seqs / {tokens:,} tokens (JSONL in and out); median of {a.rounds} rounds; "
        f"load average {res['loadavg_start']} -> {res['loadavg_end']}"
    )
    print(f"{'engine':<28}{'seconds':>10}{'tokens/s':>12}{'vs local':>10}")
    print("-" * 60)
    for name, key, secs in [
        ("local", "local", med["local"]),
        ("ray (ordered, the default)", "ray", med["ray"]),
        ("ray, unordered", "ray_unordered", med["ray_unordered"]),
        ("ray minus its fixed cost", "ray_steady", med["ray"] - med["ray_fixed"]),
    ]:
        rate = res[f"{key}_tokens_per_s"]
        print(f"{name:<28}{secs:>10.2f}{rate:>12,.0f}{rate / res['local_tokens_per_s']:>10.2f}")
    print(
        f"ray_ratio = {res['ray_ratio']:.2f} (target >= 0.8); Ray start-up {init_s:.1f} s (once), fixed cost per "
        f"run {med['ray_fixed']:.1f} s (actors); per actor {res['ray_per_actor_tokens_per_s']:,.0f} tokens/s; "
        f"totals agree to {diff:.1g}"
    )
    if a.json:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--engine", default="local", choices=("local", "ray"), help="ray: the Ray engine vs local")
    ap.add_argument("--repeat", type=int, default=10, help="--engine ray: the workloads repeated this many times")
    ap.add_argument("--lines", type=int, default=3000, help="sequences of the 'lines' workload")
    ap.add_argument("--chunks", type=int, default=500, help="256-token sequences of the 'chunks' workload")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    a = ap.parse_args(argv)
    cores = usable_cores()
    load0 = os.getloadavg()[0]

    text = load_text(a.corpus)
    tok = CharTokenizer.fit(text)
    cfg = ModelConfig(cell="lstm", layers=1, hidden=H, embed=E, vocab_size=tok.vocab_size)
    params = init_params(cfg, np.random.default_rng(0))
    tmp = Path(tempfile.mkdtemp(prefix="score-speed-"))
    model_dir = export_model(cfg, params, tok, {}, tmp / "model")
    data = workloads(text, a.lines, a.chunks)
    seqs = {k: [tok.encode(s) for s in v] for k, v in data.items()}
    n_tokens = {k: int(sum(len(s) for s in v)) for k, v in seqs.items()}
    if a.engine == "ray":
        return main_ray(a, model_dir, tmp, data, sum(n_tokens.values()))
    jsonl = tmp / "input.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": s}) + "\n" for v in data.values() for i, s in enumerate(v)))

    scorers: dict[str, Scorer] = {
        "ours": Scorer(model_dir),
        f"ours_1x{cores}": Scorer(model_dir, threads=1, intra_op_threads=cores),
        "native": Scorer(model_dir, graph=native_sequence_model(cfg, params)),
    }
    engines: dict[str, Callable[[list[np.ndarray]], Any]] = {k: s.score for k, s in scorers.items()}
    batches = {k: plan_batches([len(s) for s in v], CHUNK_LEN, BATCH_TOKENS, MAX_BATCH) for k, v in seqs.items()}
    torch_cfgs: dict[str, tuple[int, int]] = {}
    try:
        import torch

        torch_cfgs = {f"torch_{cores}t": (cores, 1), "torch_1t": (1, 1), f"torch_{cores}x1": (1, cores)}
        torch_version = torch.__version__
    except ImportError:
        torch_version = None

    # correctness first: PyTorch with our weights gives our scores
    check = seqs["lines"][:64]
    ours_tot = np.array([s.total_logprob for s in scorers["ours"].score(check)])
    native_tot = np.array([s.total_logprob for s in scorers["native"].score(check)])
    max_diff = {"native": float(np.abs(native_tot - ours_tot).max())}
    torch_fns: dict[str, Callable[[list[np.ndarray]], Any]] = {}
    for name, (th, _py) in torch_cfgs.items():
        torch_fns[name] = torch_engine(params, th)
    if torch_fns:
        max_diff["torch"] = float(np.abs(next(iter(torch_fns.values()))(check) - ours_tot).max())
        if max_diff["torch"] > 1e-2:
            raise SystemExit(f"PyTorch disagrees with our scores by {max_diff['torch']:.3g} nats: bad weight mapping")

    times: dict[str, dict[str, list[float]]] = {w: {} for w in seqs}
    for _ in range(a.rounds):
        for w, v in seqs.items():
            for name, fn in engines.items():
                t = time.perf_counter()
                fn(v)
                times[w].setdefault(name, []).append(time.perf_counter() - t)
            for name, fn in torch_fns.items():
                th, py = torch_cfgs[name]
                import torch

                torch.set_num_threads(th)
                bl = [[v[i] for i in b] for b in batches[w]]
                t = time.perf_counter()
                run_batches(fn, bl, py)
                times[w].setdefault(name, []).append(time.perf_counter() - t)
    e2e_s = statistics.median(e2e(model_dir, jsonl, tmp / "out.jsonl") for _ in range(max(1, a.rounds // 2)))

    names = list(engines) + list(torch_fns)
    res: dict[str, Any] = {}
    total_tokens = sum(n_tokens.values())
    for name in names:
        secs = 0.0
        for w in seqs:
            med = statistics.median(times[w][name])
            res[f"{w}_{name}_tok_s"] = n_tokens[w] / med
            secs += med
        res[f"{name}_tok_s"] = total_tokens / secs
    res["e2e_tok_s"] = total_tokens / e2e_s
    best_torch = max((res[f"{n}_tok_s"] for n in torch_fns), default=None)
    res["ratio"] = res["ours_tok_s"] / best_torch if best_torch else None
    res["ratio_torch_default"] = res["ours_tok_s"] / res[f"torch_{cores}t_tok_s"] if torch_fns else None
    res["ratio_native"] = res["ours_tok_s"] / res["native_tok_s"]
    res.update(
        config=f"lstm L=1 H={H} E={E} V={cfg.vocab_size}",
        workload={w: {"sequences": len(v), "tokens": n_tokens[w]} for w, v in seqs.items()},
        cores=cores,
        rounds=a.rounds,
        torch=torch_version,
        max_abs_diff_nats=max_diff,
        loadavg_start=round(load0, 2),
        loadavg_end=round(os.getloadavg()[0], 2),
    )

    print(
        f"offline scoring, {res['config']}, {cores} cores; "
        + ", ".join(f"{w}: {d['sequences']} seqs / {d['tokens']:,} tokens" for w, d in res["workload"].items())
        + f"; median of {a.rounds} rounds; load average {res['loadavg_start']} -> {res['loadavg_end']}"
    )
    head = f"{'engine':<14}" + "".join(f"{w + ' tok/s':>16}" for w in seqs) + f"{'all tok/s':>14}{'vs ours':>9}"
    print(head)
    print("-" * len(head))
    for name in [*names, "e2e"]:
        row = f"{name:<14}"
        for w in seqs:
            v = res.get(f"{w}_{name}_tok_s")
            row += f"{v:>16,.0f}" if v is not None else f"{'':>16}"
        row += f"{res[f'{name}_tok_s']:>14,.0f}{res[f'{name}_tok_s'] / res['ours_tok_s']:>9.2f}"
        print(row)
    if res["ratio"] is not None:
        print(
            f"ratio ours / best PyTorch = {res['ratio']:.2f} (target >= 1.0); vs PyTorch default threads "
            f"{res['ratio_torch_default']:.2f}; vs native ONNX LSTM {res['ratio_native']:.2f}; "
            f"score agreement (max |diff| nats/seq): {max_diff}"
        )
    else:
        print("torch is not installed: no PyTorch baseline (pip install torch)")
    if a.json:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
