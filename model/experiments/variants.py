"""``seqpred experiment variants``: a Greff et al. (2015) style comparison of the cell variants on a char corpus.

Every variant is a char-level language model (embedding, recurrent layers, softmax head) trained from scratch
with the same fixed budget in *steps* (so results do not depend on machine load) on the first 90% of the
corpus and scored on the last 10%: mean validation nats/char, every character of every evaluation stream after
its first scored once with the state carried (:func:`model.train.evaluate.evaluate`). Each variant runs at every
learning rate of a small sweep and several seeds; it is reported at its best learning rate (lowest mean).

The variants (:func:`available_variants`), built at run time from :data:`model.config.CELLS`, so a cell added
to the library joins the default comparison:

* every cell at 1 layer, forget-gate bias +1 (``rnn`` is the floor; ``peephole`` is Greff's vanilla LSTM "V",
  the reference of the 1-layer rows; ``lstm`` is Greff's NP, no peepholes);
* ``lstm-fb0``: the LSTM with forget-gate bias 0, Jozefowicz et al.'s (2015) ablation (its reference: ``lstm``,
  bias +1);
* the cells of :data:`~model.experiments.memory.DEEP_CELLS` (the Depth Gated LSTM, whose layer 0 is exactly a
  plain LSTM, so it only differs with 2 layers) as a 2-layer pair: ``lstm-2l`` (reference: ``lstm``) and
  ``depth-gated-2l`` (reference: ``lstm-2l``).

Randomness: a run's initialisation comes from ``np.random.default_rng([0, seed])``; the data order (B
contiguous streams of the training text, truncated BPTT windows of T characters with the state carried) is
the same for every run.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from model import config as model_config
from model import network as N
from model.config import ModelConfig
from model.data.corpora import SHAKESPEARE
from model.data.streams import make_streams, window
from model.errors import ConfigError
from model.experiments.memory import DEEP_CELLS, TRAIN_STREAM
from model.experiments.runner import Key, Record, check_float, check_int, check_names
from model.train import optim
from model.train.evaluate import evaluate

#: The default corpus: Tiny Shakespeare, shipped with the package (:data:`model.data.corpora.SHAKESPEARE`).
DEFAULT_CORPUS = SHAKESPEARE
#: Streams and window length of the validation pass (wider batches and longer windows only save Python
#: overhead: the state is carried, and only each stream's first character goes unscored).
EVAL_BATCH, EVAL_SEQ_LEN = 64, 256
#: The reference of every 1-layer variant: Greff's vanilla LSTM (with peepholes).
REFERENCE = "peephole"
#: ``--quick`` settings: a smoke test of the whole pipeline in seconds, not a measurement.
QUICK: dict[str, Any] = {
    "lrs": (3e-3, 1e-2),
    "seeds": 1,
    "steps": 15,
    "hidden": 16,
    "embed": 8,
    "batch": 8,
    "seq_len": 16,
    "max_chars": 20_000,
    "eval_chars": 2_000,
}
#: The fields that enumerate runs (a resumed experiment may change them).
ENUMERATING = ("variants", "lrs", "seeds")

#: What each cell is, in the papers' terms.
ABOUT = {
    "rnn": "tanh RNN (the floor)",
    "lstm": "NP: no peepholes",
    "peephole": "V: vanilla LSTM, peepholes",
    "cifg": "CIFG: coupled input-forget gate",
    "nig": "NIG: no input gate",
    "nfg": "NFG: no forget gate",
    "nog": "NOG: no output gate",
    "niaf": "NIAF: no input activation",
    "noaf": "NOAF: no output activation",
    "fgr": "FGR: full gate recurrence",
    "gru": "GRU, reset before R",
    "gru-lbr": "GRU, linear before reset",
    "clockwork": "Clockwork RNN",
    "depth-gated": "Depth Gated LSTM",
}


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: a cell, its depth and forget-gate bias, and the row it is compared with."""

    name: str
    cell: str
    layers: int = 1
    forget_bias: float = 1.0
    ref: str | None = None
    about: str = ""


