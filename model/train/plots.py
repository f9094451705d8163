"""Learning-curve PNG from ``metrics.jsonl``, when matplotlib is installed (the optional ``plot`` extra)."""

from __future__ import annotations

import json
from pathlib import Path


def learning_curve(metrics: Path, png: Path) -> Path | None:
    """Plot training loss and validation nats/token against tokens seen; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train: list[tuple[int, float]] = []
    val: list[tuple[int, float]] = []
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            train.append((rec["tokens"], rec["loss"]))
        elif "val_nats_per_token" in rec:
            val.append((rec["tokens"], rec["val_nats_per_token"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", lw=1, alpha=0.7)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", lw=2)
    ax.set_xlabel("tokens")
    ax.set_ylabel("nats / token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
