"""CPU-time readings the timing benchmarks use to notice (and repeat) rounds other processes disturbed."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def cpu_self() -> float:
    """CPU seconds (user + system) this process has used."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_all() -> float:
    """Busy CPU seconds of the whole machine since boot (from /proc/stat; 0 where unavailable)."""
    try:
        f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")
