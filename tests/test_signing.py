"""Signing against the vectors captured from the official SDKs, in both directions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poller.wire import signing

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "signing-vectors.json").read_text("utf-8")
)["vectors"]
V3 = [v for v in VECTORS if v["kind"] == "V3"]
V1 = [v for v in VECTORS if v["kind"] == "V1"]


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["id"] for v in vectors]


def _creds(v: dict[str, Any], provider: str | None = None) -> signing.SigningCredentials:
    inp = v["inputs"]
    token = inp["security_token"]
    return signing.SigningCredentials(
        access_key_id=inp["access_key_id"],
        access_key_secret=inp["access_key_secret"],
        security_token=token,
        provider_name=provider or ("static_sts" if token else "static_ak"),
    )


def _params(v: dict[str, Any]) -> dict[str, str]:
    inp = v["inputs"]
    return {"AppId": inp["AppId"], "GroupId": inp["GroupId"], "UserIds": inp["UserIds"]}


def _header(v: dict[str, Any], name: str) -> str:
    return str(next(val for n, val in v["request"]["headers"] if n.lower() == name))


def test_all_fifteen_vectors_present() -> None:
    assert len(V3) == 8 and len(V1) == 7


@pytest.mark.parametrize("vector", V3, ids=_ids(V3))
def test_v3_vector_reproduced_byte_for_byte(vector: dict[str, Any]) -> None:
    signed = signing.sign_v3(
        credentials=_creds(vector, _header(vector, "x-acs-credentials-provider")),
        host=_header(vector, "host"),
        action="BatchGetOnlineUsers",
        params=_params(vector),
        date=vector["inputs"]["x-acs-date"],
        nonce=vector["inputs"]["x-acs-signature-nonce"],
        user_agent=_header(vector, "user-agent"),
    )
    assert signed.body.decode() == vector["request"]["body_utf8"]
    assert signed.headers["x-acs-content-sha256"] == vector["expected"]["hashed_payload"]
    assert signed.headers["Authorization"] == vector["expected"]["authorization"]
    # Same headers, same order as the SDK put them on the wire (minus transport-added ones).
    sdk_order = [
        n for n, _ in vector["request"]["headers"] if n not in ("Accept-Encoding", "Content-Length")
    ]
    assert list(signed.headers) == sdk_order
    assert signed.query == ""


@pytest.mark.parametrize("vector", V3, ids=_ids(V3))
def test_v3_verifier_accepts_the_sdk_request(vector: dict[str, Any]) -> None:
    headers = vector["request"]["headers"]
    auth = signing.parse_v3_authorization(_header(vector, "authorization"))
    assert auth is not None
    assert auth.credential == vector["inputs"]["access_key_id"]

    def values(name: str) -> list[str]:
        return [v for n, v in headers if n.lower() == name]

    signature, string_to_sign = signing.v3_signature_for(
        secret="testsecret",
        method="POST",
        pathname="/",
        query={},
        signed_headers=auth.signed_headers,
        get_header_values=values,
        hashed_payload=_header(vector, "x-acs-content-sha256"),
    )
    assert string_to_sign == vector["expected"]["string_to_sign"]
    assert signature == auth.signature == vector["expected"]["signature"]
    wrong, _ = signing.v3_signature_for(
        secret="not-the-secret",
        method="POST",
        pathname="/",
        query={},
        signed_headers=auth.signed_headers,
        get_header_values=values,
        hashed_payload=_header(vector, "x-acs-content-sha256"),
    )
    assert wrong != auth.signature


def test_v3_canonical_request_matches_vector() -> None:
    v = V3[0]
    exp = v["expected"]
    headers = dict(v["request"]["headers"])
    names = exp["signed_headers"].split(";")
    canonical_headers = signing.v3_canonical_headers(names, lambda n: [headers[n]])
    assert canonical_headers == exp["canonical_headers"]
    canonical = signing.v3_canonical_request(
        "POST", "/", "", canonical_headers, exp["signed_headers"], exp["hashed_payload"]
    )
    assert canonical == exp["canonical_request"]


@pytest.mark.parametrize("vector", V1, ids=_ids(V1))
def test_v1_vector_string_to_sign_and_signature(vector: dict[str, Any]) -> None:
    exp = vector["expected"]
    assert signing.v1_canonicalized(exp["signed_params"]) == exp["canonicalized_query_string"]
    signature, string_to_sign = signing.v1_signature_for(
        secret="testsecret", method="POST", params=exp["signed_params"]
    )
    assert string_to_sign == exp["string_to_sign"]
    assert signature == exp["signature"]


@pytest.mark.parametrize("vector", V1, ids=_ids(V1))
def test_v1_verifier_from_raw_wire_query(vector: dict[str, Any]) -> None:
    """Decode the query exactly as it crossed the wire, merge the form body, re-sign."""
    req = vector["request"]
    params = dict(parse_qsl(req["raw_query"], keep_blank_values=True))
    params.update(parse_qsl(req["body_utf8"], keep_blank_values=True))
    received = params.pop("Signature")
    signature, _ = signing.v1_signature_for(secret="testsecret", method="POST", params=params)
    assert signature == received == vector["expected"]["signature"]


@pytest.mark.parametrize("vector", [v for v in V1 if v["id"].startswith("v1-tea")])
def test_v1_tea_request_reproduced(vector: dict[str, Any]) -> None:
    inp = vector["inputs"]
    signed = signing.sign_v1(
        credentials=_creds(vector),
        host="live.aliyuncs.com",
        action="BatchGetOnlineUsers",
        params=_params(vector),
        timestamp=inp["Timestamp"],
        nonce=inp["SignatureNonce"],
    )
    assert signed.body.decode() == vector["request"]["body_utf8"]
    sent = dict(parse_qsl(signed.query, keep_blank_values=True))
    assert sent == vector["request"]["query"]
    assert list(sent) == list(vector["request"]["query"])  # SDK parameter order


def test_form_and_signature_encodings_differ_on_space() -> None:
    assert signing.form_encode({"UserIds": "e f,g+h"}) == "UserIds=e+f%2Cg%2Bh"
    assert signing.percent_encode("e f,g+h~*") == "e%20f%2Cg%2Bh~%2A"


def test_parse_v3_authorization_rejects_garbage() -> None:
    assert signing.parse_v3_authorization("") is None
    assert signing.parse_v3_authorization("ACS3-HMAC-SHA256") is None
    assert signing.parse_v3_authorization("ACS3-HMAC-SHA256 Credential=a,Signature=b") is None
    ok = signing.parse_v3_authorization(
        "ACS3-HMAC-SHA256 Credential=a, SignedHeaders=host;x-acs-date, Signature=c"
    )
    assert ok is not None and ok.signed_header_names == ["host", "x-acs-date"]


def test_secrets_not_in_reprs() -> None:
    creds = signing.SigningCredentials("id", "very-secret", "sts-token-value")
    assert "very-secret" not in repr(creds) and "sts-token-value" not in repr(creds)
    signed = signing.sign_v3(
        credentials=creds, host="h", action="A", params={}, date="d", nonce="n"
    )
    assert "Signature" not in repr(signed)


def test_nonces_are_fresh_hex() -> None:
    nonces = {signing.new_nonce() for _ in range(1000)}
    assert len(nonces) == 1000
    assert all(len(n) == 32 and int(n, 16) >= 0 for n in nonces)


@given(
    uids=st.lists(
        st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20),
        min_size=1,
        max_size=20,
    )
)
def test_v3_round_trip_through_form_decoding(uids: list[str]) -> None:
    """Whatever the IDs, a server that form-decodes the body re-derives the same signature."""
    creds = signing.SigningCredentials("id", "secret")
    params = {"AppId": "a", "GroupId": "g", "UserIds": ",".join(uids)}
    signed = signing.sign_v3(
        credentials=creds, host="h:1", action="A", params=params, date="d", nonce="n"
    )
    decoded = dict(parse_qsl(signed.body.decode(), keep_blank_values=True))
    assert decoded == params
    auth = signing.parse_v3_authorization(signed.headers["Authorization"])
    assert auth is not None
    sig, _ = signing.v3_signature_for(
        secret="secret",
        method="POST",
        pathname="/",
        query={},
        signed_headers=auth.signed_headers,
        get_header_values=lambda n: [signed.headers[n]],
        hashed_payload=signed.headers["x-acs-content-sha256"],
    )
    assert sig == auth.signature


@given(
    st.text(alphabet=st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(",~-._ ")))
)
def test_fast_encoders_match_urllib(value: str) -> None:
    from urllib.parse import quote, quote_plus

    assert signing.percent_encode(value) == quote(value, safe="~")
    assert signing.form_encode({"k": value}) == f"k={quote_plus(value, safe='')}"
