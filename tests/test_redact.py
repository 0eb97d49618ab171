"""Secrets are scrubbed by value: from errors, records and logs, whatever text surrounds them."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Literal
from urllib.parse import quote, quote_plus

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from poller.apps import logs
from poller.apps.logs import REDACTION, JsonFormatter, RedactingFilter, install_redactor, log_event
from poller.config import ApiConfig, PollerConfig, RetryConfig
from poller.core.errors import AuthError, MalformedResponse, TransportError
from poller.core.records import Batch, Target
from poller.core.redact import MASK, Redactor
from poller.wire.answers import transport_error
from poller.wire.client import LiveClient
from poller.wire.signing import SigningCredentials, parse_v3_authorization

SECRET = "s3cr3t/VALUE+that=must not leak"
TOKEN = "CAIS-sts/TOKEN+that=must&not=leak"
KEY_ID = "key-id-visible"

Signature = Literal["v1", "v3"]
Spelling = Callable[[str], str]


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def _echo_string_to_sign(sig: str) -> str:
    sts = f"POST&%2F&AccessKeyId%3D{KEY_ID}%26SecurityToken%3D{quote(quote(TOKEN, safe=''))}"
    return (
        f"Specified signature is not matched with our calculation. server string to sign is:{sts}"
    )


#: How a server (or a gateway) may echo what it signed: none of it may come through.
SPELLINGS: dict[str, Spelling] = {
    "server string to sign": _echo_string_to_sign,
    "canonical query, double-encoded": lambda sig: (
        f"canonicalized: POST&%2F&SecurityToken%3D{quote(quote(TOKEN, safe=''), safe='')}"
        f"%26Signature%3D{quote(quote(sig, safe=''), safe='')}"
    ),
    "StringToSign colon": lambda sig: (
        f"StringToSign: POST&/&AccessKeyId={KEY_ID}&SecurityToken={TOKEN}&Signature={sig}"
    ),
    "string-to-sign quoted": lambda sig: (
        f"signature {sig} mismatch; string-to-sign is 'POST&/&SecurityToken={TOKEN}' "
        f"(key secret {SECRET!r})"
    ),
    "JSON-escaped": lambda sig: (
        "details: "
        + json.dumps({"SecurityToken": TOKEN, "Secret": SECRET, "Signature": sig}).replace(
            "/", "\\/"
        )
    ),
    "URL-encoded": lambda sig: (
        f"expected {quote(sig, safe='')} for SecurityToken={quote(TOKEN, safe='')}"
        f"&secret={quote_plus(SECRET, safe='')}&lower={_lower_hex(quote(TOKEN, safe=''))}"
    ),
}


def _leaks(text: str, signatures: list[str]) -> list[str]:
    """The secrets, or forms of them, found in ``text``."""
    found = []
    for value in (SECRET, TOKEN, *signatures):
        twice = quote(quote(value, safe=""), safe="")
        for form in (value, quote(value, safe=""), quote_plus(value, safe=""), twice):
            if form in text or _lower_hex(form) in text or json.dumps(value)[1:-1] in text:
                found.append(form)
    for fragment in ("s3cr3t", "sts/TOKEN", "sts%2FTOKEN", "sts%2fTOKEN", "sts\\/TOKEN"):
        if fragment in text:
            found.append(fragment)
    return found


# -- the Redactor ------------------------------------------------------------------------------


def test_plain_values_are_replaced_wherever_they_are() -> None:
    r = Redactor(["abcdef123", None, ""])
    assert r.scrub("x=abcdef123&y=abcdef123!") == f"x={MASK}&y={MASK}!"
    assert r.scrub("nothing here") == "nothing here"
    assert bool(r) and not Redactor() and not Redactor([None, ""])


def test_url_encoded_and_json_escaped_forms_are_replaced() -> None:
    r = Redactor([TOKEN])
    for form in (
        quote(TOKEN, safe=""),
        quote_plus(TOKEN, safe=""),
        _lower_hex(quote(TOKEN, safe="")),
        json.dumps(TOKEN)[1:-1].replace("/", "\\/"),
    ):
        assert form != TOKEN
        assert r.scrub(f"<{form}>") == f"<{MASK}>"


def test_several_secrets_and_a_request_signature() -> None:
    r = Redactor([SECRET, TOKEN]).with_secrets("SIGNATURE-value+/=")
    text = f"a {SECRET} b {TOKEN} c SIGNATURE-value+/= d {quote(SECRET, safe='')}"
    assert r.scrub(text) == f"a {MASK} b {MASK} c {MASK} d {MASK}"
    merged = Redactor(["first-secret"]).with_redactor(Redactor(["second-secret"]))
    assert merged.scrub("first-secret second-secret") == f"{MASK} {MASK}"


def test_short_values_are_ignored() -> None:
    r = Redactor(["a", "ab", "12345"])
    assert not r
    assert r.scrub("a b ab 12345") == "a b ab 12345"
    assert Redactor(["123456"]).scrub("x123456x") == f"x{MASK}x"


# -- the client, against a server that echoes what it signed ------------------------------------


def _signature_of(request: web.Request) -> str:
    auth = request.headers.get("Authorization")
    if auth is not None:
        parsed = parse_v3_authorization(auth)
        assert parsed is not None
        return parsed.signature
    return request.query["Signature"]


class _EchoServer:
    def __init__(self) -> None:
        self.spelling: Spelling = _echo_string_to_sign
        self.signatures: list[str] = []
        self.not_json = False

    async def handle(self, request: web.Request) -> web.Response:
        sig = _signature_of(request)
        self.signatures.append(sig)
        message = self.spelling(sig)
        if self.not_json:
            return web.Response(status=400, text=f"<html>{message}</html>")
        body = {"RequestId": "req-1", "Code": "SignatureDoesNotMatch", "Message": message}
        return web.json_response(body, status=400)


@pytest.fixture
async def echo() -> AsyncIterator[tuple[_EchoServer, str]]:
    server = _EchoServer()
    app = web.Application()
    app.router.add_post("/", server.handle)
    async with TestServer(app, host="127.0.0.1") as test_server:
        yield server, f"127.0.0.1:{test_server.port}"


def _api(endpoint: str, signature: Signature, transport: str = "builtin") -> ApiConfig:
    return ApiConfig(
        endpoint=endpoint,
        protocol="http",
        signature=signature,
        timeout_s=2.0,
        transport=transport,  # type: ignore[arg-type]
    )


def _creds() -> SigningCredentials:
    return SigningCredentials(KEY_ID, SECRET, TOKEN)


@pytest.mark.parametrize("transport", ["builtin", "aiohttp"])
@pytest.mark.parametrize("signature", ["v1", "v3"])
@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
async def test_error_messages_hold_no_secret_token_or_signature(
    echo: tuple[_EchoServer, str], spelling: str, signature: Signature, transport: str
) -> None:
    server, endpoint = echo
    server.spelling = SPELLINGS[spelling]
    async with LiveClient(_api(endpoint, signature, transport), _creds()) as client:
        with pytest.raises(AuthError) as caught:
            await client.fetch(Batch(Target("a", "g"), ("u1",)))
    [sig] = server.signatures
    raw = server.spelling(sig)
    assert _leaks(raw, [sig])  # the server did echo them
    for text in (str(caught.value), caught.value.message, repr(caught.value)):
        assert _leaks(text, [sig]) == [], text
    assert caught.value.code == "SignatureDoesNotMatch"
    # The usual spelling is also cut short; every other one is scrubbed where the values were.
    assert spelling == "server string to sign" or MASK in str(caught.value)


@pytest.mark.parametrize("signature", ["v1", "v3"])
async def test_a_non_json_answer_echoing_secrets_is_scrubbed(
    echo: tuple[_EchoServer, str], signature: Signature
) -> None:
    server, endpoint = echo
    server.not_json = True
    server.spelling = lambda sig: f"{SECRET} {TOKEN} {sig}"  # the start of the snippet
    async with LiveClient(_api(endpoint, signature), _creds()) as client:
        with pytest.raises(MalformedResponse) as caught:
            await client.fetch(Batch(Target("a", "g"), ("u1",)))
    assert _leaks(str(caught.value), server.signatures) == []


def test_transport_error_descriptions_are_scrubbed() -> None:
    scrub = Redactor([SECRET, TOKEN]).scrub
    err = transport_error(OSError(f"proxy said: token {quote(TOKEN, safe='')}"), "h", scrub)
    assert type(err) is TransportError and _leaks(str(err), []) == []


@pytest.mark.parametrize("signature", ["v1", "v3"])
@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
async def test_records_and_logs_of_a_sweep_hold_no_secret(
    echo: tuple[_EchoServer, str],
    caplog: pytest.LogCaptureFixture,
    spelling: str,
    signature: Signature,
) -> None:
    from poller.engine.poller import Poller

    server, endpoint = echo
    server.spelling = SPELLINGS[spelling]
    config = PollerConfig(api=_api(endpoint, signature), retry=RetryConfig(max_attempts=2))
    records = []
    caplog.set_level(logging.DEBUG)
    async with Poller(config, credentials=_creds()) as poller:
        with pytest.raises(AuthError):
            async for record in poller.sweep(Target("a", "g"), ["u1", "u2"]):
                records.append(record)
    assert records and all(r.get("code") == "SignatureDoesNotMatch" for r in records)
    ours = [r for r in caplog.records if r.name.startswith("poller")]  # not the test server's
    text = orjson.dumps(records).decode() + "\n".join(r.getMessage() for r in ours)
    assert "stopping the sweep" in text
    assert _leaks(text, server.signatures) == [], text


# -- the log filter -----------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """A JSON handler on the root logger; the process filter is reset afterwards."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    before = REDACTION.redactor
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for h in root.handlers:
            h.removeFilter(REDACTION)
        REDACTION.redactor = before


