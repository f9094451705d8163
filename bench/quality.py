"""Quality: the documented recipe, run with ``seqpred train`` on Tiny Shakespeare within a wall-time budget.

The corpus is split as nanoGPT splits it (first 90 % train, last 10 % validation); the figure is validation
nats per character after training, scored over the whole validation split. Reference points on this corpus
(../shared/design/README.md): uniform 4.17, 3-gram 2.05, 5-gram 1.75, nanoGPT's small CPU transformer 1.88.

    python bench/quality.py --json                       # the recipe, 10 minutes (target <= 1.55)
    python bench/quality.py --minutes 1 --json           # a quick look

JSON keys: ``val_nats_per_char``, ``minutes`` (wall time of the whole ``seqpred train`` command, evaluation
included), ``steps``, ``tokens``, ``baseline_5gram`` (1.75) and ``ratio_vs_5gram``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
FIVE_GRAM = 1.75

#: The recipe: one LSTM layer, Adam with warmup and cosine decay over the time budget.
RECIPE = [
    "--tokenizer", "char", "--cell", "lstm", "--layers", "1", "--hidden", "256", "--embed", "64",
    "--batch", "64", "--seq-len", "64", "--lr", "4e-3", "--min-lr-frac", "0.05", "--warmup", "100",
    "--clip", "5", "--eval-every", "1000000", "--checkpoint-every", "1000000", "--seed", "0", "--eval-tokens", "all",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--corpus", default=str(CORPUS))
    ap.add_argument("--minutes", type=float, default=10.0, help="total wall-time budget, evaluation included")
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    a = ap.parse_args()
    if not Path(a.corpus).is_file():
        sys.exit(f"quality: corpus {a.corpus!r} not found (expected ../shared/data/tinyshakespeare.txt)")
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="seqpred-quality-"))
    # --minutes bounds the whole command: the trainer keeps a measured reserve for the final (whole-split) evaluation
    cmd = [sys.executable, "-m", "model.cli", "train", "--corpus", a.corpus, *RECIPE,
           "--minutes", f"{a.minutes:.3f}", "--out", str(out), "--overwrite", "--no-progress"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    minutes = (time.perf_counter() - t0) / 60
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_nats_per_token" in r][-1]
    res = {
        "val_nats_per_char": round(val["val_nats_per_token"], 4),
        "minutes": round(minutes, 2),
        "steps": val["step"],
        "tokens": val["tokens"],
        "baseline_5gram": FIVE_GRAM,
        "ratio_vs_5gram": round(val["val_nats_per_token"] / FIVE_GRAM, 4),
    }
    print(f"recipe: seqpred train --corpus {a.corpus} {' '.join(RECIPE)} --minutes {a.minutes:.3f}")
    print(f"{'validation nats/char':<24}{res['val_nats_per_char']:>10.4f}   (5-gram 1.75; target <= 1.55)")
    print(f"{'wall minutes':<24}{res['minutes']:>10.2f}")
    print(f"{'steps / tokens':<24}{res['steps']:>10} / {res['tokens']:,}")
    if a.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
