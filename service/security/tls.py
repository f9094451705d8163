"""TLS and mutual TLS: server credentials from the settings, channel credentials for clients.

Server (``--tls-cert``, ``--tls-key``, optionally ``--tls-client-ca``): with a certificate and key the gRPC port
speaks TLS only; with a client CA as well, every client must present a certificate signed by one of its CAs
(mutual TLS; the handshake fails otherwise, before any RPC). Files are PEM and are read once, at start-up.

Client: :func:`channel_credentials` (CA file to verify the server, or the system roots; a client certificate and
key for mutual TLS).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from service.errors import SettingsError
from service.settings import Settings, env_name, flag_name

PEM_MARKER = b"-----BEGIN "


def read_pem(path: str | Path, what: str) -> bytes:
    """The bytes of a PEM file; SettingsError naming ``what`` (a flag) and the path when unreadable or not PEM."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SettingsError(f"{what}: cannot read {str(path)!r}: {e.strerror or e}") from None
    if PEM_MARKER not in data:
        raise SettingsError(f"{what}: {str(path)!r} is not a PEM file (no '-----BEGIN' line)")
    return data


def _setting(name: str) -> str:
    return f"{flag_name(name)} ({env_name(name)})"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for the server, or None for plaintext (no ``--tls-cert``)."""
    if not settings.tls_cert:
        return None
    cert = read_pem(settings.tls_cert, _setting("tls_cert"))
    key = read_pem(settings.tls_key, _setting("tls_key"))
    ca = read_pem(settings.tls_client_ca, _setting("tls_client_ca")) if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(
    ca_file: str | Path | None = None, cert_file: str | Path | None = None, key_file: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Client TLS credentials: the server is verified against ``ca_file`` (None: the system's roots); with
    ``cert_file`` and ``key_file`` the client presents its own certificate (mutual TLS)."""
    if (cert_file is None) != (key_file is None):
        raise SettingsError("--cert-file and --key-file: give both (a client certificate needs its key) or neither")
    ca = read_pem(ca_file, "--ca-file") if ca_file else None
    cert = read_pem(cert_file, "--cert-file") if cert_file else None
    key = read_pem(key_file, "--key-file") if key_file else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