def available_variants(cells: tuple[str, ...] | None = None) -> dict[str, Variant]:
    """Every variant the cells ``cells`` (default: :data:`model.config.CELLS` now) allow, in table order."""
    cells = tuple(model_config.CELLS) if cells is None else cells
    ref = REFERENCE if REFERENCE in cells else None
    out: dict[str, Variant] = {}
    for c in cells:
        if c not in DEEP_CELLS:
            out[c] = Variant(c, c, ref=None if c == ref else ref, about=ABOUT.get(c, c))
    if "lstm" in cells:
        out["lstm-fb0"] = Variant("lstm-fb0", "lstm", forget_bias=0.0, ref="lstm", about="NP, forget bias 0")
        for c in cells:
            if c in DEEP_CELLS:
                n = DEEP_CELLS[c]
                if "lstm-2l" not in out:
                    out["lstm-2l"] = Variant("lstm-2l", "lstm", layers=n, ref="lstm", about=f"NP, {n} layers")
                about = f"{ABOUT.get(c, c)}, {n} layers"
                out[f"{c}-2l"] = Variant(f"{c}-2l", c, layers=n, ref="lstm-2l", about=about)
    return out


def _all_variants() -> tuple[str, ...]:
    return tuple(available_variants())


@dataclass(frozen=True)
class VariantsConfig:
    """Everything that defines a variants experiment (stored in ``results.json``).

    Attributes:
        variants: names from :func:`available_variants` (default: all of them).
        corpus: the corpus spec (:func:`model.data.corpora.load_corpus`; a single file splits 90/10 by characters).
        max_chars: read at most this many corpus characters (0 = all).
        lrs: the learning-rate sweep (peak Adam lr; linear warmup, cosine decay to ``lr * min_lr_frac``).
        seeds: seeds 0 .. seeds-1 per (variant, lr).
        steps: Adam updates per run (B x T characters each).
        hidden, embed: hidden size of every layer; embedding width.
        batch, seq_len: B parallel streams; truncated-BPTT window T.
        warmup, min_lr_frac, clip: schedule and global-norm gradient clip.
        eval_chars: validation characters scored (0 = the whole validation part).
    """

    variants: tuple[str, ...] = field(default_factory=_all_variants)
    corpus: str = DEFAULT_CORPUS
    max_chars: int = 0
    lrs: tuple[float, ...] = (5e-3, 1.5e-2, 4.5e-2)
    seeds: int = 3
    steps: int = 250
    hidden: int = 128
    embed: int = 64
    batch: int = 32
    seq_len: int = 64
    warmup: int = 20
    min_lr_frac: float = 0.1
    clip: float = 5.0
    eval_chars: int = 0

    def __post_init__(self) -> None:
        check_names("--variants", self.variants, _all_variants())
        if not self.lrs:
            raise ConfigError("--lrs: the list is empty")
        for lr in self.lrs:
            check_float("--lrs", lr, allow_zero=False)
        if len(set(self.lrs)) != len(self.lrs):
            raise ConfigError(f"--lrs: a value is listed twice in {list(self.lrs)}")
        for flag, value in (
            ("--seeds", self.seeds),
            ("--steps", self.steps),
            ("--hidden", self.hidden),
            ("--embed", self.embed),
            ("--batch", self.batch),
            ("--seq-len", self.seq_len),
        ):
            check_int(flag, value)
        for flag, value in (
            ("--warmup", self.warmup),
            ("--max-chars", self.max_chars),
            ("--eval-chars", self.eval_chars),
        ):
            check_int(flag, value, minimum=0)
        check_float("--clip", self.clip, allow_zero=True)
        if not 0.0 <= self.min_lr_frac <= 1.0:
            raise ConfigError(f"--min-lr-frac: must be in [0, 1], got {self.min_lr_frac!r}")

    @property
    def n_runs(self) -> int:
        return len(self.variants) * len(self.lrs) * self.seeds


