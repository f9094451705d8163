"""Throwaway certificates for the TLS tests, made at test time with the ``openssl`` command (no key is committed).

:func:`make_pki` writes, into a fresh directory: a CA, a server certificate for ``localhost`` (and 127.0.0.1,
::1) and a client certificate, both signed by that CA, plus a second, unrelated CA with a client certificate of
its own (a client the server must refuse). EC P-256 keys: a few milliseconds each.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {out.stderr.strip()}")


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _leaf(d: Path, name: str, ca: str, usage: str, serial: int, san: str = "") -> None:
    _openssl("req", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    ext = d / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature", f"extendedKeyUsage={usage}"]
    if san:
        lines.append(f"subjectAltName={san}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-set_serial", str(serial),
        "-days", "2", "-out", f"{name}.pem", "-extfile", ext.name,
        cwd=d,
    )  # fmt: skip


def make_pki(d: Path) -> Pki:
    """Generate the certificates into ``d`` (skips the test when ``openssl`` is not installed)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _leaf(d, "server", "ca", "serverAuth", 1, "DNS:localhost,IP:127.0.0.1,IP:::1")
    _leaf(d, "client", "ca", "clientAuth", 2)
    _leaf(d, "rogue", "rogue-ca", "clientAuth", 3)
    return Pki(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        d / "rogue-ca.pem",
        d / "rogue.pem",
        d / "rogue.key",
    )
