"""Listening ports: why one cannot be bound, and the one-line error that names its flag (``seqpred: error: ...``).

gRPC only logs why it could not bind (and ``add_insecure_port`` raises a bare RuntimeError), so the server first
binds a plain socket the way gRPC does and reports the operating system's reason.
"""

from __future__ import annotations

import errno
import socket

from service.errors import SettingsError


def bind_failure(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be listened on (None if it can), found by binding a plain socket there the way gRPC
    does (``SO_REUSEADDR``: a port held only by closing connections is free); gRPC itself only logs the reason."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        return e
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as e:
                return e
    return None


def port_error(flag: str, host: str, port: int, e: OSError) -> SettingsError:
    """One line naming the flag, the address and the reason (``seqpred: error: ...``, exit 2)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    reason = e.strerror or str(e)
    choices = "0 picks a free one, -1 turns the metrics off" if flag == "--metrics-port" else "0 picks a free one"
    if e.errno == errno.EADDRINUSE:
        hint = f"pass another {flag} ({choices}) or stop the program using it"
    else:
        hint = f"check {flag.replace('port', 'host')} and {flag}"
    return SettingsError(f"{flag}: cannot listen on {shown}:{port}: {reason}; {hint}")
