"""An imported model on seqpred's step graph against the source ONNX file on onnxruntime, on CPU, same run.

The source: a 2-layer LSTM char model (V=65, E=64, H=512) the way ``torch.onnx.export`` writes one: Gather,
Transpose, two built-in ``LSTM`` operators (random weights, both bias halves non-zero) with their state as
graph inputs and outputs, MatMul + Add head, LogSoftmax. It is imported with ``seqpred import onnx``
(:func:`model.importers.write.import_onnx`) and seqpred's ``step.onnx`` (explicit gate ops, the embedding folded
into layer 0's input projection) is timed against the source run one step at a time (``T = 1``) with its state
carried by hand, as a user without seqpred would serve it. Both get the same session options
(``model.export.session_options``) and are fed the same way (``run`` with the previous call's state outputs).

Settings: one step at B=1 (latency) and B=64 (throughput, tokens/s = 64 / step time), with 1 and 2 intra-op
threads. Timing as in ``bench/export_speed.py``: alternating rounds, median of each block of calls, ratios
within a round, median over rounds; rounds with more than 0.25 of a core taken by other processes are repeated.

    python bench/import_speed.py [--rounds 9]           # table
    python bench/import_speed.py --json                 # ... and one JSON object last

JSON keys: ``b1_ratio`` and ``b64_ratio`` (seqpred step time / source step time, the worse of the two thread
counts; target <= 1.0), ``settings`` (per setting: ms per step, tokens/s, ratio, busy), ``max_abs_diff``
(log-probs of the two over 32 steps at B=4), ``busy`` (worst background CPU share seen).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from harness.cpu import cpu_all, cpu_self
from onnx import TensorProto, helper, numpy_helper

from model.export import make_session
from model.importers.write import import_onnx

V, E, H, LAYERS = 65, 64, 512, 2


def source_model(rng: np.random.Generator) -> onnx.ModelProto:
    """The torch.onnx.export-style source (see the module docstring)."""
    inits: list[TensorProto] = []

    def const(name: str, a: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(a), name))
        return name

    def w(*shape: int) -> np.ndarray:
        return rng.uniform(-1 / np.sqrt(H), 1 / np.sqrt(H), shape).astype(np.float32)

    inputs = [helper.make_tensor_value_info("x", TensorProto.INT64, ["B", "T"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", V])]
    nodes = [
        helper.make_node("Gather", [const("emb", rng.standard_normal((V, E)).astype(np.float32)), "x"], ["e"]),
        helper.make_node("Transpose", ["e"], ["x0"], perm=[1, 0, 2]),
    ]
    x, X = "x0", E
    for l in range(LAYERS):
        for k in ("h", "c"):
            inputs.append(helper.make_tensor_value_info(f"{k}{l}", TensorProto.FLOAT, [1, "B", H]))
            outputs.append(helper.make_tensor_value_info(f"{k}{l}_n", TensorProto.FLOAT, [1, "B", H]))
        ins = [x, const(f"W{l}", w(1, 4 * H, X)), const(f"R{l}", w(1, 4 * H, H)), const(f"B{l}", w(1, 8 * H))]
        nodes.append(
            helper.make_node("LSTM", [*ins, "", f"h{l}", f"c{l}"], [f"Y{l}", f"h{l}_n", f"c{l}_n"], hidden_size=H)
        )
        nodes.append(helper.make_node("Squeeze", [f"Y{l}", const(f"ax{l}", np.array([1]))], [f"y{l}"]))
        x, X = f"y{l}", H
    nodes += [
        helper.make_node("Transpose", [x], ["yb"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["yb", const("head_W", w(H, V))], ["z"]),
        helper.make_node("Add", ["z", const("head_b", w(V))], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["y"], axis=-1),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "source", inputs, outputs, initializer=inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


class Stepper:
    """One step per call with the state carried from the previous call's outputs."""

    def __init__(self, sess: Any, token_name: str, state: dict[str, str], shape: tuple[int, ...], B: int) -> None:
        self.sess, self.token_name, self.state_out = sess, token_name, state  # input name -> output name
        self.out_names = [o.name for o in sess.get_outputs()]
        self.feeds: dict[str, np.ndarray] = {k: np.zeros(shape, np.float32) for k in state}
        self.B = B

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.feeds[self.token_name] = tokens
        res = dict(zip(self.out_names, self.sess.run(None, self.feeds), strict=True))
        for k, o in self.state_out.items():
            self.feeds[k] = res[o]
        return res["y"] if "y" in res else res["logprobs"]


