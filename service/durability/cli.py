"""``seqpred durability check DIR`` and ``seqpred durability salvage DIR``: damage in a ``--state-dir``.

``check`` reads the directory, changes nothing, and says what is damaged and what salvage would do: exit 0 when
a server would start on it, 2 (with one ``seqpred: error: ...`` line per damaged file) when it would refuse.
``salvage`` keeps every intact record, drops the sessions that lost a change (listed), and moves each damaged
file into ``DIR/damaged/`` (:mod:`service.durability.salvage`); run it with the server stopped.

A command of its own rather than a ``serve`` flag: salvage drops data, so it is a decision taken once, on a
directory an operator has looked at, not a flag that stays in a unit file and silently salvages every later
damage too; and it needs no model, so it runs anywhere (on a copy, say) without starting a server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from model.errors import report_error
from service.durability import salvage as salvage_mod
from service.durability import statedir


def parser(prog: str = "seqpred durability") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Check or salvage the state directory of --durability.")
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("check", help="say what is damaged and what salvage would do (changes nothing)")
    c.add_argument("dir", metavar="DIR", help="the server's --state-dir")
    c.add_argument("--json", action="store_true", help="one JSON object on the last line")
    s = sub.add_parser("salvage", help="keep every intact record, move damaged files into DIR/damaged/")
    s.add_argument("dir", metavar="DIR", help="the server's --state-dir (the server must be stopped)")
    s.add_argument(
        "--accept-unknown-loss",
        action="store_true",
        help="salvage even when a damaged record does not say whose change it held (one session may then have "
        "lost a change unnoticed)",
    )
    s.add_argument("--json", action="store_true", help="one JSON object on the last line")
    return p


def main_durability(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    d = Path(args.dir)
    if not (d / "meta.json").is_file():
        return report_error(f"DIR: {str(d)!r} is not a seqpred state directory (no meta.json)")
    try:
        with _locked(d):
            report = salvage_mod.check(d)
            for line in salvage_mod.describe(report):
                print(line)
            if args.action == "check":
                summary = _summary(report, [])
                if args.json:
                    print(json.dumps(summary))
                for dmg in report.damage:
                    report_error(dmg.line())
                return 2 if report.damaged else 0
            for dmg in report.damage:
                print(f"found: {dmg.line()}")
            done = salvage_mod.salvage(report, args.accept_unknown_loss)
    except (ValueError, OSError) as e:
        return report_error(e)
    for line in done:
        print(f"salvage: {line}")
    if report.lost:
        names = ", ".join(f"{p}/{s}" if p else s for p, s in report.lost)
        print(f"seqpred: warning: sessions that lost a change (gone after salvage): {names}", file=sys.stderr)
    if args.json:
        print(json.dumps(_summary(report, done)))
    return 0


def _summary(report: salvage_mod.Report, done: list[str]) -> dict[str, object]:
    return {
        "damaged": report.damaged,
        "damage": [{"file": str(x.path), "offset": x.offset, "why": x.why} for x in report.damage],
        "lost": [list(k) for k in report.lost],
        "dropped": [list(k) for k in report.drop],
        "kept_sessions": report.kept,
        "torn_tail_bytes": sum(s.torn for s in report.segments),
        "done": done,
    }


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    """The directory's lock, as a server holds it: never touch a directory a running server uses."""
    fd = statedir.lock(d)
    if fd is None:
        raise ValueError(f"DIR: {str(d)!r} is in use by a running server; stop it first")
    try:
        yield
    finally:
        os.close(fd)
