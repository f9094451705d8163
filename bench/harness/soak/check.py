"""The soak benchmark's offline checker: every response the service sent, recomputed from the session's history.

A :class:`Segment` is one session from its creation (or reset) to its end: the tokens the server acknowledged,
in order, and one check per response. Checks name absolute positions: ``tokens[:p]`` is the history after the
server has consumed ``p`` tokens, and ``L[p - 1]`` the next-token log-probabilities after it (``L [T, V]``, one
row per consumed token, recomputed from the zero state by an oracle)::

    (TOP, p, ids, lps, k)       predictions after p tokens: k ids, most likely first, with their log-probs
    (SCORE, p0, n, lps)         token_logprobs of a request that fed tokens[p0 : p0 + n]; the session's very
                                first token has no prediction, so lps[i] scores tokens[a], a = max(p0, 1) + i
    (GEN, a, tok, lp, greedy)   a generated token: tokens[a] == tok, lp = L[a - 1][tok]; greedy: an argmax
    (POS, what, expected, got)  a position the client could not reconcile (always a mismatch)

The oracles are independent of the server's code: :class:`OnnxOracle` runs the model directory's ``sequence.onnx``
once over each whole history, extended in memory to output the per-step log-softmax ``[T, B, V]`` (the server
runs ``step.onnx`` token by token, or ``sequence.onnx`` chunk by chunk from stored states); :class:`NumpyOracle`
runs the NumPy network (``model.network.forward``) of the training run the model was exported from.

Top-k checks tolerate ties: each returned log-prob must equal the oracle's within ``tol``, and no token left out
may beat the least likely returned one by more than ``tol``. :func:`check_segments` is what the worker process
runs (see ``bench/soak.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import onnx

TOP, SCORE, GEN, POS = "top", "score", "gen", "pos"
#: The output added to ``sequence.onnx``: per-step log-probabilities, time-major ``[T, B, V]``.
STEP_LOGPROBS = "soak/step_logprobs"
_LOGP, _LOGITS, _LSE = "head/log_softmax", "head/logits", "head/logsumexp"
#: Oracle batches hold at most this many float32 log-probabilities (``B * T * V``).
BATCH_ELEMENTS = 1 << 23


@dataclass
class Segment:
    """One session's life between a (re)start and its end: acknowledged tokens and the checks on them."""

    name: str
    tokens: list[int] = field(default_factory=list)
    checks: list[tuple[Any, ...]] = field(default_factory=list)
    carried: int = 0  # leading tokens that an earlier segment already counted (a history that went on after a loss)


@dataclass
class Verdict:
    """What checking a batch of segments found."""

    segments: int = 0
    checks: int = 0
    tokens: int = 0
    mismatches: int = 0
    max_err: float = 0.0
    samples: list[str] = field(default_factory=list)  # the first few mismatches, described

    def add(self, other: Verdict, keep: int = 10) -> None:
        self.segments += other.segments
        self.checks += other.checks
        self.tokens += other.tokens
        self.mismatches += other.mismatches
        self.max_err = max(self.max_err, other.max_err)
        self.samples += other.samples[: max(keep - len(self.samples), 0)]


class Oracle(Protocol):
    def logprobs(self, seqs: list[list[int]]) -> list[np.ndarray]:
        """``[len(s), V]`` for each sequence: row t is log p(. | s[: t + 1]) from the zero state."""
        ...


def with_step_logprobs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a ``sequence.onnx`` model that also outputs its per-step log-probabilities as float32."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    produced = {o for node in g.node for o in node.output}
    if _LOGP in produced:
        src = _LOGP
    elif _LOGITS in produced and _LSE in produced:  # earlier exports: logits - logsumexp
        g.initializer.append(helper.make_tensor("soak/last_axis", TensorProto.INT64, [1], [-1]))
        g.node.extend(
            [
                helper.make_node("Unsqueeze", [_LSE, "soak/last_axis"], ["soak/lse"], name="soak/lse"),
                helper.make_node("Sub", [_LOGITS, "soak/lse"], ["soak/logp"], name="soak/sub"),
            ]
        )
        src = "soak/logp"
    else:
        raise ValueError(f"sequence.onnx has no tensor {_LOGP!r}: not a seqpred export of a token model")
    g.node.append(helper.make_node("Cast", [src], [STEP_LOGPROBS], name="soak/cast", to=TensorProto.FLOAT))
    g.output.append(helper.make_tensor_value_info(STEP_LOGPROBS, TensorProto.FLOAT, ["time", "batch", "vocab"]))
    return m


