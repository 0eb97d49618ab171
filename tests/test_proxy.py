"""Proxies: which one applies (the aiohttp transport's rule), the default transport going through
a local forward proxy (plain HTTP and CONNECT for HTTPS), the builtin transport refusing, and
proxy credentials never shown. Only 127.0.0.1 is ever connected to; every wait is bounded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trustme

from poller.apps.cli import main
from poller.config import ApiConfig, mask_url
from poller.core.errors import ConfigError, MalformedResponse, TransportError
from poller.core.records import Batch, Target
from poller.emulator import EmulatorConfig, EmulatorServer, GroupSpec
from poller.wire.client import LiveClient
from poller.wire.proxy import check_builtin_transport, describe_proxy, proxy_for
from poller.wire.signing import SigningCredentials
from tests.conftest import LoopbackServer

CREDS = SigningCredentials("demo-key", "demo-secret")
BATCH = Batch(Target("demo-app", "demo-group"), ("user-000001",))
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "ws_proxy", "wss_proxy")
STEP_S = 5.0  # the bound on every single wait of the proxy


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no proxy variable set, in either case."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)


# -- a tiny forward proxy ----------------------------------------------------------------------


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 message with a Content-Length body (or none): ``(head, body)``."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_S)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await asyncio.wait_for(reader.readexactly(length), STEP_S) if length else b""
    return head, body


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        while data := await asyncio.wait_for(reader.read(65536), STEP_S):
            writer.write(data)
            await writer.drain()
    writer.close()


class ForwardProxy(LoopbackServer):
    """Absolute-form requests (``POST http://127.0.0.1:PORT/ HTTP/1.1``) forwarded, keep-alive,
    and ``CONNECT 127.0.0.1:PORT`` tunnels; it counts both and keeps Proxy-Authorization."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []
        self.tunnels: list[str] = []
        self.auth: list[str] = []

    def _note_auth(self, head: bytes) -> None:
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "proxy-authorization":
                self.auth.append(value.strip())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                head, body = await _read_message(reader)
                self._note_auth(head)
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
                if method == "CONNECT":
                    await self._tunnel(target, reader, writer)
                    return
                url = urlsplit(target)
                assert url.hostname == "127.0.0.1" and url.port
                self.requests.append(f"{method} {target}")
                if upstream is None:
                    upstream = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", url.port), STEP_S
                    )
                path = url.path + (f"?{url.query}" if url.query else "")
                lines = head.split(b"\r\n")[1:]
                kept = [ln for ln in lines if not ln.lower().startswith(b"proxy-")]
                upstream[1].write(f"{method} {path} HTTP/1.1\r\n".encode() + b"\r\n".join(kept))
                upstream[1].write(body)
                answer_head, answer_body = await _read_message(upstream[0])
                writer.write(answer_head + answer_body)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            if upstream is not None:
                upstream[1].close()
            writer.close()

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, _, port = target.rpartition(":")
        assert host == "127.0.0.1"
        self.tunnels.append(target)
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port)), STEP_S
        )
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    async with ForwardProxy() as server:
        yield server


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    config = EmulatorConfig(port=0, qps=0, groups=(GroupSpec("demo-app", "demo-group", 10),))
    async with EmulatorServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """(CA bundle, server certificate chain, server key) for 127.0.0.1."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    folder = tmp_path_factory.mktemp("tls")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    cert.private_key_pem.write_to_path(folder / "key.pem")
    cert.private_key_and_cert_chain_pem.write_to_path(folder / "chain.pem")
    yield folder / "ca.pem", folder / "chain.pem", folder / "key.pem"


def _http_api(server: EmulatorServer, **changes: object) -> ApiConfig:
    api = ApiConfig(endpoint=server.endpoint, protocol="http", timeout_s=5.0)
    return replace(api, **changes)  # type: ignore[arg-type]


# -- the rule ----------------------------------------------------------------------------------

HTTPS_API = ApiConfig(endpoint="live.aliyuncs.com")
HTTP_API = ApiConfig(endpoint="127.0.0.1:8780", protocol="http")
P = "http://proxy.test:3128"


@pytest.mark.parametrize(
    ("api", "environ", "expected"),
    [
        (HTTPS_API, {}, None),
        (HTTPS_API, {"HTTPS_PROXY": P}, P),
        (HTTPS_API, {"https_proxy": P}, P),
        (HTTPS_API, {"HTTP_PROXY": P}, None),  # the endpoint's scheme picks the variable
        (HTTP_API, {"HTTP_PROXY": P}, P),
        (HTTP_API, {"HTTPS_PROXY": P}, None),
        (HTTPS_API, {"ALL_PROXY": P}, None),  # not read (by aiohttp either)
        (HTTPS_API, {"HTTPS_PROXY": "http://upper:1", "https_proxy": P}, P),  # lower case wins
        (HTTPS_API, {"HTTPS_PROXY": P, "https_proxy": ""}, None),  # empty lower case unsets
        (HTTPS_API, {"HTTPS_PROXY": "https://proxy.test:443"}, None),  # unsupported: ignored
        (HTTPS_API, {"HTTPS_PROXY": P, "NO_PROXY": "*"}, None),
        (HTTPS_API, {"HTTPS_PROXY": P, "NO_PROXY": "live.aliyuncs.com"}, None),
        (HTTPS_API, {"HTTPS_PROXY": P, "no_proxy": "aliyuncs.com"}, None),  # a suffix
        (HTTPS_API, {"HTTPS_PROXY": P, "NO_PROXY": " x.org , .aliyuncs.com"}, None),
        (HTTPS_API, {"HTTPS_PROXY": P, "NO_PROXY": "yuncs.com"}, P),  # not a domain suffix
        (HTTPS_API, {"HTTPS_PROXY": P, "NO_PROXY": "live.aliyuncs.com:443"}, P),  # no ports
        (HTTP_API, {"HTTP_PROXY": P, "NO_PROXY": "127.0.0.1"}, None),
        (HTTP_API, {"HTTP_PROXY": P, "REQUEST_METHOD": "GET"}, None),  # CGI: HTTP_PROXY unsafe
        (HTTP_API, {"http_proxy": P, "REQUEST_METHOD": "GET"}, P),
    ],
)
def test_which_proxy_applies_is_aiohttps_rule(
    monkeypatch: pytest.MonkeyPatch, api: ApiConfig, environ: dict[str, str], expected: str | None
) -> None:
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    assert proxy_for(api, environ) == expected  # over a given mapping
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert proxy_for(api) == expected  # over os.environ
    try:  # what aiohttp itself would use (it strips the credentials, there are none here)
        aiohttp_proxy: str | None = str(get_env_proxy_for_url(URL(api.base_url))[0])
    except LookupError:
        aiohttp_proxy = None
    assert aiohttp_proxy == expected


def test_proxy_urls_are_masked() -> None:
    assert mask_url("http://user:s3cr%40t@proxy:3128") == "http://user:****@proxy:3128"
    assert mask_url("http://token@proxy:3128/") == "http://****@proxy:3128/"
    assert mask_url("http://proxy:3128") == "http://proxy:3128"
    assert mask_url("user:pw@proxy:3128") == "user:****@proxy:3128"
    assert mask_url("http://u:p@w@proxy:1/x?key=v#f") == "http://u:****@proxy:1/x"


# -- through a proxy ---------------------------------------------------------------------------


async def test_the_default_transport_goes_through_http_proxy_unless_no_proxy(
    monkeypatch: pytest.MonkeyPatch, proxy: ForwardProxy, emulator: EmulatorServer
) -> None:
    api = _http_api(emulator)
    assert api.transport == "aiohttp"
    monkeypatch.setenv("HTTP_PROXY", f"http://user:hunter2@127.0.0.1:{proxy.port}")
    async with LiveClient(api, CREDS) as client:
        for _ in range(3):
            answer = await client.fetch(BATCH)
            assert [u["UserId"] for u in answer.online_users] == ["user-000001"]
        assert client.connections_opened == 1  # to the proxy, kept alive
    assert proxy.requests == [f"POST http://{emulator.endpoint}/"] * 3
    assert proxy.auth == ["Basic " + base64.b64encode(b"user:hunter2").decode()] * 3

    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    async with LiveClient(api, CREDS) as client:
        await client.fetch(BATCH)
    assert len(proxy.requests) == 3 and emulator.stats()["total"]["requests_total"] == 4


async def test_an_https_endpoint_is_reached_through_a_connect_tunnel(
    monkeypatch: pytest.MonkeyPatch, proxy: ForwardProxy, tls_files: tuple[Path, Path, Path]
) -> None:
    ca_file, chain, key = tls_files
    config = EmulatorConfig(port=0, qps=0, tls_cert=str(chain), tls_key=str(key))
    async with EmulatorServer(config) as server:
        api = ApiConfig(endpoint=server.endpoint, ca_file=ca_file, timeout_s=5.0)
        monkeypatch.setenv("https_proxy", f"http://user:hunter2@127.0.0.1:{proxy.port}")
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # the other scheme's: unused
        async with LiveClient(api, CREDS) as client:
            for _ in range(2):
                await client.fetch(BATCH)
        assert proxy.tunnels == [server.endpoint] and proxy.requests == []
        assert proxy.auth == ["Basic " + base64.b64encode(b"user:hunter2").decode()]
        assert server.stats()["total"]["requests_total"] == 2

        monkeypatch.setenv("no_proxy", "127.0.0.1")
        async with LiveClient(api, CREDS) as client:
            await client.fetch(BATCH)
        assert len(proxy.tunnels) == 1 and server.stats()["total"]["requests_total"] == 3


async def test_the_builtin_transport_refuses_a_proxy_without_showing_its_credentials(
    monkeypatch: pytest.MonkeyPatch, proxy: ForwardProxy, emulator: EmulatorServer
) -> None:
    api = _http_api(emulator, transport="builtin")
    monkeypatch.setenv("HTTP_PROXY", f"http://user:hunter2@127.0.0.1:{proxy.port}")
    with pytest.raises(ConfigError) as caught:
        async with LiveClient(api, CREDS):
            pass
    message = str(caught.value)
    assert caught.value.key == "api.transport"
    assert "hunter2" not in message and f"http://user:****@127.0.0.1:{proxy.port}" in message
    assert "NO_PROXY" in message and "aiohttp" in message
    with pytest.raises(ConfigError):
        check_builtin_transport(api)
    check_builtin_transport(replace(api, transport="aiohttp"))  # no refusal

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with LiveClient(api, CREDS) as client:  # not proxied: the builtin transport is fine
        await client.fetch(BATCH)
    assert proxy.requests == [] and emulator.stats()["total"]["requests_total"] == 1


async def test_an_unreachable_proxy_is_a_transport_error_without_its_credentials(
    monkeypatch: pytest.MonkeyPatch, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with ForwardProxy() as gone:
        port = gone.port
    monkeypatch.setenv("HTTP_PROXY", f"http://user:hunter2@127.0.0.1:{port}")
    async with LiveClient(_http_api(emulator), CREDS) as client:
        with pytest.raises(TransportError) as caught:
            await client.fetch(BATCH)
    assert "hunter2" not in str(caught.value) and "hunter2" not in caplog.text
    assert emulator.stats()["total"]["requests_total"] == 0


async def test_a_proxy_refusing_the_credentials_is_an_error_without_them(
    monkeypatch: pytest.MonkeyPatch, emulator: EmulatorServer
) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            await _read_message(reader)
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for protocol in ("http", "https"):
            monkeypatch.setenv(f"{protocol}_proxy", f"http://user:hunter2@127.0.0.1:{port}")
            api = _http_api(emulator, protocol=protocol)
            async with LiveClient(api, CREDS) as client:
                with pytest.raises((MalformedResponse, TransportError)) as caught:  # 407
                    await client.fetch(BATCH)
            assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value)
    finally:
        server.close()
        await server.wait_closed()


async def test_netrc_credentials_are_not_added_to_api_requests(
    monkeypatch: pytest.MonkeyPatch, emulator: EmulatorServer, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("default login bob password hunter3\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    for signature in ("v3", "v1"):  # an added Authorization header breaks both signatures
        async with LiveClient(_http_api(emulator, signature=signature), CREDS) as client:
            await client.fetch(BATCH)


# -- check-config ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["aiohttp", "builtin"])
def test_check_config_says_which_proxy_applies_masked(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    transport: str,
) -> None:
    path = tmp_path / "poller.toml"
    path.write_text(
        f'[api]\ntransport = "{transport}"\n\n'
        '[[targets]]\napp_id = "a"\ngroup_id = "g"\nuids = ["u"]\n'
    )
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "key-secret")
    refused = 78 if transport == "builtin" else 0  # what `poller run` would do
    assert main(["check-config", str(path)]) == 0
    last = capsys.readouterr().out.rstrip("\n").rsplit("\n", 1)[-1]
    assert last == "# no proxy applies to https://live.aliyuncs.com/ (direct connection)"

    monkeypatch.setenv("HTTPS_PROXY", "http://user:hunter2@127.0.0.1:3128")
    assert main(["check-config", str(path)]) == refused
    out = capsys.readouterr().out
    last = out.rstrip("\n").rsplit("\n", 1)[-1]
    assert "hunter2" not in out
    assert last.startswith(
        "# proxy for https://live.aliyuncs.com/: http://user:****@127.0.0.1:3128"
    )
    assert ("REFUSE" in last) is (transport == "builtin")

    monkeypatch.setenv("NO_PROXY", ".aliyuncs.com")
    assert describe_proxy(ApiConfig()).startswith("no proxy applies")
