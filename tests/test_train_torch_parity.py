"""Trajectory parity with a plain PyTorch loop: every difference between the two is in the recipe, not the trainer.

From the same initial weights, the same batches (the stream layout and TBPTT state carry of
:mod:`model.data.streams`) and the same hyper-parameters, :func:`model.train.loop.train` (the loop ``seqpred
train`` runs, driven through its public signature: shard processes, fast LSTM path, clipping, Adam, schedule) and a
plain PyTorch loop (``nn.Embedding`` + ``nn.LSTM`` / ``nn.GRU`` + ``nn.Linear``, ``torch.optim.Adam``,
``clip_grad_norm_``, the state carried between windows with ``.detach()``) give the same loss at every one of
:data:`STEPS` steps within :data:`LOSS_TOL`, and close final parameters.

What the PyTorch side does to follow the same recipe (each a line of :func:`run_torch`, each a difference caught):

- weights: ONNX gate order to PyTorch's (LSTM i,o,f,c -> i,f,g,o; GRU z,r,h -> r,z,n); the folded bias ``b`` in
  ``bias_ih`` and ``bias_hh`` held at zero (frozen: Adam on two copies of one bias is not Adam on their sum),
  except the GRU's candidate block of ``bias_hh``, which is ``Rb`` and trains;
- Adam: seqpred folds the bias correction into the step size (``optim.step``), so its ε acts as
  ε / sqrt(1 - β2^t) on PyTorch's corrected moments: the PyTorch loop sets that ε in its param group each step;
- the schedule: linear warmup from lr/warmup, cosine to ``lr * min_lr_frac`` at the last step.

``gru`` (ONNX ``linear_before_reset=0``, the reset gate before the recurrent matmul) has no PyTorch twin:
``nn.GRU`` is the ``linear_before_reset=1`` form, seqpred's ``gru-lbr``, and no mapping of weights turns one
form into the other.

The tolerance is float32 noise, measured (docs/model.md, "Parity with a PyTorch loop"): over the 200 steps the
same PyTorch loop in float32 and in float64 differs by at most 3-6e-7 nats in loss, and seqpred's float32 run is as
close to either (at most 8e-7, over several seeds, shard counts and both cells); :data:`LOSS_TOL` = 5e-6 leaves
a factor of six for other CPUs and BLAS builds. Every single recipe difference tried (a different ε, PyTorch's
own ε form, no warmup, no floor, a different clip, both bias vectors trained, no state carry) moves the LSTM's
losses by 13 to 120,000 times :data:`LOSS_TOL`, the smallest being PyTorch's stock Adam ε form (6.5e-5);
:func:`test_a_recipe_difference_is_caught` asks for 4 times.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model import network
from model.config import ModelConfig
from model.data.tokenizers import make_tokenizer
from model.train.checkpoint import CHECKPOINT
from model.train.loop import TrainConfig, train

torch = pytest.importorskip("torch")

STEPS = 200
#: Largest |loss difference| over the run allowed between seqpred's loop and PyTorch's (both float32).
LOSS_TOL = 5e-6
#: Largest ||Δ|| / ||distance travelled|| of any final parameter array (seqpred's float32 vs PyTorch's float64).
PARAM_TOL = 1e-4

TC = TrainConfig(
    corpus="synthetic",
    batch=8,
    seq_len=16,
    steps=STEPS,
    lr=4e-3,
    min_lr_frac=0.05,
    warmup=20,
    clip=0.35,
    seed=3,
    eval_every=10_000,
    log_every=1,
    checkpoint_every=10_000,
    threads=2,
)
E, H = 16, 32


_WORDS = (
    "the of and to in is was he for it with as his on be at by had not are but from or have an they which one "
    "you were her all she there would their we him been has when who will more no if out so said what up its "
    "about into than them can only other new some could time these two may then do first any my now"
)


def _text(chars: int = 9000) -> str:
    """Deterministic English-like text: words drawn with Zipf-like weights into sentences."""
    words = _WORDS.split()
    rng = np.random.default_rng(11)
    w = 1.0 / np.arange(1, len(words) + 1)
    out: list[str] = []
    n = 0
    while n < chars:
        sentence = " ".join(words[i] for i in rng.choice(len(words), size=rng.integers(4, 12), p=w / w.sum()))
        out.append(sentence[0].upper() + sentence[1:] + ". ")
        n += len(out[-1])
    return "".join(out)


@dataclass
class Data:
    train_ids: np.ndarray
    val_ids: np.ndarray
    vocab: int


@pytest.fixture(scope="module")
def data() -> Data:
    text = _text()
    cut = int(len(text) * 0.8)
    tok = make_tokenizer("char", text[:cut])
    return Data(tok.encode(text[:cut]), tok.encode(text[cut:]), tok.vocab_size)


# --------------------------------------------------------------------------------------------------------------
# seqpred's side: the loop itself


@dataclass
class Trajectory:
    losses: np.ndarray  # [STEPS], the loss of each step's batch before its update
    norms: np.ndarray  # [STEPS], the global gradient norm before clipping
    params: dict[str, np.ndarray]  # after the last step, in seqpred's layout


def run_seqpred(run_dir: Path, cfg: ModelConfig, tc: TrainConfig, d: Data) -> Trajectory:
    records: list[dict[str, Any]] = []
    train(run_dir, cfg, tc, d.train_ids, d.val_ids, {}, progress=records.append)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, tc.steps + 1))
    with np.load(run_dir / CHECKPOINT) as z:
        params = {k[len("param/") :]: z[k] for k in z.files if k.startswith("param/")}
    return Trajectory(np.array([r["loss"] for r in steps]), np.array([r["grad_norm"] for r in steps]), params)


def initial_params(cfg: ModelConfig, tc: TrainConfig) -> dict[str, np.ndarray]:
    """The parameters :func:`train` starts from (it draws them first from ``default_rng(seed)``)."""
    return network.init_params(cfg, np.random.default_rng(tc.seed))


# --------------------------------------------------------------------------------------------------------------
# PyTorch's side: a plain loop


@dataclass(frozen=True)
class Recipe:
    """The PyTorch loop's hyper-parameters; the defaults are seqpred's recipe (``TC`` and ``OptimConfig``)."""

    lr: float = TC.lr
    warmup: int = TC.warmup
    min_lr_frac: float = TC.min_lr_frac
    clip: float = TC.clip
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    eps_folded: bool = True  # ε as seqpred applies it (eps / sqrt(1 - β2^t) in PyTorch's form)
    freeze_bias_hh: bool = True  # b_hh held at zero (but the GRU's candidate block, which is Rb)
    carry_state: bool = True  # the state carried from one window to the next (detached)


#: ONNX gate blocks in PyTorch's order: LSTM (i, o, f, c) -> (i, f, g, o); GRU (z, r, h) -> (r, z, n).
TORCH_ORDER = {"lstm": (0, 2, 3, 1), "gru-lbr": (1, 0, 2)}


def _blocks(a: np.ndarray, order: tuple[int, ...], H: int) -> np.ndarray:
    return np.concatenate([a[k * H : (k + 1) * H] for k in order])


def _unblocks(a: np.ndarray, order: tuple[int, ...], H: int) -> np.ndarray:
    out = np.empty_like(a)
    for j, k in enumerate(order):
        out[k * H : (k + 1) * H] = a[j * H : (j + 1) * H]
    return out


class TorchNet(torch.nn.Module):  # type: ignore[misc]
    """``nn.Embedding`` -> ``nn.LSTM`` / ``nn.GRU`` (batch first) -> ``nn.Linear``, loaded from seqpred's params."""

    def __init__(self, cfg: ModelConfig, p: dict[str, np.ndarray], dtype: Any) -> None:
        super().__init__()
        V, E_, H_ = cfg.vocab_size, cfg.embed, cfg.hidden
        self.cell = cfg.cell
        self.embed = torch.nn.Embedding(V, E_)
        rnn = torch.nn.LSTM if cfg.cell == "lstm" else torch.nn.GRU
        self.rnn = rnn(E_, H_, batch_first=True)
        self.head = torch.nn.Linear(H_, V)
        order = TORCH_ORDER[cfg.cell]
        bias_hh = np.zeros_like(p["layer0/b"])
        if cfg.cell == "gru-lbr":
            bias_hh[2 * H_ :] = p["layer0/Rb"]  # the candidate's recurrent bias, inside r∘(W_hn h + b_hn)
        weights = {
            self.embed.weight: p["embed"],
            self.rnn.weight_ih_l0: _blocks(p["layer0/W"], order, H_),
            self.rnn.weight_hh_l0: _blocks(p["layer0/R"], order, H_),
            self.rnn.bias_ih_l0: _blocks(p["layer0/b"], order, H_),
            self.rnn.bias_hh_l0: bias_hh,
            self.head.weight: p["head/W"],
            self.head.bias: p["head/b"],
        }
        self.to(dtype)  # first: copying into float32 tensors would round a float64 model
        with torch.no_grad():
            for t, v in weights.items():
                t.copy_(torch.from_numpy(np.asarray(v, dtype=np.float64)))

    def forward(self, x: Any, state: Any) -> tuple[Any, Any]:
        out, state = self.rnn(self.embed(x), state)
        return self.head(out), state

    def seqpred_params(self, grad: bool = False) -> dict[str, np.ndarray]:
        """The parameters (or their gradients) back in seqpred's layout, as float64."""
        H_ = self.rnn.hidden_size
        order = TORCH_ORDER[self.cell]

        def a(t: Any) -> np.ndarray:
            return np.asarray((t.grad if grad else t).detach().double().numpy())

        p = {
            "embed": a(self.embed.weight),
            "layer0/W": _unblocks(a(self.rnn.weight_ih_l0), order, H_),
            "layer0/R": _unblocks(a(self.rnn.weight_hh_l0), order, H_),
            "layer0/b": _unblocks(a(self.rnn.bias_ih_l0), order, H_),
            "head/W": a(self.head.weight),
            "head/b": a(self.head.bias),
        }
        if self.cell == "gru-lbr":
            p["layer0/Rb"] = a(self.rnn.bias_hh_l0)[2 * H_ :]
        return p


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_torch(cfg: ModelConfig, p0: dict[str, np.ndarray], d: Data, steps: int, r: Recipe, dtype: Any) -> Trajectory:
    """``steps`` steps of a plain PyTorch loop over seqpred's stream layout (written out here, not imported)."""
    B, T = TC.batch, TC.seq_len
    torch.manual_seed(0)
    net = TorchNet(cfg, p0, dtype)
    b_hh = net.rnn.bias_hh_l0
    if r.freeze_bias_hh and cfg.cell == "lstm":
        b_hh.requires_grad_(False)
    elif r.freeze_bias_hh:  # GRU: only the candidate block (Rb) of b_hh trains
        keep = torch.zeros_like(b_hh)
        keep[2 * cfg.hidden :] = 1
        b_hh.register_hook(lambda g: g * keep)
    params = [q for q in net.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=r.lr, betas=(r.beta1, r.beta2), eps=r.eps)

    n = len(d.train_ids) // B  # B contiguous streams; window k+1 continues where window k left off
    S = torch.from_numpy(d.train_ids[: B * n].reshape(B, n).astype(np.int64))
    state: Any = None  # zeros
    pos = 0
    losses, norms = [], []
    with _torch_threads(1):
        for step in range(steps):
            if r.warmup and step < r.warmup:
                lr = r.lr * (step + 1) / r.warmup
            else:
                progress = min(1.0, (step - r.warmup) / max(1, steps - r.warmup))
                lr = r.lr * (r.min_lr_frac + (1 - r.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))
            x, y = S[:, pos : pos + T], S[:, pos + 1 : pos + T + 1]
            logits, new_state = net(x, state)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, r.clip)))
            for g in opt.param_groups:
                g["lr"] = lr
                g["eps"] = r.eps / math.sqrt(1 - r.beta2 ** (step + 1)) if r.eps_folded else r.eps
            opt.step()
            losses.append(loss.item())
            pos += T
            if pos + T + 1 > n:  # the epoch ends: position and state back to zero
                pos, state = 0, None
            elif not r.carry_state:
                state = None
            elif isinstance(new_state, tuple):
                state = tuple(s.detach() for s in new_state)
            else:
                state = new_state.detach()
    return Trajectory(np.array(losses), np.array(norms), net.seqpred_params())


