"""The emulator's hot-path shortcuts are exactly equivalent to the reference implementations."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from poller.emulator.auth import _parse_authorization, v3_expected_signature
from poller.emulator.errors import ApiError, RequestIds, new_request_id
from poller.emulator.server import _decode_form
from poller.wire import signing

UUID_UPPER = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}")
header_names = st.sampled_from(
    ["host", "x-acs-date", "x-acs-action", "content-type", "accept", "user-agent", "x-custom"]
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
query_values = st.text(max_size=8)


@given(
    headers=st.lists(st.tuples(header_names, header_values), max_size=10),
    signed=st.lists(header_names, min_size=1, max_size=6),
    query=st.dictionaries(st.sampled_from(["AppId", "a", "Z", "x y"]), query_values, max_size=3),
    method=st.sampled_from(["POST", "GET", "post"]),
)
def test_v3_expected_signature_equals_signing_module(
    headers: list[tuple[str, str]], signed: list[str], query: dict[str, str], method: str
) -> None:
    multi = CIMultiDictProxy(CIMultiDict(headers))
    signed_headers = ";".join(signed)
    reference = signing.v3_signature_for(
        secret="sëcret",
        method=method,
        pathname="/",
        query=query,
        signed_headers=signed_headers,
        get_header_values=lambda n: multi.getall(n, []),
        hashed_payload="abc",
    )
    fast = v3_expected_signature(
        secret="sëcret",
        method=method,
        query=query,
        signed_headers=signed_headers,
        headers=multi,
        hashed_payload="abc",
    )
    assert fast == reference


@given(
    st.text(st.sampled_from("ACS3-HMAC-SHA256 Credential=SignedHeaders;,= ab"), max_size=60),
    st.text(st.sampled_from("0123456789abcdef, ="), max_size=8),
)
def test_authorization_memo_equals_full_parse(head: str, signature: str) -> None:
    for sig in (signature, "deadbeef", signature):  # second and third calls hit the memo
        value = f"{head},Signature={sig}"
        assert _parse_authorization(value) == signing.parse_v3_authorization(value)
    assert _parse_authorization(head) == signing.parse_v3_authorization(head)


@given(st.text(st.sampled_from("ab=&+%2C4E7GZé用 ~"), max_size=40))
def test_form_decoder_equals_parse_qsl(text: str) -> None:
    try:
        expected = dict(parse_qsl(text, keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        with pytest.raises(ApiError):
            _decode_form(text, "body")
        return
    assert _decode_form(text, "body") == expected
    assert _decode_form(text.encode(), "body") == expected


def test_form_decoder_examples() -> None:
    body = signing.form_encode({"UserIds": "用户1,a~b,c*d,e f,g+h,i/j,k=l", "AppId": "x%y"})
    assert _decode_form(body, "body") == {
        "UserIds": "用户1,a~b,c*d,e f,g+h,i/j,k=l",
        "AppId": "x%y",
    }
    with pytest.raises(ApiError) as info:
        _decode_form(b"UserIds=%FF", "body")
    assert info.value.code == "InvalidParameter"
    with pytest.raises(ApiError):
        _decode_form(b"\xff=1", "body")


def test_request_ids() -> None:
    ids = RequestIds()
    many = [ids() for _ in range(1000)]
    assert len(set(many)) == 1000 and all(UUID_UPPER.fullmatch(i) for i in many)
    assert RequestIds()()[:24] != ids()[:24]
    assert UUID_UPPER.fullmatch(new_request_id())
