"""A PyTorch char-LSTM trained for about a minute, exported both ways for ``seqpred import`` (docs/import.md).

Trains ``nn.Embedding`` + ``nn.LSTM`` + ``nn.Linear`` on Python source text (the running interpreter's own
standard library, so nothing is downloaded), then writes into ``--out``:

* ``char_lstm.onnx``        ``torch.onnx.export`` (the built-in ONNX LSTM operator)
* ``char_lstm.safetensors`` the ``state_dict`` (``safetensors.torch.save_file``)
* ``vocab.json``            the characters as a JSON list, index = token id

    python docs/examples/torch_char_lstm.py --out /tmp/char-lstm            # about a minute on 2 cores
    python docs/examples/torch_char_lstm.py --out /tmp/char-lstm --seconds 5 --hidden 64   # a quick look

Needs ``torch`` and ``safetensors`` (``pip install torch safetensors``; ``onnxscript`` too for PyTorch's default
exporter, else the TorchScript one is used).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sysconfig
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file


class CharLSTM(torch.nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, embed)
        self.lstm = torch.nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T] ids -> [B, T, V] logits
        y, _ = self.lstm(self.embedding(x))
        return self.head(y)


def corpus(max_chars: int) -> str:
    """Python source text from the standard library, ASCII only."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, n = [], 0
    for p in sorted(root.glob("*.py")):
        text = p.read_text(encoding="utf-8", errors="ignore").encode("ascii", "ignore").decode()
        parts.append(text)
        n += len(text)
        if n >= max_chars:
            break
    return "".join(parts)[:max_chars]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", required=True, help="directory for the exported files")
    ap.add_argument("--seconds", type=float, default=60.0, help="training time")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--max-chars", type=int, default=2_000_000)
    ap.add_argument("--threads", type=int, default=1, help="PyTorch threads (default 1: steady on a busy machine)")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)  # measured under load: 2 threads took 7-9 s a step, 1 thread 0.35 s
    text = corpus(a.max_chars)
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text] if len(text) < 1000 else _encode(text, chars))
    model = CharLSTM(len(chars), 64, a.hidden, a.layers)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    B, T, step, t0 = 32, 64, 0, time.time()
    while time.time() - t0 < a.seconds:
        starts = torch.randint(0, len(ids) - T - 1, (B,))
        batch = torch.stack([ids[s : s + T + 1] for s in starts.tolist()])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(chars)), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.3f} nats/char")
    print(f"trained {step} steps in {time.time() - t0:.0f} s; last loss {loss.item():.3f} nats/char")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "char_lstm.safetensors"))
    (out / "vocab.json").write_text(json.dumps(chars))
    example = torch.zeros(1, 8, dtype=torch.long)
    try:
        import onnxscript  # noqa: F401  # PyTorch's default exporter needs it
    except ImportError:
        dynamo = False
    else:
        dynamo = True
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(out / "char_lstm.onnx"), dynamo=dynamo)
    print(f"wrote {out}/char_lstm.onnx ({'dynamo' if dynamo else 'TorchScript'} exporter), char_lstm.safetensors, "
          f"vocab.json ({len(chars)} characters)")  # fmt: skip


def _encode(text: str, chars: list[str]) -> list[int]:
    index = {c: i for i, c in enumerate(chars)}
    return [index[c] for c in text]


if __name__ == "__main__":
    main()
