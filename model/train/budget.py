"""The wall-time plan of a run bounded by ``--minutes``: the bound covers the whole command.

A run has ``deadline`` (a :func:`time.perf_counter` time: the command's start plus what is left of ``--minutes``)
and must have trained, evaluated and checkpointed by then. It keeps a reserve for the final evaluation and the
last checkpoint and trains until ``deadline - reserve``::

    reserve = min(1.25 * final_tokens / eval_rate + 2 * checkpoint_s + SLACK_S,  MAX_RESERVE_FRAC * time left at start)

``eval_rate`` (tokens/s) is measured on one evaluation window before the first step and again at every periodic
check; ``checkpoint_s`` is the time the last checkpoint took. The reserve never takes more than half the time
left when training starts, so a tiny budget still trains; the final evaluation then stops early, at a window
boundary, when one more window and the checkpoint would not fit (:meth:`TimePlan.eval_may_go_on`), and reports
how many tokens it scored.
"""

from __future__ import annotations

import time

#: Seconds kept on top of the estimates, for what follows the last checkpoint (the learning-curve figure, exit).
SLACK_S = 2.0
#: The most of the time left at the start that the reserve may take.
MAX_RESERVE_FRAC = 0.5
#: Safety factor on the measured evaluation rate (the machine may be busier at the end).
RATE_MARGIN = 1.25


class TimePlan:
    """When training stops and whether the final evaluation may score one more window."""

    def __init__(self, deadline: float | None, final_tokens: int) -> None:
        self.deadline = deadline
        self.final_tokens = final_tokens
        self.start = time.perf_counter()
        self.eval_rate = 0.0  # tokens/s; 0 = not measured yet
        self.checkpoint_s = 0.0
        self.reserve = 0.0

    @property
    def bounded(self) -> bool:
        return self.deadline is not None

    def measured(self, eval_tokens: int = 0, eval_s: float = 0.0, checkpoint_s: float | None = None) -> None:
        """Record an evaluation's speed and/or a checkpoint's time, and re-plan the reserve."""
        if eval_tokens > 0 and eval_s > 0:
            self.eval_rate = eval_tokens / eval_s
        if checkpoint_s is not None:
            self.checkpoint_s = checkpoint_s
        if self.deadline is None:
            return
        need = SLACK_S + 2 * self.checkpoint_s
        if self.eval_rate > 0:
            need += RATE_MARGIN * self.final_tokens / self.eval_rate
        self.reserve = min(need, MAX_RESERVE_FRAC * max(self.deadline - self.start, 0.0))

    @property
    def train_end(self) -> float | None:
        """The :func:`time.perf_counter` time at which training stops (None: no time bound)."""
        return None if self.deadline is None else self.deadline - self.reserve

    def training_over(self) -> bool:
        end = self.train_end
        return end is not None and time.perf_counter() >= end

    def eval_may_go_on(self, window_s: float) -> bool:
        """Whether one more evaluation window of ``window_s`` seconds and the last checkpoint fit the deadline."""
        if self.deadline is None:
            return True
        return time.perf_counter() + window_s + 2 * self.checkpoint_s + SLACK_S < self.deadline
