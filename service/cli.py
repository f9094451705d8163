"""Command-line entry points: ``seqpred serve`` (:func:`main_serve`) and ``seqpred client`` (:func:`main_client`).

Both take ``argv`` without the sub-command name and return an exit code: 0, 2 for a user error or when no server
answers (one line ``seqpred: error: ...`` on stderr, like the rest of the ``seqpred`` CLI), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from model.errors import EXIT_INTERRUPTED, SeqpredError, report_error
from service import settings as settings_mod
from service.client.escapes import shown, unescape


def serve_parser(prog: str = "seqpred serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve a model directory over gRPC (streaming sessions, health, reflection, metrics). "
        "Every flag can also be set by its SEQPRED_* environment variable.",
    )
    settings_mod.add_arguments(p)
    return p


def main_serve(argv: Sequence[str] | None = None) -> int:
    """``seqpred serve [--model DIR] [--port N] ...``: run until SIGTERM/SIGINT, then drain gracefully."""
    args = serve_parser().parse_args(argv)
    try:
        settings = settings_mod.from_namespace(args)
        from service.logs import configure_logging
        from service.server import load_runtime, serve

        configure_logging(settings.log_level, settings.log_format, settings.access_log)
        runtime = load_runtime(settings)  # before the loop starts: a bad --model fails fast, in one line
        asyncio.run(serve(settings, runtime))
    except SeqpredError as e:
        return report_error(e)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def client_parser(prog: str = "seqpred client") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Talk to a seqpred server. With TEXT: stream it into a new session and print the next-token "
        "predictions. Without TEXT: an interactive mode that shows predictions and a completion as you type "
        "(per keystroke on a terminal, per line otherwise).",
    )
    p.add_argument(
        "text",
        nargs="?",
        default=None,
        metavar="TEXT",
        help="text to feed; backslash escapes are read as printf reads them (\\n newline, \\t tab, \\\\ "
        "backslash, \\xHH, \\uHHHH, ...) unless --raw",
    )
    p.add_argument("--raw", action="store_true", help="send TEXT as it is, without reading backslash escapes")
    p.add_argument(
        "--target",
        default=os.environ.get("SEQPRED_TARGET", "localhost:50051"),
        help="server HOST:PORT (env SEQPRED_TARGET; default localhost:50051)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--top-k", type=int, default=5, help="how many next-token predictions to show (default 5)")
    p.add_argument("--generate", type=int, default=0, help="also generate this many tokens (TEXT mode)")
    p.add_argument("--complete", type=int, default=20, help="completion length in interactive mode (0 = none)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy, the default)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server")
    sec = p.add_argument_group("security")
    sec.add_argument("--tls", action="store_true", help="connect with TLS, verifying the server by the system's CAs")
    for flag, env, what in (
        ("--ca-file", "SEQPRED_CA_FILE", "PEM CA certificates to verify the server with (implies --tls)"),
        ("--cert-file", "SEQPRED_CERT_FILE", "PEM client certificate for mutual TLS (implies --tls)"),
        ("--key-file", "SEQPRED_KEY_FILE", "PEM private key of --cert-file"),
        ("--token-file", "SEQPRED_TOKEN_FILE", "file holding the bearer token (env SEQPRED_TOKEN: the token itself)"),
    ):
        sec.add_argument(flag, default=os.environ.get(env) or None, metavar="FILE", help=f"{what} (env {env})")
    return p


def _security(args: argparse.Namespace) -> tuple[Any, str | None]:
    """``(channel credentials or None, bearer token or None)`` from the security flags."""
    from service.errors import SettingsError
    from service.security.tls import channel_credentials

    creds = None
    if args.tls or args.ca_file or args.cert_file or args.key_file:
        creds = channel_credentials(args.ca_file, args.cert_file, args.key_file)
    token = os.environ.get("SEQPRED_TOKEN") or None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise SettingsError(f"--token-file: cannot read {args.token_file!r}: {e}") from None
        if not token:
            raise SettingsError(f"--token-file: {args.token_file!r} is empty")
    return creds, token


def main_client(argv: Sequence[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """``seqpred client --target HOST:PORT [--json] [TEXT]``."""
    import grpc

    from service.client.sync import Client
    from service.client.types import RequestError

    args = client_parser().parse_args(argv)
    out = stdout or sys.stdout
    if args.top_k < 0 or args.generate < 0 or args.complete < 0 or args.temperature < 0:
        return report_error("--top-k, --generate, --complete and --temperature must be >= 0")
    try:
        creds, token = _security(args)
    except SeqpredError as e:
        return report_error(e)
    client = Client(args.target, timeout=args.timeout, credentials=creds, token=token)
    try:
        try:
            client.wait_ready(args.timeout)
        except grpc.FutureTimeoutError:
            return report_error(f"no seqpred server answers at {args.target}")
        if args.text is not None:
            return _one_shot(client, args, args.text if args.raw else unescape(args.text), out)
        return _interactive(client, args, stdin or sys.stdin, out)
    except RequestError as e:
        return report_error(e)  # "CODE: message", and " [request id ID]" for a failed RPC
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        client.close()


def _one_shot(client: Any, args: argparse.Namespace, text: str, out: TextIO) -> int:
    kw: dict[str, Any] = {"top_k": args.top_k, "end": True}
    if args.generate:
        kw.update(generate=args.generate, temperature=args.temperature, seed=args.seed)
    with client.session() as s:
        res = s.request(_req(text, **kw))
    if args.json:
        obj: dict[str, Any] = {
            "session_id": res.session_id,
            "position": res.position,
            "text": text,
            "predictions": [
                {"id": p.id, "text": p.text, "prob": p.prob, "logprob": p.logprob} for p in res.predictions
            ],
        }
        if args.generate:
            obj["generated"] = "".join(p.text for p in res.generated)
            obj["generated_ids"] = [p.id for p in res.generated]
        print(json.dumps(obj, ensure_ascii=False), file=out)
        return 0
    if args.generate:
        print(f"completion: {shown(''.join(p.text for p in res.generated))}", file=out)
    print(f"after {res.position} tokens, the next token is likely:", file=out)
    for p in res.predictions:
        print(f"  {p.prob:7.2%}  '{shown(p.text)}'  (id {p.id})", file=out)
    return 0


def _req(text: str, **kw: Any) -> Any:
    from service.client.types import make_request

    return make_request(text=text, **kw)


def _line(preds: Sequence[Any], completion: str) -> str:
    listed = "  ".join(f"'{shown(p.text)}' {p.prob:.0%}" for p in preds)
    return f"next: {listed}" + (f"   completion: {shown(completion)}" if completion else "")


def _completion(client: Any, context: str, args: argparse.Namespace) -> str:
    """A completion that does not advance the interactive session: a throw-away session fed the context."""
    if not args.complete or not context:
        return ""
    tail = context[-1024:]
    res = client.predict(tail, generate=args.complete, temperature=args.temperature, seed=args.seed, end=True)
    return "".join(p.text for p in res.generated)


def _interactive(client: Any, args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    from service.client.types import RequestError

    if stdin.isatty() and out.isatty():
        return _interactive_tty(client, args, stdin, out)
    with client.session(end_on_exit=True) as s:
        context = ""
        for line in stdin:
            try:
                res = s.feed(line, top_k=args.top_k)
            except RequestError as e:  # a bad line is reported and skipped; the session goes on
                msg = f"{e.code.name}: {e.message}"
                print(json.dumps({"error": msg}, ensure_ascii=False) if args.json else f"error: {msg}", file=out)
                continue
            context += line
            comp = _completion(client, context, args)
            if args.json:
                obj = {
                    "position": res.position,
                    "predictions": [{"id": p.id, "text": p.text, "prob": p.prob} for p in res.predictions],
                    "completion": comp,
                }
                print(json.dumps(obj, ensure_ascii=False), file=out, flush=True)
            else:
                print(_line(res.predictions, comp), file=out, flush=True)
    return 0


def _interactive_tty(client: Any, args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:  # pragma: no cover
    """Per keystroke: each character goes to the session; backspace resets it and re-feeds the rest."""
    import termios
    import tty

    from service.client.types import RequestError

    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    print("type; Ctrl-D or Ctrl-C quits", file=out, flush=True)
    text = ""
    with client.session(end_on_exit=True) as s:
        try:
            tty.setcbreak(fd)
            while True:
                ch = os.read(fd, 4).decode("utf-8", errors="replace")
                if not ch or ch in ("\x04", "\x03"):
                    break
                error = ""
                if ch in ("\x7f", "\x08"):
                    text = text[:-1]
                    s.reset()
                    res = s.feed(text, top_k=args.top_k) if text else None
                else:
                    ch = "\n" if ch == "\r" else ch
                    try:
                        res = s.feed(ch, top_k=args.top_k)
                        text += ch
                    except RequestError as e:
                        res, error = None, e.message
                comp = "" if error else _completion(client, text, args)
                status = error or (_line(res.predictions, comp) if res is not None else "")
                out.write(f"\r\x1b[2K{shown(text[-40:])}\x1b[7m|\x1b[0m  {status}"[:400])
                out.flush()
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            out.write("\n")
    return 0
