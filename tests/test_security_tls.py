"""TLS and mutual TLS (service/security/tls.py) end to end: certificates made at test time by tests/tls_helpers.py."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_helpers import running_server
from tls_helpers import Pki, make_pki

from service.cli import main_client
from service.client.sync import Client
from service.client.types import RequestError
from service.errors import SettingsError
from service.security.tls import channel_credentials, read_pem, server_credentials
from service.settings import Settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[Any]:
    with running_server(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)) as st:
        yield st


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[Any]:
    with running_server(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca)) as st:
        yield st


def _refused(target: str, creds: grpc.ChannelCredentials | None) -> RequestError:
    with Client(target, timeout=5, credentials=creds) as c, pytest.raises(RequestError) as e:
        c.model_info()
    return e.value


def test_tls_server_talks_only_tls(pki: Pki, tls_server: Any) -> None:
    with Client(tls_server.target, timeout=10, credentials=channel_credentials(pki.ca)) as c:
        assert c.model_info().cell == "lstm"
        with c.session(end_on_exit=True) as s:
            r = s.feed("def ", top_k=3)
            assert r.position == 4 and len(r.predictions) == 3
        # health stays reachable over the same TLS channel
        health = health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert _refused(tls_server.target, None).code == grpc.StatusCode.UNAVAILABLE  # plaintext client
    # a client that trusts another CA does not accept the server's certificate
    assert _refused(tls_server.target, channel_credentials(pki.rogue_ca)).code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_a_client_certificate_from_the_ca(pki: Pki, mtls_server: Any) -> None:
    good = channel_credentials(pki.ca, pki.client_cert, pki.client_key)
    with Client(mtls_server.target, timeout=10, credentials=good) as c:
        assert c.predict("x = ", top_k=2).position == 4
    assert _refused(mtls_server.target, channel_credentials(pki.ca)).code == grpc.StatusCode.UNAVAILABLE
    rogue = channel_credentials(pki.ca, pki.rogue_cert, pki.rogue_key)
    assert _refused(mtls_server.target, rogue).code == grpc.StatusCode.UNAVAILABLE


def test_cli_client_over_mutual_tls(pki: Pki, mtls_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    argv = ["--target", mtls_server.target, "--ca-file", str(pki.ca), "--cert-file", str(pki.client_cert)]
    argv += ["--key-file", str(pki.client_key), "--json", "--top-k", "2", "def a"]
    assert main_client(argv, stdout=out) == 0
    assert '"position": 5' in out.getvalue()
    # without a client certificate the handshake fails: the CLI says no server answers
    monkeypatch.delenv("SEQPRED_CERT_FILE", raising=False)
    assert main_client(["--target", mtls_server.target, "--ca-file", str(pki.ca), "--timeout", "1", "x"]) == 2


def test_bad_tls_files_are_clear_errors(pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SettingsError, match=r"^--tls-key \(SEQPRED_TLS_KEY\): must be given together"):
        Settings(tls_cert=str(pki.server_cert))
    with pytest.raises(SettingsError, match=r"^--tls-client-ca .*: must be given only with --tls-cert"):
        Settings(tls_client_ca=str(pki.ca))
    missing = tmp_path / "nope.pem"
    with pytest.raises(SettingsError, match=r"^--tls-cert \(SEQPRED_TLS_CERT\): cannot read '.*nope\.pem'"):
        server_credentials(Settings(tls_cert=str(missing), tls_key=str(pki.server_key)))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(SettingsError, match=r"^--tls-key .*junk\.pem' is not a PEM file"):
        server_credentials(Settings(tls_cert=str(pki.server_cert), tls_key=str(junk)))
    with pytest.raises(SettingsError, match=r"^--ca-file: cannot read"):
        read_pem(missing, "--ca-file")
    with pytest.raises(SettingsError, match="give both"):
        channel_credentials(pki.ca, pki.client_cert, None)
    assert main_client(["--cert-file", str(pki.client_cert), "x"]) == 2
    assert "--cert-file and --key-file" in capsys.readouterr().err
