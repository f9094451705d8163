"""The server's log lines: one JSON object per line (``--log-format json``) or text (``--log-format text``).

A record's ``extra={"fields": {...}}`` appears in both: as keys of the JSON object, and as ``key=value`` pairs after
the text line's message (values with spaces, quotes or ``=`` JSON-quoted, ``None`` as ``-``).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

#: The access log (``--access-log``): one INFO line per request, see docs/service.md.
ACCESS_LOGGER = "seqpred.access"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _text_value(v: object) -> str:
    if v is None:
        return "-"
    s = v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(v)
    if not s or any(c in s for c in ' "=\\') or not s.isprintable():
        return json.dumps(s, ensure_ascii=False)
    return s


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if not isinstance(fields, dict) or not fields:
            return line
        head, sep, tail = line.partition("\n")  # an exception's traceback stays below the fields
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return f"{head} {pairs}{sep}{tail}"


def configure_logging(level: str = "INFO", fmt: str = "json", access_log: bool = False) -> None:
    """Log ``seqpred.*`` to stderr at ``level`` in ``fmt``; ``access_log`` shows the access log whatever the level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("seqpred")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if access_log else logging.NOTSET)