@dataclass(frozen=True)
class CharData:
    """The corpus as token ids: training ``[N_train]``, validation ``[N_val]``, vocabulary size V."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    train_chars: int
    val_chars: int


def load_char_data(exp: VariantsConfig) -> CharData:
    """Load ``exp.corpus``, fit a char tokenizer on the training part, encode both parts.

    Raises :class:`~model.errors.DataError` naming the corpus when it is missing or too small.
    """
    from model.data.corpora import load_corpus
    from model.data.tokenizers import CharTokenizer

    corpus = load_corpus(exp.corpus, val_fraction=0.1, max_chars=exp.max_chars or None)
    tok = CharTokenizer.fit(corpus.train)
    train = tok.encode(corpus.train).astype(np.int32)
    val = tok.encode(corpus.val).astype(np.int32)
    make_streams(train, exp.batch, exp.seq_len)  # a clear DataError now rather than in every run
    if len(val) < 2:
        raise ConfigError(f"--corpus: the validation part of {exp.corpus!r} has {len(val)} characters; need >= 2")
    return CharData(train, val, tok.vocab_size, len(corpus.train), len(corpus.val))


@dataclass
class VariantResult:
    """One run: validation nats/char (None when it diverged) and how it got there."""

    variant: str
    lr: float
    seed: int
    cell: str
    layers: int
    forget_bias: float
    val_nats: float | None
    train_loss: float | None
    steps: int
    params: int
    train_seconds: float
    eval_seconds: float
    diverged: bool = False

    @classmethod
    def from_record(cls, rec: Record) -> VariantResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in rec.items() if k in names})


KEY_FIELDS = ("variant", "lr", "seed")


def plan(exp: VariantsConfig) -> list[Key]:
    """Every run as ``(variant, lr, seed)``: seed-major, so a cut-short experiment has whole seeds."""
    return [(v, lr, s) for s in range(exp.seeds) for v in exp.variants for lr in exp.lrs]


def train_variant(exp: VariantsConfig, v: Variant, lr: float, seed: int, data: CharData) -> VariantResult:
    """Train variant ``v`` at peak learning rate ``lr`` from seed ``seed`` for ``exp.steps`` steps of stateful
    truncated BPTT, then score the validation part. A non-finite loss stops the run (``diverged``)."""
    cfg = ModelConfig(
        cell=v.cell,
        layers=v.layers,
        hidden=exp.hidden,
        vocab_size=data.vocab_size,
        embed=exp.embed,
        forget_bias=v.forget_bias,
    )
    rng = np.random.default_rng([TRAIN_STREAM, seed])
    p = N.init_params(cfg, rng)
    oc = optim.OptimConfig()
    st = optim.init_state(oc, p)
    S = make_streams(data.train, exp.batch, exp.seq_len)
    state = N.zero_state(cfg, exp.batch)
    warmup = min(exp.warmup, exp.steps // 10)
    tail: list[float] = []  # training losses of the last tenth of the run
    diverged, done, pos = False, 0, 0
    t0 = time.perf_counter()
    for i in range(exp.steps):
        x, y, nxt = window(S, pos, exp.seq_len)
        fwd = N.forward(cfg, p, x, state)
        loss, dout = N.loss_and_dout(cfg, fwd.out, y, None)
        grads, _ = N.backward(cfg, p, fwd, dout)
        norm = optim.clip_by_global_norm(grads, exp.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            diverged = True
            break
        optim.step(oc, p, grads, st, optim.lr_at(i, lr, warmup, exp.steps, exp.min_lr_frac))
        state = N.zero_state(cfg, exp.batch) if nxt == 0 else fwd.state
        pos, done = nxt, i + 1
        if i >= exp.steps - max(1, exp.steps // 10):
            tail.append(loss)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    val: float | None = None
    if not diverged:
        nats = evaluate(cfg, p, data.val, EVAL_BATCH, EVAL_SEQ_LEN, max_tokens=exp.eval_chars).nats_per_token
        val = nats if math.isfinite(nats) else None
        diverged = val is None
    return VariantResult(
        variant=v.name,
        lr=lr,
        seed=seed,
        cell=v.cell,
        layers=v.layers,
        forget_bias=v.forget_bias,
        val_nats=val,
        train_loss=float(np.mean(tail)) if tail and not diverged else None,
        steps=done,
        params=int(sum(a.size for a in p.values())),
        train_seconds=round(train_s, 3),
        eval_seconds=round(time.perf_counter() - t1, 3),
        diverged=diverged,
    )


def run_one(shared: tuple[VariantsConfig, CharData], key: Key) -> Record:
    """The record of run ``key = (variant, lr, seed)`` (a top-level function, for the process pool)."""
    exp, data = shared
    name, lr, seed = key
    return asdict(train_variant(exp, available_variants()[name], lr, seed, data))


def progress_text(r: VariantResult) -> str:
    """``lstm lr=0.003 seed=0: 1.8234 nats/char; 300 steps 14.2s`` (a progress line after ``[k/n]``)."""
    m = "DIVERGED" if r.val_nats is None else f"{r.val_nats:.4f} nats/char"
    return f"{r.variant} lr={r.lr:g} seed={r.seed}: {m}; {r.steps} steps {r.train_seconds:.1f}s"
