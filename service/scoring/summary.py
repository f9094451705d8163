"""What both scoring engines report: the run's tally (:class:`Summary`, the last line on stderr) and the
``--on-error`` policy for malformed inputs (:class:`Malformed`: stop at the first one, or warn and count)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: Warnings printed for skipped inputs before they are only counted.
MAX_WARNINGS = 50


@dataclass
class Summary:
    sequences: int = 0
    tokens: int = 0
    scored: int = 0
    nats: float = 0.0
    bad: int = 0
    resumed: int = 0
    seconds: float = 0.0

    def add(self, num_tokens: int, total_logprob: float) -> None:
        """Count one scored sequence."""
        self.sequences += 1
        self.tokens += num_tokens
        self.scored += max(num_tokens - 1, 0)
        self.nats -= total_logprob

    def line(self) -> str:
        rate = f"{self.sequences / self.seconds:,.0f} seq/s, {self.tokens / self.seconds:,.0f} tokens/s"
        mean = f"; {self.nats / self.scored:.4f} nats/token" if self.scored else ""
        extra = ""
        if self.bad:
            extra += f"; {self.bad} malformed skipped"
        if self.resumed:
            extra += f"; {self.resumed} already in OUTPUT"
        return (
            f"seqpred score: {self.sequences:,} sequences, {self.tokens:,} tokens in {self.seconds:.2f} s "
            f"({rate}){mean}{extra}"
        )


class Malformed:
    """``--on-error fail``: remember the first malformed input and stop; ``skip``: warn (the first
    :data:`MAX_WARNINGS`, then only count) and go on. ``warn`` prints one line (e.g. above a progress bar)."""

    def __init__(self, on_error: str, warn: Callable[[str], None]) -> None:
        self.fail = on_error == "fail"
        self.warn = warn
        self.count = 0
        self.first: str | None = None

    def __call__(self, bad: object) -> bool:
        """Handle one malformed input (its ``where: what`` text); False: stop reading here."""
        if self.fail:
            self.first = str(bad)
            return False
        self.count += 1
        if self.count <= MAX_WARNINGS:
            self.warn(f"seqpred: warning: {bad} (skipped)")
        elif self.count == MAX_WARNINGS + 1:
            self.warn("seqpred: warning: more malformed inputs; only counting them now")
        return True

    def error(self) -> str | None:
        """The error to end the run with (``--on-error fail`` met a malformed input), else None."""
        if self.first is None:
            return None
        return f"{self.first} (pass --on-error skip to skip malformed inputs)"
