"""Stopping a training run cleanly, and the metrics file a resumed run continues.

Ctrl-C (SIGINT) and SIGTERM (``docker stop``, ``kill``) do not raise inside a step: :func:`stop_on_signals`
only records the request, and the trainer acts on it at the next step boundary, where parameters, optimiser
moments, stream position, carried state and RNG agree. It writes a checkpoint of the step reached and raises
:class:`Interrupted` (a ``KeyboardInterrupt``: exit code 130). A second signal while the first is being handled
raises ``KeyboardInterrupt`` at once (the checkpoint on disk is then the last one completed; every checkpoint is
written atomically).

``metrics.jsonl`` is appended after every logged step, checkpoints come less often: a run killed without warning
(``kill -9``, power loss) leaves rows past its last checkpoint. :func:`truncate_metrics` drops them when the run
resumes, so a resumed run never holds a step twice.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal after checkpointing ``step``."""

    def __init__(self, step: int, signame: str) -> None:
        super().__init__(f"{signame} at step {step}")
        self.step = step
        self.signame = signame


class StopRequest:
    """Whether a stop was asked for (set by :func:`stop_on_signals`, or by hand), and by which signal."""

    def __init__(self) -> None:
        self.signame = ""

    @property
    def requested(self) -> bool:
        return bool(self.signame)

    def __call__(self) -> bool:
        return self.requested


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM set the :class:`StopRequest` instead of raising; a second one raises KeyboardInterrupt.

    Only the main thread can set handlers: elsewhere the request is never set by a signal (Ctrl-C then raises
    KeyboardInterrupt as usual).
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.signame = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def truncate_metrics(path: Path, step: int) -> int:
    """Keep only the rows of ``path`` (``metrics.jsonl``) up to ``step``, the checkpoint a run resumes from;
    an unreadable row (a line cut short by a kill) ends the kept part. Rewritten atomically; returns the number
    of rows dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    kept: list[str] = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not line.endswith("\n") or not isinstance(row, dict) or row.get("step", 0) > step:
            break
        kept.append(line)
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    return len(lines) - len(kept)
