"""What every ``seqpred experiment`` shares: its output directory, resuming, the process pool and progress.

An experiment is a list of independent runs, each named by a key (e.g. ``(cell, task, length, seed)``) and
computed by a top-level function ``fn(shared, key) -> record`` (a JSON-able dict holding the key's fields).
Its output directory ``--out`` holds::

    experiment.json   {"experiment": name, "config": {...}}, written before the first run
    records.jsonl     one record per finished run, appended (and flushed) as each run finishes
    results.json      config + the records of the current plan, in plan order (written at the end)
    results.md/.png   the experiment's tables and plot

``--resume`` skips every run of the plan already in ``records.jsonl``. Only the *budget* (every setting but
the lists that enumerate runs: cells, lengths, learning rates, seeds) has to match the stored one, so a resumed
experiment may add cells or seeds. ``--overwrite`` deletes those files first; without either flag a directory
that already holds an experiment is refused before anything runs.

Runs execute in ``workers`` processes (``spawn``; each limited to single-threaded BLAS with threadpoolctl, so
two processes use two cores without oversubscription), or in this process when ``workers == 1``. A run's result
does not depend on the worker count: it is seeded by its key alone and BLAS is single-threaded either way.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from model.errors import ConfigError

Key = tuple[Any, ...]
Record = dict[str, Any]
RunFn = Callable[[Any, Key], Record]

EXPERIMENT_FILE, RECORDS_FILE = "experiment.json", "records.jsonl"
OUTPUT_FILES = (EXPERIMENT_FILE, RECORDS_FILE, "results.json", "results.md", "results.png")


def default_workers() -> int:
    """The CPU cores this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------- output directory


def prepare_out(
    out: Path, experiment: str, config: dict[str, Any], enumerating: Iterable[str], resume: bool, overwrite: bool
) -> list[Record]:
    """Make ``out`` ready for ``experiment`` and return the records it already holds (resume) or ``[]``.

    Raises :class:`ConfigError` (naming ``--out`` or ``--resume``) when ``out`` is a file, holds an experiment
    and neither flag is given, or holds one of another kind or budget. ``config`` must be JSON-able.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {str(out)!r} exists and is not a directory")
    meta_path = out / EXPERIMENT_FILE
    held = meta_path.exists() or (out / "results.json").exists()
    if held and overwrite:
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
        held = False
    if held and not resume:
        raise ConfigError(
            f"--out: {str(out)!r} already holds an experiment; pass --resume to continue it or --overwrite to "
            "replace it"
        )
    records: list[Record] = []
    if held:
        stored = _read_meta(meta_path)
        if stored.get("experiment") != experiment:
            raise ConfigError(
                f"--resume: {str(out)!r} holds a {stored.get('experiment')!r} experiment, not {experiment!r}"
            )
        skip = set(enumerating)
        old, new = stored.get("config", {}), jsonable(config)
        for k in sorted(set(old) | set(new)):
            if k not in skip and old.get(k) != new.get(k):
                raise ConfigError(
                    f"--resume: {str(out)!r} was run with {k}={old.get(k)!r}, not {new.get(k)!r}; use the same "
                    "budget (only the lists of cells, lengths, learning rates and seeds may change) or --overwrite"
                )
        records = read_records(out / RECORDS_FILE)
    out.mkdir(parents=True, exist_ok=True)
    from model.train.checkpoint import write_json_atomic

    write_json_atomic(meta_path, {"experiment": experiment, "config": jsonable(config)})
    return records


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume: cannot read {str(path)!r} ({e}); pass --overwrite to start again") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--resume: {str(path)!r} is not a JSON object; pass --overwrite to start again")
    return data


def read_records(path: Path) -> list[Record]:
    """The records of ``records.jsonl``; a line cut short by a kill (the last one) is ignored."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def append_record(path: Path, record: Record) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(jsonable(record)) + "\n")
        f.flush()


# --------------------------------------------------------------------------------------------- running