class OnnxOracle:
    """``sequence.onnx`` of a model directory on onnxruntime, whole histories in right-padded batches."""

    def __init__(self, model_dir: str | Path, threads: int = 1) -> None:
        import onnx

        from model.export import load_model_dir, make_session

        md = load_model_dir(model_dir)
        self.V = md.config.vocab_size
        self.H = md.config.hidden
        self.state_names = md.state_names
        model = with_step_logprobs(onnx.load(md.sequence_path))
        self.session = make_session(model.SerializeToString(), threads=threads, spinning=False)
        self.outputs = [STEP_LOGPROBS] + [f"{s}_out" for s in self.state_names]

    def logprobs(self, seqs: list[list[int]]) -> list[np.ndarray]:
        out: list[np.ndarray] = [np.zeros((0, self.V), np.float32)] * len(seqs)
        order = sorted((i for i in range(len(seqs)) if seqs[i]), key=lambda i: len(seqs[i]))
        while order:  # the shortest first, as many rows as the element budget allows for the longest of them
            rows = [order.pop(0)]
            while order and (len(rows) + 1) * len(seqs[order[0]]) * self.V <= BATCH_ELEMENTS:
                rows.append(order.pop(0))
            for i, lp in zip(rows, self._run([seqs[i] for i in rows]), strict=True):
                out[i] = lp
        return out

    def _run(self, seqs: list[list[int]]) -> list[np.ndarray]:
        """One batch, cut into time chunks that fit the budget; the states are carried from chunk to chunk."""
        B = len(seqs)
        lens = np.array([len(s) for s in seqs], dtype=np.int64)
        T = int(lens.max())
        tokens = np.zeros((B, T), dtype=np.int64)
        for b, s in enumerate(seqs):
            tokens[b, : len(s)] = s
        chunk = max(1, BATCH_ELEMENTS // (B * self.V))
        state = [np.zeros((B, self.H), np.float32) for _ in self.state_names]
        parts: list[np.ndarray] = []
        for t0 in range(0, T, chunk):
            x = tokens[:, t0 : t0 + chunk]
            feeds: dict[str, np.ndarray] = {"tokens": x, "lengths": np.clip(lens - t0, 0, x.shape[1])}
            feeds.update(zip(self.state_names, state, strict=True))
            lp, *state = self.session.run(self.outputs, feeds)
            parts.append(lp)
        full = np.concatenate(parts, axis=0)  # [T, B, V]
        return [full[: lens[b], b] for b in range(B)]


class NumpyOracle:
    """The NumPy network (``model.network.forward``) of a training run, one sequence at a time."""

    def __init__(self, run_dir: str | Path) -> None:
        from model.train.checkpoint import load_run

        run = load_run(run_dir)
        self.cfg, self.params = run.model, run.params
        self.V = self.cfg.vocab_size

    def logprobs(self, seqs: list[list[int]]) -> list[np.ndarray]:
        from model.network import forward, log_softmax, zero_state

        out = []
        for s in seqs:
            if not s:
                out.append(np.zeros((0, self.V), np.float32))
                continue
            f = forward(self.cfg, self.params, np.asarray(s, dtype=np.int64)[None, :], zero_state(self.cfg, 1))
            out.append(log_softmax(f.out[:, :, 0], axis=0).T)  # [T, V]
        return out


def check_top(L: np.ndarray, ids: list[int], lps: list[float], k: int, tol: float) -> tuple[str | None, float]:
    """Is ``(ids, lps)`` a top-``k`` of the log-probability row ``L [V]``? (problem or None, largest error)."""
    V = L.shape[0]
    if len(ids) != min(k, V) or len(lps) != len(ids):
        return f"{len(ids)} predictions for top_k={k}", 0.0
    if len(set(ids)) != len(ids) or any(not 0 <= i < V for i in ids):
        return f"ids {ids} repeat or leave [0, {V})", 0.0
    if any(a < b for a, b in itertools.pairwise(lps)):
        return f"log-probs {lps} not sorted, most likely first", 0.0
    err = float(np.max(np.abs(L[ids] - np.asarray(lps)))) if ids else 0.0
    if not err <= tol:  # NaN fails too
        return f"ids {ids} log-probs {np.round(lps, 6).tolist()} vs offline {np.round(L[ids], 6).tolist()}", err
    rest = np.delete(L, ids)
    if ids and rest.size and rest.max() > L[ids].min() + tol:
        better = int(np.delete(np.arange(V), ids)[int(np.argmax(rest))])
        return f"ids {ids}: token {better} (offline {rest.max():.6f}) beats them", err
    return None, err


def check_segment(seg: Segment, L: np.ndarray, tol: float) -> Verdict:
    """Check every response of one segment against ``L [len(seg.tokens), V]``."""
    v = Verdict(segments=1, checks=len(seg.checks), tokens=len(seg.tokens) - seg.carried)
    toks = seg.tokens
    n_tok = len(toks)

    def fail(what: str) -> None:
        v.mismatches += 1
        if len(v.samples) < 10:
            v.samples.append(f"{seg.name}: {what}")

    for c in seg.checks:
        kind = c[0]
        if kind == TOP:
            _, p, ids, lps, k = c
            if not 1 <= p <= n_tok:
                fail(f"top-k at position {p}, outside the history of {n_tok} tokens")
                continue
            problem, err = check_top(L[p - 1], ids, lps, k, tol)
            v.max_err = max(v.max_err, err)
            if problem:
                fail(f"top-k after {p} tokens: {problem}")
        elif kind == SCORE:
            _, p0, n, lps = c
            first = max(p0, 1)
            want = p0 + n - first
            if len(lps) != want or p0 + n > n_tok:
                fail(f"score of tokens [{p0}, {p0 + n}): {len(lps)} log-probs, expected {want}")
                continue
            if want:
                a = np.arange(first, p0 + n)
                ref = L[a - 1, np.asarray(toks, dtype=np.int64)[a]]
                err = float(np.max(np.abs(ref - np.asarray(lps))))
                v.max_err = max(v.max_err, err)
                if not err <= tol:
                    fail(f"score of tokens [{p0}, {p0 + n}): {np.round(lps, 6).tolist()} vs {ref.round(6).tolist()}")
        elif kind == GEN:
            _, a, tok, lp, greedy = c
            if not 1 <= a < n_tok or toks[a] != tok:
                fail(f"generated token {tok} at {a} is not in the acknowledged history")
                continue
            row = L[a - 1]
            err = abs(float(row[tok]) - lp)
            v.max_err = max(v.max_err, err)
            if not err <= tol:
                fail(f"generated token {tok} at {a}: log-prob {lp:.6f} vs offline {row[tok]:.6f}")
            elif greedy and row.max() > row[tok] + tol:
                fail(f"greedy token {tok} at {a} (offline {row[tok]:.6f}) is not an argmax ({row.max():.6f})")
        elif kind == POS:
            _, what, expected, got = c
            fail(f"{what}: position {got}, expected {expected}")
        else:
            fail(f"unknown check {kind!r}")
    return v


def check_segments(oracle: Oracle, segs: list[Segment], tol: float) -> Verdict:
    """Recompute every segment's history in one batch and check all its responses."""
    total = Verdict()
    for seg, L in zip(segs, oracle.logprobs([s.tokens for s in segs]), strict=True):
        total.add(check_segment(seg, L, tol))
    return total


# ---------------------------------------------------------------------------------------------------------------
# the worker process (``ProcessPoolExecutor(1, initializer=init_worker, ...)``)

_WORKER: dict[str, Any] = {}


def init_worker(model_dir: str, run_dir: str | None, tol: float) -> None:
    _WORKER["oracle"] = NumpyOracle(run_dir) if run_dir else OnnxOracle(model_dir)
    _WORKER["tol"] = tol


def worker_check(segs: list[Segment]) -> tuple[Verdict, float]:
    """Check ``segs`` in the worker; also returns the CPU seconds it took (the checker's load)."""
    import time

    t0 = time.process_time()
    v = check_segments(_WORKER["oracle"], segs, _WORKER["tol"])
    return v, time.process_time() - t0