# --------------------------------------------------------------------------------------------------------------
# the checks


def _cfg(cell: str, d: Data) -> ModelConfig:
    return ModelConfig(cell=cell, hidden=H, embed=E, vocab_size=d.vocab, dropout=0.0)


def _param_drift(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], p0: dict[str, np.ndarray]) -> float:
    """The largest, over parameter arrays, of ||ours - ref|| / ||ref - p0||: the gap relative to the way travelled."""
    return max(float(np.linalg.norm(ours[k] - ref[k]) / np.linalg.norm(ref[k] - p0[k])) for k in ref)


@pytest.mark.parametrize("cell", ["lstm", "gru-lbr"])
def test_the_mapping_gives_the_same_loss_and_gradients(cell: str, data: Data) -> None:
    """One batch in float64 from a random state: seqpred's BPTT and PyTorch's autograd on the mapped weights."""
    cfg = _cfg(cell, data)
    rng = np.random.default_rng(5)
    p = network.init_params(cfg, rng, np.float64)
    p = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in p.items()}  # every bias non-zero, Rb included
    if cell == "lstm":  # seqpred starts the forget block of b (ONNX order i, o, f, c) at +1
        b0 = network.init_params(cfg, np.random.default_rng(0))["layer0/b"]
        assert (
            cfg.forget_bias == 1.0
            and (b0[2 * H : 3 * H] == 1.0).all()
            and (np.delete(b0, np.s_[2 * H : 3 * H]) == 0).all()
        )
    x, y = data.train_ids[: 4 * 10].reshape(4, 10), data.train_ids[1 : 4 * 10 + 1].reshape(4, 10)
    h0, c0 = rng.standard_normal((4, H)), rng.standard_normal((4, H))
    state = [(h0, c0 if cfg.has_c else None)]
    fwd = network.forward(cfg, p, x, state)
    loss, dout = network.loss_and_dout(cfg, fwd.out, y, None)
    grads, _ = network.backward(cfg, p, fwd, dout)

    net = TorchNet(cfg, p, torch.float64)
    if cell == "lstm":  # ... which lands in PyTorch's f block (order i, f, g, o)
        assert (net.rnn.bias_ih_l0.detach().numpy()[H : 2 * H] == p["layer0/b"][2 * H : 3 * H]).all()
    ts: Any = torch.from_numpy(h0)[None]
    if cfg.has_c:
        ts = (ts, torch.from_numpy(c0)[None])
    logits, _ = net(torch.from_numpy(x.astype(np.int64)), ts)
    tloss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), torch.from_numpy(y).reshape(-1))
    tloss.backward()
    assert abs(loss - tloss.item()) < 1e-12
    tgrads = net.seqpred_params(grad=True)
    if cell == "gru-lbr":  # the r and z blocks of bias_hh are copies of b's: their gradients equal b's
        g_hh = net.rnn.bias_hh_l0.grad.numpy()
        np.testing.assert_allclose(g_hh[: 2 * H], net.rnn.bias_ih_l0.grad.numpy()[: 2 * H], rtol=1e-12)
    for k, g in grads.items():
        np.testing.assert_allclose(tgrads[k], g, rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("cell", ["lstm", "gru-lbr"])
def test_seqpred_loop_equals_a_pytorch_loop(cell: str, data: Data, tmp_path: Path) -> None:
    cfg = _cfg(cell, data)
    p0 = initial_params(cfg, TC)
    ours = run_seqpred(tmp_path, cfg, TC, data)
    t32 = run_torch(cfg, p0, data, STEPS, Recipe(), torch.float32)
    t64 = run_torch(cfg, p0, data, STEPS, Recipe(), torch.float64)

    noise = float(np.abs(t32.losses - t64.losses).max())
    diff = float(np.abs(ours.losses - t32.losses).max())
    diff64 = float(np.abs(ours.losses - t64.losses).max())
    print(f"{cell}: max |Δloss| seqpred-torch32 {diff:.2e}, seqpred-torch64 {diff64:.2e}, torch32-torch64 "
          f"{noise:.2e}; loss {t64.losses[0]:.3f} -> {t64.losses[-1]:.3f}")  # fmt: skip
    assert noise < LOSS_TOL, noise  # the tolerance is above float32 noise ...
    assert diff < LOSS_TOL, (diff, int(np.abs(ours.losses - t32.losses).argmax()))  # ... and seqpred is within it
    assert diff64 < LOSS_TOL, diff64
    # the run learns, clips some steps and not others, and wraps the epoch (state reset) at least once
    assert t64.losses[-1] < t64.losses[0] - 1.0
    assert 0.1 < (ours.norms > TC.clip).mean() < 0.9
    np.testing.assert_allclose(ours.norms, t64.norms, rtol=1e-4)
    assert STEPS * TC.seq_len > len(data.train_ids) // TC.batch
    # final parameters: the gap, relative to the way each array travelled in 200 steps, stays small
    drift = _param_drift(ours.params, t64.params, p0)
    print(f"{cell}: final parameters, max ||seqpred - torch64|| / ||torch64 - initial|| = {drift:.2e}")
    assert drift < PARAM_TOL, drift


@pytest.fixture(scope="module")
def lstm_torch32(data: Data) -> Trajectory:
    """The PyTorch loop with seqpred's recipe (LSTM, float32)."""
    cfg = _cfg("lstm", data)
    return run_torch(cfg, initial_params(cfg, TC), data, STEPS, Recipe(), torch.float32)


@pytest.mark.parametrize(
    "change",
    [
        {"eps": 1e-6},
        {"eps_folded": False},
        {"warmup": 0},
        {"min_lr_frac": 0.0},
        {"clip": 0.4},
        {"freeze_bias_hh": False},
        {"carry_state": False},
    ],
    ids=lambda c: next(iter(c)),
)
def test_a_recipe_difference_is_caught(change: dict[str, Any], data: Data, lstm_torch32: Trajectory) -> None:
    """One difference in the PyTorch loop's recipe moves its losses by far more than the parity tolerance."""
    cfg = _cfg("lstm", data)
    same = lstm_torch32
    other = run_torch(cfg, initial_params(cfg, TC), data, STEPS, replace(Recipe(), **change), torch.float32)
    diff = float(np.abs(same.losses - other.losses).max())
    print(f"{change}: max |Δloss| {diff:.2e}")
    assert diff > 4 * LOSS_TOL, diff