def steppers(src: Path, out: Path, B: int, threads: int) -> dict[str, Stepper]:
    ours = make_session(str(out / "step.onnx"), threads)
    theirs = make_session(src.read_bytes(), threads)
    names = [f"{k}{l}" for l in range(LAYERS) for k in ("h", "c")]
    return {
        "source": Stepper(theirs, "x", {n: f"{n}_n" for n in names}, (1, B, H), B),
        "seqpred": Stepper(ours, "tokens", {n: f"{n}_out" for n in names}, (B, H), B),
    }


def block(st: Stepper, tokens: np.ndarray, n: int) -> float:
    ts = []
    src = st.token_name == "x"
    for t in range(n):
        tok = tokens[:, t : t + 1] if src else tokens[:, t]
        t0 = time.perf_counter()
        st.step(tok)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def time_setting(src: Path, out: Path, B: int, threads: int, rounds: int, n: int) -> dict[str, Any]:
    rng = np.random.default_rng(B)
    st = steppers(src, out, B, threads)
    tokens = rng.integers(0, V, (B, n))
    for s in st.values():
        block(s, tokens, 5)
    times: dict[str, list[float]] = {k: [] for k in st}
    busy, tries = 0.0, 0
    while len(times["source"]) < rounds and tries < 3 * rounds:
        tries += 1
        c0, a0, t0 = cpu_self(), cpu_all(), time.perf_counter()
        cur = {}
        for k, s in st.items():
            cur[k] = block(s, tokens, n)
            time.sleep(0.05)
        others = ((cpu_all() - a0) - (cpu_self() - c0)) / (time.perf_counter() - t0)
        busy = max(busy, others)
        if others > 0.25 and tries < 3 * rounds:
            time.sleep(1.0)
            continue
        for k, v in cur.items():
            times[k].append(v)
    ratio = float(np.median(np.array(times["seqpred"]) / np.array(times["source"])))
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "ms": {k: round(v * 1e3, 4) for k, v in med.items()},
        "tokens_per_s": {k: round(B / v) for k, v in med.items()},
        "ratio": round(ratio, 3),
        "busy": round(busy, 2),
    }


def max_abs_diff(src: Path, out: Path) -> float:
    st = steppers(src, out, 4, 1)
    tokens = np.random.default_rng(1).integers(0, V, (4, 32))
    worst = 0.0
    for t in range(32):
        a = st["source"].step(tokens[:, t : t + 1])[:, 0]
        b = st["seqpred"].step(tokens[:, t])
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "lstm2x512.onnx"
        onnx.save(source_model(np.random.default_rng(0)), src)
        out = import_onnx(src, Path(tmp) / "imported")
        diff = max_abs_diff(src, out)
        results = {}
        for B, n in ((1, 200), (64, 40)):
            for threads in (1, 2):
                results[f"step B={B} threads={threads}"] = time_setting(src, out, B, threads, args.rounds, n)
    print(f"imported 2-layer LSTM H={H} E={E} V={V}: seqpred step.onnx vs the source (built-in LSTM op), T=1 steps")
    print(f"{'setting':<24}{'source ms':>11}{'seqpred ms':>12}{'source tok/s':>14}{'seqpred tok/s':>15}{'ratio':>8}"
          f"{'busy':>6}")  # fmt: skip
    for name, r in results.items():
        print(
            f"{name:<24}{r['ms']['source']:>11.4f}{r['ms']['seqpred']:>12.4f}{r['tokens_per_s']['source']:>14,}"
            f"{r['tokens_per_s']['seqpred']:>15,}{r['ratio']:>8.3f}{r['busy']:>6.2f}"
        )
    b1 = max(r["ratio"] for k, r in results.items() if k.startswith("step B=1 "))
    b64 = max(r["ratio"] for k, r in results.items() if k.startswith("step B=64 "))
    busy = max(r["busy"] for r in results.values())
    print(f"ratio (seqpred / source, worse thread count): B=1 {b1:.3f}, B=64 {b64:.3f} (target <= 1.0); "
          f"max |log-prob difference| {diff:.2e}")  # fmt: skip
    if args.json:
        print(json.dumps({"b1_ratio": b1, "b64_ratio": b64, "settings": results, "max_abs_diff": diff, "busy": busy}))


if __name__ == "__main__":
    main()
