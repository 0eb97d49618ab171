"""Secrets never leak; listeners bind loopback; TLS is verified unless explicitly relaxed."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from poller.apps.exits import EX_CONFIG, exit_code_for
from poller.config import ApiConfig, MetricsConfig, PollerConfig
from poller.core.errors import ConfigError, TlsVerificationError, TransportError
from poller.core.records import Target
from poller.core.stats import SweepStats
from poller.emulator import EmulatorConfig
from poller.emulator.process import EmulatorProcess
from poller.engine.poller import Poller
from poller.wire.signing import SigningCredentials

SECRET = "s3cr3t-VALUE-that-must-not-leak"
TOKEN = "CAIS-sts-TOKEN/that+must=not=leak"
LEAKS = re.compile(
    rb"s3cr3t-VALUE|sts-TOKEN|Signature=[A-Za-z0-9%+/]{10,}|Signature=[0-9a-f]{64}"
    rb"|Credential=.*,Signature="
)


@pytest.mark.slow
@pytest.mark.parametrize("signature", ["v3", "v1"])
def test_no_secret_token_or_signature_in_any_output(tmp_path: Path, signature: str) -> None:
    faults = "500=0.1,reset_before=0.1,reset_after=0.1,malformed=0.1,hang=0.05"
    args = (
        "--sts-key",
        f"sts-id:{SECRET}:{TOKEN}",
        "--faults",
        faults,
        "--seed",
        "9",
        "--hang-s",
        "1",
        "--qps",
        "0",
    )
    with EmulatorProcess(*args) as emulator:
        config = tmp_path / "poller.toml"
        config.write_text(
            f'[api]\nendpoint = "{emulator.endpoint}"\nprotocol = "http"\n'
            f'signature = "{signature}"\ntimeout_s = 0.3\n'
            f'[credentials]\naccess_key_id = "sts-id"\naccess_key_secret = "{SECRET}"\n'
            f'security_token = "{TOKEN}"\n'
            '[[targets]]\napp_id = "demo-app"\ngroup_id = "demo-group"\nuids = ["user-000001"]\n',
            "utf-8",
        )
        uids = ",".join(f"user-{i:06d}" for i in range(1, 401))

        def poll_once(path: Path) -> subprocess.CompletedProcess[bytes]:
            command = ["once", "--config", str(path), "--target", "demo-app/demo-group"]
            return subprocess.run(
                [sys.executable, "-m", "poller", "-v", *command, "--uids", uids],
                capture_output=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
            )

        once = poll_once(config)
        check = subprocess.run(
            [sys.executable, "-m", "poller", "check-config", str(config)],
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        bad = tmp_path / "bad.toml"  # a wrong secret: the server's string-to-sign comes back
        bad.write_text(config.read_text("utf-8").replace(SECRET, "wrong-" + SECRET), "utf-8")
        wrong = poll_once(bad)
    assert once.returncode == 0, once.stderr.decode()
    assert b'"type":"presence"' in once.stdout
    assert check.returncode == 0 and b"****" in check.stdout
    assert wrong.returncode == 78
    for proc in (once, check, wrong):
        for stream in (proc.stdout, proc.stderr):
            match = LEAKS.search(stream)
            assert match is None, match.group(0) if match else None


def test_repr_of_configs_and_credentials_hide_secrets() -> None:
    config = PollerConfig().with_changes(
        credentials=PollerConfig().credentials.__class__(
            access_key_id="id", access_key_secret=SECRET, security_token=TOKEN
        )
    )
    creds = SigningCredentials("id", SECRET, TOKEN)
    for text in (repr(config), str(config), repr(creds)):
        assert SECRET not in text and TOKEN not in text


def test_listeners_bind_loopback_by_default() -> None:
    assert EmulatorConfig().host == "127.0.0.1"
    assert MetricsConfig().listen == ""  # off unless configured
    assert ApiConfig().verify_tls is True and ApiConfig().protocol == "https"


@dataclass
class _HttpsSweep:
    records: list[tuple[str, str]]
    attempts: int  # requests the client signed and tried to send
    fatal: BaseException | None  # what the sweep raised at its end


async def _https_sweep(verify: bool, ca: trustme.CA, transport: str) -> _HttpsSweep:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"RequestId": "r", "Result": {"OnlineUsers": []}})

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    app = web.Application()
    app.router.add_post("/", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_ctx)
    try:
        config = PollerConfig(
            api=ApiConfig(
                endpoint=f"127.0.0.1:{server.port}",
                verify_tls=verify,
                timeout_s=2,
                transport=transport,  # type: ignore[arg-type]
            )
        )
        records: list[tuple[str, str]] = []
        async with Poller(config, credentials=SigningCredentials("id", SECRET)) as poller:
            try:
                async for r in poller.sweep(Target("a", "g"), ["u1"]):
                    records.append((str(r.get("code", "presence")), str(r.get("message", ""))))
            except TlsVerificationError as exc:
                assert poller.last is not None and poller.last.fatal is exc
                return _HttpsSweep(records, poller.client.attempts if poller.client else 0, exc)
            return _HttpsSweep(records, poller.client.attempts if poller.client else 0, None)
    finally:
        await server.close()


@pytest.mark.parametrize("transport", ["builtin", "aiohttp"])
def test_tls_is_verified_by_default_and_relaxing_it_warns(
    caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    ca = trustme.CA()  # not trusted by the client: verification must fail
    failed = asyncio.run(_https_sweep(True, ca, transport))
    [(code, message)] = failed.records
    assert code == "TlsVerificationFailed" and "CERTIFICATE_VERIFY_FAILED" in message
    assert "certificate verification failed" in message
    assert failed.attempts == 1  # fatal, not transient: never retried
    fatal = failed.fatal
    assert isinstance(fatal, TlsVerificationError) and fatal.fatal and not fatal.retriable
    assert isinstance(fatal, TransportError) and isinstance(fatal, ConfigError)
    assert exit_code_for(SweepStats(sweep=1, started_at=0.0, fatal=fatal)) == EX_CONFIG
    with caplog.at_level(logging.WARNING):
        relaxed = asyncio.run(_https_sweep(False, ca, transport))
    [(code, _)] = relaxed.records
    assert code == "MissingInResponse"  # connected; the empty answer is then reported
    assert relaxed.fatal is None
    assert any("verification is DISABLED" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_https_emulator_with_a_private_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(cert_pem), append=True)
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    args = ("--tls-cert", str(cert_pem), "--tls-key", str(key_pem))
    with EmulatorProcess(*args, ca_file=ca_pem) as emulator:
        assert emulator.url.startswith("https://127.0.0.1:")
        config = emulator.poller_config()

        async def sweep() -> list[str]:
            async with Poller(config) as poller:
                return [
                    r["type"]
                    async for r in poller.sweep(
                        Target("demo-app", "demo-group"), ["user-000001", "user-000002"]
                    )
                ]

        assert asyncio.run(sweep()) == ["presence", "presence"]
        assert emulator.stats()["total"]["requests_total"] == 1


@pytest.mark.slow
def test_once_exits_78_naming_certificate_verification(tmp_path: Path) -> None:
    ca = trustme.CA()  # the emulator's issuer, unknown to poller
    cert = ca.issue_cert("127.0.0.1")
    cert_pem, key_pem = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    with EmulatorProcess(
        "--tls-cert", str(cert_pem), "--tls-key", str(key_pem), ca_file=ca_pem
    ) as emulator:
        config = tmp_path / "poller.toml"
        config.write_text(
            f'[api]\nendpoint = "{emulator.endpoint}"\n'
            f'[credentials]\naccess_key_id = "demo-key"\naccess_key_secret = "{SECRET}"\n',
            "utf-8",
        )
        command = ["once", "--config", str(config), "--target", "demo-app/demo-group"]
        once = subprocess.run(
            [sys.executable, "-m", "poller", *command, "--uids", "user-000001"],
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        requests = emulator.stats()["total"]["requests_total"]
    assert once.returncode == 78, once.stderr.decode()
    assert b"certificate verification failed" in once.stderr
    assert b"TlsVerificationFailed" in once.stdout  # the UID's error record
    assert requests == 0  # no request got through the handshake
