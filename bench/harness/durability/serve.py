"""``seqpred serve`` with the SQLite variant of the local session log in place of the product's (benchmark only).

python bench/harness/durability/serve.py --durability sync --state-dir DIR [any seqpred serve flag]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).resolve().parents[2])]

from harness.durability.sqlite_log import SqliteLog  # noqa: E402
from service import server  # noqa: E402
from service.cli import main_serve  # noqa: E402
from service.durability.local import DurabilityMetrics  # noqa: E402


def make_persistence(settings, metrics, runtime, store):  # type: ignore[no-untyped-def]
    if settings.durability == "none":
        return None
    return SqliteLog(
        settings.state_dir,
        settings.durability,
        settings.snapshot_interval,
        settings.fsync_interval,
        DurabilityMetrics(metrics.registry),
    )


if __name__ == "__main__":
    server.make_persistence = make_persistence
    sys.exit(main_serve(sys.argv[1:]))
