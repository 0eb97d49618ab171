"""Signature verification (all 15 SDK vectors), date window, nonces, STS, keys and RAM."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from poller.emulator import AccessKey, EmulatorServer, GroupSpec
from poller.emulator.accounts import NonceStore, parse_access_key, parse_sts_key
from poller.emulator.auth import parse_timestamp
from poller.wire import signing

from .conftest import (
    UUID_UPPER,
    FakeClock,
    MakeServer,
    assert_envelope,
    batch_params,
    call,
    date_of,
    send,
    send_raw,
    sign_v1,
    sign_v3,
)

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parents[1] / "data" / "signing-vectors.json").read_text("utf-8")
)["vectors"]
VECTOR_TIME = 1768465800.0  # 2026-01-15T08:30:00Z
PARAMS = batch_params(["user-000001", "user-000002"])


def test_vector_time_constant() -> None:
    assert parse_timestamp("2026-01-15T08:30:00Z") == VECTOR_TIME


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
async def test_every_sdk_vector_is_accepted_verbatim(
    make_server: MakeServer, session: aiohttp.ClientSession, vector: dict[str, Any]
) -> None:
    inputs = vector["inputs"]
    key = AccessKey(
        inputs["access_key_id"],
        inputs["access_key_secret"],
        security_token=inputs["security_token"],
    )
    server = await make_server(
        keys=(key,),
        groups=(GroupSpec(inputs["AppId"], inputs["GroupId"], 0),),
        wall_clock=FakeClock(VECTOR_TIME + 60),
    )
    request = vector["request"]
    raw_query = request["raw_query"]
    url = yarl.URL(f"{server.url}/" + (f"?{raw_query}" if raw_query else ""), encoded=True)
    headers = [
        (n, v) for n, v in request["headers"] if n.lower() not in ("content-length", "connection")
    ]
    async with session.post(
        url,
        data=bytes.fromhex(request["body_hex"]),
        headers=headers,
        skip_auto_headers=("Content-Type", "User-Agent", "Accept", "Accept-Encoding"),
    ) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 200, body
    assert [u["UserId"] for u in body["Result"]["OnlineUsers"]] == inputs["UserIds"].split(",")
    # The verbatim replay of the same request is then a replay.
    async with session.post(
        url,
        data=bytes.fromhex(request["body_hex"]),
        headers=headers,
        skip_auto_headers=("Content-Type", "User-Agent", "Accept", "Accept-Encoding"),
    ) as resp:
        assert (await resp.json(content_type=None))["Code"] == "SignatureNonceUsed"


async def test_success_headers(server: EmulatorServer, session: aiohttp.ClientSession) -> None:
    reply = await call(session, server, PARAMS)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json;charset=utf-8"
    assert UUID_UPPER.fullmatch(reply.headers["x-acs-request-id"])
    assert reply.json["RequestId"] == reply.headers["x-acs-request-id"]


def _sign_headers(
    headers: dict[str, str], body: bytes, signed_names: list[str], secret: str = "demo-secret"
) -> str:
    """An Authorization over exactly ``signed_names`` (in the given order, like Java does)."""
    signed = ";".join(signed_names)
    canonical = signing.v3_canonical_request(
        "POST",
        "/",
        "",
        signing.v3_canonical_headers(signed_names, lambda n: [headers[n]]),
        signed,
        hashlib.sha256(body).hexdigest(),
    )
    sig = signing.v3_signature(secret, signing.v3_string_to_sign(canonical))
    return f"ACS3-HMAC-SHA256 Credential=demo-key,SignedHeaders={signed},Signature={sig}"


def _minimal_headers(server: EmulatorServer, body: bytes) -> dict[str, str]:
    return {
        "host": server.endpoint,
        "x-acs-action": "BatchGetOnlineUsers",
        "x-acs-version": "2016-11-01",
        "x-acs-date": date_of(server),
        "x-acs-signature-nonce": signing.new_nonce(),
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
        "content-type": "application/x-www-form-urlencoded",
    }


@pytest.mark.parametrize(
    ("signed_names", "expected"),
    [
        # Go/Java style subset, Java's unsorted order: accepted.
        (
            [
                "x-acs-version",
                "host",
                "x-acs-action",
                "content-type",
                "x-acs-date",
                "x-acs-signature-nonce",
                "x-acs-content-sha256",
            ],
            "OK",
        ),
        (
            [
                "content-type",
                "x-acs-action",
                "x-acs-content-sha256",
                "x-acs-date",
                "x-acs-signature-nonce",
                "x-acs-version",
            ],
            "IncompleteSignature",
        ),  # no host
        (
            [
                "host",
                "x-acs-action",
                "x-acs-content-sha256",
                "x-acs-date",
                "x-acs-signature-nonce",
                "x-acs-version",
            ],
            "IncompleteSignature",
        ),  # no content-type
        (
            [
                "content-type",
                "host",
                "x-acs-action",
                "x-acs-content-sha256",
                "x-acs-signature-nonce",
                "x-acs-version",
            ],
            "IncompleteSignature",
        ),  # no x-acs-date
    ],
)
async def test_signed_header_policy(
    server: EmulatorServer,
    session: aiohttp.ClientSession,
    signed_names: list[str],
    expected: str,
) -> None:
    body = signing.form_encode(PARAMS).encode()
    headers = _minimal_headers(server, body)
    headers["Authorization"] = _sign_headers(headers, body, signed_names)
    reply = await send_raw(session, server, headers, body)
    assert reply.code == expected


async def test_unsigned_extra_acs_header_is_incomplete(
    server: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    reply = await send(session, server, sign_v3(server, PARAMS), headers={"x-acs-extra": "1"})
    assert_envelope(reply, "IncompleteSignature", 400)
    assert reply.json["Message"] == "The request signature does not conform to Aliyun standards."


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "garbage",
        "ACS3-HMAC-SHA256 Credential=demo-key",
        "HMAC-SHA1 Credential=a,SignedHeaders=host,Signature=x",
    ],
)
async def test_missing_or_malformed_authorization(
    server: EmulatorServer, session: aiohttp.ClientSession, authorization: str | None
) -> None:
    signed = sign_v3(server, PARAMS)
    headers = dict(signed.headers)
    del headers["Authorization"]
    if authorization is not None:
        headers["Authorization"] = authorization
    reply = await send_raw(session, server, headers, signed.body)
    assert_envelope(reply, "IncompleteSignature", 400)


async def test_wrong_content_sha256_is_signature_mismatch(
    server: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    body = signing.form_encode(PARAMS).encode()
    headers = _minimal_headers(server, body)
    headers["x-acs-content-sha256"] = hashlib.sha256(b"other").hexdigest()
    names = sorted(headers)
    signed = ";".join(names)
    canonical = signing.v3_canonical_request(
        "POST",
        "/",
        "",
        signing.v3_canonical_headers(names, lambda n: [headers[n]]),
        signed,
        headers["x-acs-content-sha256"],
    )
    sig = signing.v3_signature("demo-secret", signing.v3_string_to_sign(canonical))
    headers["Authorization"] = (
        f"ACS3-HMAC-SHA256 Credential=demo-key,SignedHeaders={signed},Signature={sig}"
    )
    reply = await send_raw(session, server, headers, body)
    assert_envelope(reply, "SignatureDoesNotMatch", 400)


async def test_mismatch_message_carries_server_string_to_sign(
    server: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    signed = sign_v3(server, PARAMS, creds=signing.SigningCredentials("demo-key", "wrong"))
    reply = await send(session, server, signed)
    message = reply.json["Message"]
    prefix = "Specified signature is not matched with our calculation. server string to sign is:"
    assert message.startswith(prefix)
    assert message[len(prefix) :].startswith("ACS3-HMAC-SHA256\n")
    signed_v1 = sign_v1(server, PARAMS, creds=signing.SigningCredentials("demo-key", "wrong"))
    reply = await send(session, server, signed_v1)
    assert reply.json["Message"].startswith(prefix + "POST&%2F&AccessKeyId%3Ddemo-key")


@pytest.mark.parametrize(
    ("offset_s", "code"),
    [
        (0, "OK"),
        (-14 * 60, "OK"),
        (14 * 60, "OK"),
        (-16 * 60, "InvalidTimeStamp.Expired"),
        (16 * 60, "InvalidTimeStamp.Expired"),
    ],
)
@pytest.mark.parametrize("v1", [False, True], ids=["v3", "v1"])
async def test_date_window(
    server: EmulatorServer, session: aiohttp.ClientSession, offset_s: int, code: str, v1: bool
) -> None:
    date = date_of(server, offset_s)
    signed = sign_v1(server, PARAMS, timestamp=date) if v1 else sign_v3(server, PARAMS, date=date)
    assert (await send(session, server, signed)).code == code


async def test_date_window_is_configurable(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await make_server(date_window_s=60)
    assert (await call(session, server, PARAMS, date=date_of(server, 59))).code == "OK"
    assert (await call(session, server, PARAMS, date=date_of(server, -61))).code == (
        "InvalidTimeStamp.Expired"
    )


@pytest.mark.parametrize(
    "date",
    [
        "2026-01-15 08:30:00",
        "2026-01-15T08:30:00",
        "2026-13-15T08:30:00Z",
        "2026-02-30T08:30:00Z",
        "1768465800",
        "2026-01-15T08:30:00+00:00",
    ],
)
async def test_bad_date_format(
    server: EmulatorServer, session: aiohttp.ClientSession, date: str
) -> None:
    reply = await call(session, server, PARAMS, date=date)
    assert_envelope(reply, "InvalidTimeStamp.Format", 400)


async def test_nonce_replay_and_expiry(
    server: EmulatorServer, session: aiohttp.ClientSession, wall: FakeClock
) -> None:
    signed = sign_v3(server, PARAMS, nonce="n-1")
    assert (await send(session, server, signed)).code == "OK"
    reply = await send(session, server, signed)
    assert_envelope(reply, "SignatureNonceUsed", 400)
    assert reply.json["Message"] == "Specified signature nonce was used already."
    # Another date, same nonce: still a replay while the first is remembered.
    wall.advance(60)
    assert (await call(session, server, PARAMS, nonce="n-1")).code == "SignatureNonceUsed"
    # Once the first request's date is out of the window, the nonce is forgotten.
    wall.advance(900)
    assert (await call(session, server, PARAMS, nonce="n-1")).code == "OK"


async def test_rejected_signature_does_not_consume_nonce(
    server: EmulatorServer, session: aiohttp.ClientSession
) -> None:
    signed = sign_v3(server, PARAMS, nonce="n-2")
    assert (await send(session, server, signed, body=b"AppId=x")).code == "SignatureDoesNotMatch"
    assert (await send(session, server, signed)).code == "OK"


async def test_nonces_are_per_key(make_server: MakeServer, session: aiohttp.ClientSession) -> None:
    other = signing.SigningCredentials("k2", "s2")
    server = await make_server(keys=(AccessKey("demo-key", "demo-secret"), AccessKey("k2", "s2")))
    assert (await call(session, server, PARAMS, nonce="same")).code == "OK"
    assert (await call(session, server, PARAMS, nonce="same", creds=other)).code == "OK"


def test_nonce_store_purges_and_is_bounded() -> None:
    store = NonceStore(capacity=3)
    for i in range(3):
        store.record("k", f"n{i}", expiry=100.0 + i, now=0.0)
    assert len(store) == 3 and store.is_used("k", "n0", now=50.0)
    store.record("k", "n3", expiry=200.0, now=50.0)  # full: the entry closest to expiry goes
    assert not store.is_used("k", "n0", now=50.0) and store.is_used("k", "n1", now=50.0)
    store.record("k", "n4", expiry=300.0, now=150.0)  # everything up to 150 purged
    assert len(store) == 2
    assert not store.is_used("k", "n3", now=201.0)


@pytest.mark.parametrize("v1", [False, True], ids=["v3", "v1"])
async def test_sts(make_server: MakeServer, session: aiohttp.ClientSession, v1: bool) -> None:
    server = await make_server(
        keys=(AccessKey("STS.x", "sx", security_token="tok"), AccessKey("demo-key", "demo-secret"))
    )
    sign = sign_v1 if v1 else sign_v3

    def creds(key: str, secret: str, token: str | None) -> signing.SigningCredentials:
        return signing.SigningCredentials(key, secret, token, "static_sts")

    assert (
        await send(session, server, sign(server, PARAMS, creds=creds("STS.x", "sx", "tok")))
    ).code == "OK"
    for key, secret, token, code in [
        ("STS.x", "sx", None, "MissingSecurityToken"),
        ("STS.x", "sx", "tok2", "InvalidSecurityToken.MismatchWithAccessKey"),
        ("demo-key", "demo-secret", "tok", "InvalidSecurityToken.MismatchWithAccessKey"),
    ]:
        reply = await send(session, server, sign(server, PARAMS, creds=creds(key, secret, token)))
        assert_envelope(reply, code, 400)


async def test_accesskey_id_header_must_match_credential(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await make_server(keys=(AccessKey("STS.x", "sx", security_token="tok"),))
    creds = signing.SigningCredentials("STS.x", "sx", "tok", "static_sts")
    signed = sign_v3(server, PARAMS, creds=creds)
    signed.headers["x-acs-accesskey-id"] = "STS.other"  # signature no longer matters
    reply = await send(session, server, signed)
    assert reply.code == "InvalidSecurityToken.MismatchWithAccessKey"


async def test_unknown_key(server: EmulatorServer, session: aiohttp.ClientSession) -> None:
    for sign in (sign_v3, sign_v1):
        reply = await send(
            session, server, sign(server, PARAMS, creds=signing.SigningCredentials("nope", "x"))
        )
        assert_envelope(reply, "InvalidAccessKeyId.NotFound", 404)
        assert reply.json["Message"] == "Specified access key is not found."


async def test_v1_specifics(server: EmulatorServer, session: aiohttp.ClientSession) -> None:
    signed = sign_v1(server, PARAMS)
    reply = await send(session, server, signed, headers={"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="})
    assert (reply.status, reply.code) == (400, "ContentMD5NotMatched")
    md5 = __import__("base64").b64encode(hashlib.md5(signed.body).digest()).decode()
    assert (await send(session, server, signed, headers={"Content-MD5": md5})).code == "OK"
    # Missing and wrong common parameters.
    query = signed.query.replace("Timestamp=", "X=")
    no_ts = signing.SignedRequest(query, signed.headers, signed.body)
    reply = await send(session, server, no_ts)
    assert reply.code == "MissingParameter" and '"Timestamp"' in reply.json["Message"]
    wrong = signing.SignedRequest(
        signed.query.replace("HMAC-SHA1", "HMAC-SHA256"), signed.headers, signed.body
    )
    assert (await send(session, server, wrong)).code == "IncompleteSignature"


async def test_ram_app_grants_and_accounts(
    make_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await make_server(
        keys=(parse_access_key("k1:s1:app1,app2"), parse_access_key("k2:s2@acct2")),
        groups=(GroupSpec("app1", "g", 1), GroupSpec("app3", "g", 1)),
    )
    k1, k2 = signing.SigningCredentials("k1", "s1"), signing.SigningCredentials("k2", "s2")
    assert (await call(session, server, batch_params(["u"], "app1", "g"), creds=k1)).code == "OK"
    reply = await call(session, server, batch_params(["u"], "app3", "g"), creds=k1)
    assert_envelope(reply, "Forbidden", 403)
    assert reply.json["Message"] == "User not authorized to operate on the specified resource."
    assert (await call(session, server, batch_params(["u"], "app3", "g"), creds=k2)).code == "OK"
    stats = server.stats()
    assert stats["accounts"]["default"]["responses_by_code"] == {"OK": 1, "Forbidden": 1}
    assert stats["accounts"]["acct2"]["responses_by_code"] == {"OK": 1}


def test_key_specs() -> None:
    key = parse_access_key("k2:s2:app1@acct2")
    assert (key.key_id, key.secret, key.apps, key.account) == (
        "k2",
        "s2",
        frozenset({"app1"}),
        "acct2",
    )
    assert parse_access_key("a:b").apps is None
    sts = parse_sts_key("STS.a:b:tok:app1,app2@x")
    assert (sts.security_token, sts.apps, sts.account) == ("tok", frozenset({"app1", "app2"}), "x")
    for bad in ("nosecret", "a:b:c:d", ":b", "a:b@", "a:b:", "k:TOPSECRET:"):
        with pytest.raises(ValueError) as info:
            parse_access_key(bad)
        assert "TOPSECRET" not in str(info.value)
    assert "s2" not in repr(key) and "tok" not in repr(sts)