def test_the_log_filter_scrubs_messages_fields_and_tracebacks(json_log: io.StringIO) -> None:
    log = logging.getLogger("poller.test_redact")
    install_redactor(LiveClient(ApiConfig(), _creds()).redactor)
    log.warning("rejected: %s", f"SecurityToken={TOKEN}")
    log_event(
        log,
        logging.ERROR,
        f"echo {quote(SECRET, safe='')}",
        error=f"StringToSign: {TOKEN}",
        count=3,
        nested=None,
    )
    try:
        raise RuntimeError(f"secret was {SECRET}")
    except RuntimeError:
        log.exception("failed")
    lines = [orjson.loads(line) for line in json_log.getvalue().splitlines()]
    assert [e["event"] for e in lines] == [
        f"rejected: SecurityToken={MASK}",
        f"echo {MASK}",
        "failed",
    ]
    assert lines[1]["error"] == f"StringToSign: {MASK}" and lines[1]["count"] == 3
    assert "RuntimeError: secret was ****" in lines[2]["exception"]
    assert _leaks(json_log.getvalue(), []) == []


def test_install_keeps_earlier_secrets_and_a_filter_without_secrets_is_inert(
    json_log: io.StringIO,
) -> None:
    log = logging.getLogger("poller.test_redact")
    install_redactor(Redactor(["old-secret-1"]))
    install_redactor(Redactor(["new-secret-2"]))
    install_redactor(None)
    log.warning("%s %s", "old-secret-1", "new-secret-2")
    assert orjson.loads(json_log.getvalue())["event"] == f"{MASK} {MASK}"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain %s", ("text",), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "plain text"
    assert logs.REDACTION is REDACTION
