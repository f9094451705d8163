"""The state directory itself: its lock (one server, or one salvage, at a time) and ``meta.json`` (which model and
state layout the sessions in it belong to)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from service.durability.wal import fsync_dir
from service.errors import StateDirError


def lock(directory: Path) -> int | None:
    """Take ``directory``'s lock (``flock`` on ``DIR/lock``, held until the returned descriptor is closed); None
    when another process holds it."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def check_meta(directory: Path, meta: dict[str, Any]) -> None:
    """Write ``meta.json`` in a new directory; in one written before, refuse a different model or state layout."""
    path = directory / "meta.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise StateDirError(f"--state-dir: {str(path)!r} is unreadable: {e}") from None
        if old != meta:
            was = old.get("model_sha256") if isinstance(old, dict) else None
            raise StateDirError(
                f"--state-dir: {str(directory)!r} holds sessions of another model or format "
                f"(model sha256 {str(was)[:12]}..., this one {meta['model_sha256'][:12]}...); "
                "use another --state-dir, or remove it to start without sessions"
            )
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, path)
    fsync_dir(directory)