def run_all(
    fn: RunFn,
    shared: Any,
    keys: Sequence[Key],
    workers: int,
    on_record: Callable[[Record], None],
) -> None:
    """Run ``fn(shared, key)`` for every key, in ``workers`` processes (in order of completion) or, for
    ``workers == 1``, here in order; ``on_record`` gets each record as it arrives (in this process).

    An exception in a run (or Ctrl-C) stops the pool at once and propagates; records already passed to
    ``on_record`` stay (that is what ``--resume`` continues from).
    """
    if not keys:
        return
    if workers <= 1 or len(keys) == 1:
        with threadpool_limits(1):
            for key in keys:
                on_record(fn(shared, key))
        return
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(min(workers, len(keys)), initializer=_init_worker, initargs=(fn, shared))
    try:
        for rec in pool.imap_unordered(_call, list(keys), chunksize=1):
            on_record(rec)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


_WORKER: tuple[RunFn, Any] | None = None


def _init_worker(fn: RunFn, shared: Any) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it terminates the pool
    threadpool_limits(1)  # applies for the life of this worker process
    _WORKER = (fn, shared)


def _call(key: Key) -> Record:
    assert _WORKER is not None
    fn, shared = _WORKER
    return fn(shared, key)


class Progress:
    """One line per finished run on stderr: ``[k/n] <what>; <time> (elapsed 21s, eta 3m10s)``."""

    def __init__(self, total: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.done, self.clock, self.start = total, 0, clock, clock()

    def line(self, what: str) -> str:
        self.done += 1
        elapsed = self.clock() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        return f"[{self.done}/{self.total}] {what} (elapsed {_dur(elapsed)}, eta {_dur(eta)})"

    def log(self, what: str) -> None:
        print(self.line(what), file=sys.stderr, flush=True)


def _dur(s: float) -> str:
    s = round(s)
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s"


# --------------------------------------------------------------------------------------------- numbers


def summarize(values: Sequence[float | None]) -> tuple[float, float, int, int]:
    """``(mean, sample std, n finite, n runs)``; std is 0 for one value, NaN mean when none is finite."""
    good = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not good:
        return math.nan, math.nan, 0, len(values)
    std = float(np.std(good, ddof=1)) if len(good) > 1 else 0.0
    return float(np.mean(good)), std, len(good), len(values)


def mean_std_text(values: Sequence[float | None], fmt: str) -> str:
    """``"mean ± std"`` (just the mean for one run), ``"diverged"`` when none is finite, noting diverged runs."""
    mean, std, n, total = summarize(values)
    if n == 0:
        return "diverged"
    s = f"{mean:{fmt}} ± {std:{fmt}}" if total > 1 else f"{mean:{fmt}}"
    return s + (f" ({total - n} diverged)" if n < total else "")


def jsonable(obj: Any) -> Any:
    """``obj`` with tuples as lists and non-finite floats as None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------------------------------- validation


def check_names(flag: str, names: Sequence[str], known: Sequence[str]) -> None:
    if not names:
        raise ConfigError(f"{flag}: the list is empty; choose from {','.join(known)}")
    for c in names:
        if c not in known:
            raise ConfigError(f"{flag}: unknown name {c!r}; choose from {','.join(known)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{flag}: a name is listed twice in {','.join(names)!r}")


def check_int_list(flag: str, values: Sequence[int], minimum: int) -> None:
    if not values:
        raise ConfigError(f"{flag}: the list is empty")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{flag}: every value must be an integer >= {minimum}, got {v!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{flag}: a value is listed twice in {json.dumps(list(values))}")


def check_int(flag: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{flag}: must be an integer >= {minimum}, got {value!r}")


def check_float(flag: str, value: float, allow_zero: bool) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{flag}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def parse_list(flag: str, text: str, kind: Callable[[str], Any], what: str) -> tuple[Any, ...]:
    """Comma-separated ``text`` -> tuple of ``kind`` values; empty or unparsable -> :class:`ConfigError`."""
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts:
        raise ConfigError(f"{flag}: the list is empty (got {text!r}); give comma-separated {what}")
    try:
        return tuple(kind(s) for s in parts)
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated {what}, got {text!r}") from None
