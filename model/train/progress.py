"""Progress bars of ``seqpred train`` and ``seqpred eval`` (tqdm, on stderr): training, then the final evaluation.

Training shows steps (or seconds, for a run bounded by ``--minutes`` only) with the loss and tokens/s; each periodic
check prints a line. When training ends the bar is completed and a second bar counts the validation tokens of the
final evaluation, so the wait after the last step is visible.
"""

from __future__ import annotations

import sys
from typing import Any


class TrainProgress:
    """The ``progress`` callback of :func:`model.train.loop.train`, drawing the bars."""

    def __init__(self, steps: int, minutes: float) -> None:
        from tqdm import tqdm

        self.by_steps = bool(steps)
        total = steps if self.by_steps else round(minutes * 60)
        self.bar = tqdm(total=total, unit="step" if self.by_steps else "s", file=sys.stderr, dynamic_ncols=True)
        self.eval_bar: Any = None

    def __call__(self, rec: dict[str, Any]) -> None:
        if rec.get("phase") == "eval":
            if self.eval_bar is None:
                self.bar.total = self.bar.n  # training is over: show it complete
                self.bar.refresh()
                self.eval_bar = eval_bar(rec["total"], f"validation (step {rec['step']})")
            self.eval_bar.update(rec["tokens"] - self.eval_bar.n)
        elif "loss" in rec:
            target = rec["step"] if self.by_steps else min(round(rec["elapsed_s"]), self.bar.total)
            self.bar.update(max(0, target - self.bar.n))
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:,.0f}", refresh=False)
        elif "val_nats_per_token" in rec and self.eval_bar is None:
            self.bar.write(f"step {rec['step']}: validation {rec['val_nats_per_token']:.4f} nats/token")

    def close(self) -> None:
        if self.eval_bar is not None:
            self.eval_bar.close()
        self.bar.close()


def eval_bar(total: int, desc: str = "validation", enabled: bool = True) -> Any:
    """A bar over ``total`` validation tokens."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="tok", unit_scale=True, file=sys.stderr, dynamic_ncols=True, disable=not enabled
    )
