"""Alibaba Cloud RPC request signing, both directions, with no I/O and no clock.

Two schemes are implemented exactly as the official Python SDK puts them on the wire:

* **V3** (``ACS3-HMAC-SHA256``, the SDK default): headers carry the date, nonce and body hash;
  every header present at signing time is signed; ``Authorization`` carries the result::

      CanonicalRequest = METHOD, URI, Query, Headers ("name:value" lines), SignedHeaders,
                         sha256(body) -- joined by newlines
      Signature        = hex(HMAC-SHA256(secret, "ACS3-HMAC-SHA256" NL hex(sha256(Canonical...))))

* **V1** (``HMAC-SHA1``, ``SignatureVersion=1.0``): the common parameters travel in the query,
  the signature covers query and form body together::

      StringToSign = METHOD & %2F & pe(join("&", pe(k)=pe(v) for sorted params))
      Signature    = base64(HMAC-SHA1(secret + "&", StringToSign))

The body is always a form (``application/x-www-form-urlencoded``) encoded like Python's
``urlencode`` (space becomes ``+``), while both signatures use RFC 3986 (space becomes ``%20``).

Callers supply the date and nonce (:func:`format_timestamp`, :func:`new_nonce` help), so every
function here is deterministic. The verification half (:func:`parse_v3_authorization`,
:func:`v3_signature_for`, :func:`v1_signature_for`) is what the emulator uses; it recomputes from
the request's own ``SignedHeaders`` list, so SDKs that sign different header subsets all verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final
from urllib.parse import quote, quote_plus

__all__ = [
    "API_VERSION",
    "DEFAULT_USER_AGENT",
    "V1_SIGNATURE_METHOD",
    "V3_ALGORITHM",
    "SignedRequest",
    "SigningCredentials",
    "V3Authorization",
    "canonical_query_string",
    "form_encode",
    "format_timestamp",
    "new_nonce",
    "parse_v3_authorization",
    "percent_encode",
    "sign_v1",
    "sign_v3",
    "timestamp_at",
    "v1_canonicalized",
    "v1_signature",
    "v1_signature_for",
    "v1_string_to_sign",
    "v3_canonical_headers",
    "v3_canonical_request",
    "v3_signature",
    "v3_signature_for",
    "v3_string_to_sign",
]

API_VERSION: Final = "2016-11-01"
V3_ALGORITHM: Final = "ACS3-HMAC-SHA256"
V1_SIGNATURE_METHOD: Final = "HMAC-SHA1"
V1_SIGNATURE_VERSION: Final = "1.0"
FORM_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"
DEFAULT_USER_AGENT: Final = "poller/0.1 (+asyncio; aiohttp)"
TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True, slots=True)
class SigningCredentials:
    """What signing needs from a credential. The secret and token never appear in ``repr``."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)
    provider_name: str = "static_ak"


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request ready to send: ``POST /`` plus ``query`` (already encoded), headers and body."""

    query: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)


# Values made only of unreserved characters and commas (the common case: ASCII user IDs joined
# by ",") are encoded without the per-character work of urllib.
_UNRESERVED_OR_COMMA = re.compile(r"[A-Za-z0-9_.~,-]*")


def percent_encode(value: str) -> str:
    """RFC 3986 percent-encoding of UTF-8: keep ``A-Za-z0-9-_.~``, upper-case hex for the rest."""
    if _UNRESERVED_OR_COMMA.fullmatch(value):
        return value.replace(",", "%2C")
    return quote(value, safe="~")


def _form_quote(value: str) -> str:
    if _UNRESERVED_OR_COMMA.fullmatch(value):
        return value.replace(",", "%2C")
    return quote_plus(value, safe="")


def form_encode(params: Mapping[str, str]) -> str:
    """The SDK's form body: keys sorted, ``quote_plus`` encoding (space becomes ``+``)."""
    return "&".join(f"{_form_quote(k)}={_form_quote(v)}" for k, v in sorted(params.items()))


def format_timestamp(moment: datetime) -> str:
    """``x-acs-date`` / ``Timestamp`` format: UTC, second precision, literal ``Z``."""
    if moment.tzinfo is not None:
        offset = moment.utcoffset()
        if offset:
            moment = moment - offset
    return moment.strftime(TIMESTAMP_FORMAT)


_last_second: list[tuple[int, str]] = [(-1, "")]


def timestamp_at(epoch_s: float) -> str:
    """:func:`format_timestamp` of an epoch time; formats once per second (a hot path)."""
    second = int(epoch_s)
    cached = _last_second[0]
    if cached[0] == second:
        return cached[1]
    text = time.strftime(TIMESTAMP_FORMAT, time.gmtime(second))
    _last_second[0] = (second, text)
    return text


def new_nonce() -> str:
    """A fresh 32-hex-character nonce (128 random bits), the shape the SDK sends."""
    return secrets.token_hex(16)


# --------------------------------------------------------------------------------------------
# V3


def canonical_query_string(query: Mapping[str, str]) -> str:
    """V3 canonical query: sorted keys, values RFC 3986 encoded, keys left as they are."""
    return "&".join(f"{k}={percent_encode(v)}" for k, v in sorted(query.items()))


def v3_canonical_headers(
    signed_header_names: Iterable[str], get_values: Callable[[str], list[str]]
) -> str:
    """``name:value\\n`` for each signed header, names sorted; repeated headers joined by ``,``."""
    lines = []
    for name in sorted(signed_header_names):
        values = get_values(name)
        if len(values) == 1:  # the usual case: nothing to sort or join
            lines.append(f"{name}:{values[0].strip()}\n")
        else:
            lines.append(f"{name}:{','.join(sorted(v.strip() for v in values))}\n")
    return "".join(lines)


def v3_canonical_request(
    method: str,
    pathname: str,
    canonical_query: str,
    canonical_headers: str,
    signed_headers: str,
    hashed_payload: str,
) -> str:
    return "\n".join(
        (
            method.upper(),
            pathname or "/",
            canonical_query,
            canonical_headers,
            signed_headers,
            hashed_payload,
        )
    )


def v3_string_to_sign(canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    return f"{V3_ALGORITHM}\n{digest}"


def v3_signature(secret: str, string_to_sign: str) -> str:
    return hmac.new(
        secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def sign_v3(
    *,
    credentials: SigningCredentials,
    host: str,
    action: str,
    params: Mapping[str, str],
    date: str,
    nonce: str,
    version: str = API_VERSION,
    user_agent: str = DEFAULT_USER_AGENT,
    extra_headers: Mapping[str, str] | None = None,
) -> SignedRequest:
    """Build a V3-signed RPC POST with the parameters in a form body.

    The header set and its order mirror the official SDK, so a request built from a vector's
    inputs reproduces the vector's ``Authorization`` byte for byte.
    """
    body = form_encode(params).encode("utf-8")
    hashed_payload = hashlib.sha256(body).hexdigest()
    headers: dict[str, str] = {
        "host": host,
        "x-acs-version": version,
        "x-acs-action": action,
        "user-agent": user_agent,
        "x-acs-date": date,
        "x-acs-signature-nonce": nonce,
        "accept": "application/json",
    }
    if extra_headers:
        headers.update({k.lower(): v for k, v in extra_headers.items()})
    headers["content-type"] = FORM_CONTENT_TYPE
    headers["x-acs-content-sha256"] = hashed_payload
    headers["x-acs-credentials-provider"] = credentials.provider_name
    if credentials.security_token:
        headers["x-acs-accesskey-id"] = credentials.access_key_id
        headers["x-acs-security-token"] = credentials.security_token
    names = sorted(headers)
    signed_headers = ";".join(names)
    canonical = v3_canonical_request(
        "POST",
        "/",
        "",
        v3_canonical_headers(names, lambda n: [headers[n]]),
        signed_headers,
        hashed_payload,
    )
    signature = v3_signature(credentials.access_key_secret, v3_string_to_sign(canonical))
    headers["Authorization"] = (
        f"{V3_ALGORITHM} Credential={credentials.access_key_id},"
        f"SignedHeaders={signed_headers},Signature={signature}"
    )
    return SignedRequest(query="", headers=headers, body=body)


@dataclass(frozen=True, slots=True)
class V3Authorization:
    """The parts of a V3 ``Authorization`` header."""

    algorithm: str
    credential: str
    signed_headers: str
    signature: str = field(repr=False)

    @property
    def signed_header_names(self) -> list[str]:
        return [h.strip().lower() for h in self.signed_headers.split(";") if h.strip()]


def parse_v3_authorization(value: str) -> V3Authorization | None:
    """Split ``ACS3-HMAC-SHA256 Credential=..,SignedHeaders=..,Signature=..`` (``None``: malformed).

    Optional spaces after the commas are tolerated.
    """
    algorithm, sep, rest = value.strip().partition(" ")
    if not sep or not algorithm:
        return None
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, eq, val = item.strip().partition("=")
        if not eq:
            return None
        parts[key] = val.strip()
    try:
        auth = V3Authorization(
            algorithm=algorithm,
            credential=parts["Credential"],
            signed_headers=parts["SignedHeaders"],
            signature=parts["Signature"],
        )
    except KeyError:
        return None
    if not auth.credential or not auth.signed_headers or not auth.signature:
        return None
    return auth


def v3_signature_for(
    *,
    secret: str,
    method: str,
    pathname: str,
    query: Mapping[str, str],
    signed_headers: str,
    get_header_values: Callable[[str], list[str]],
    hashed_payload: str,
) -> tuple[str, str]:
    """Server side: recompute ``(signature, string_to_sign)`` from a received request.

    ``signed_headers`` is the client's ``SignedHeaders`` string, used verbatim for its line of the
    canonical request; the canonical header lines are built from those names, sorted, with the
    values actually received.
    """
    names = [h.strip().lower() for h in signed_headers.split(";") if h.strip()]
    canonical = v3_canonical_request(
        method,
        pathname,
        canonical_query_string(query),
        v3_canonical_headers(names, get_header_values),
        signed_headers,
        hashed_payload,
    )
    string_to_sign = v3_string_to_sign(canonical)
    return v3_signature(secret, string_to_sign), string_to_sign


# --------------------------------------------------------------------------------------------
# V1


def v1_canonicalized(params: Mapping[str, str]) -> str:
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))


def v1_string_to_sign(method: str, params: Mapping[str, str]) -> str:
    """``METHOD&%2F&pe(canonicalized)``; ``params`` must not contain ``Signature``."""
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(v1_canonicalized(params))}"


def v1_signature(secret: str, string_to_sign: str) -> str:
    mac = hmac.new((secret + "&").encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def v1_signature_for(*, secret: str, method: str, params: Mapping[str, str]) -> tuple[str, str]:
    """Server side: ``(signature, string_to_sign)`` over query + body params but ``Signature``."""
    string_to_sign = v1_string_to_sign(method, params)
    return v1_signature(secret, string_to_sign), string_to_sign


def sign_v1(
    *,
    credentials: SigningCredentials,
    host: str,
    action: str,
    params: Mapping[str, str],
    timestamp: str,
    nonce: str,
    version: str = API_VERSION,
    user_agent: str = DEFAULT_USER_AGENT,
) -> SignedRequest:
    """Build a V1-signed RPC POST: common parameters in the query, business ones in the body.

    The returned ``query`` is fully percent-encoded; send it verbatim (``yarl.URL(...,
    encoded=True)``) so no HTTP library re-quotes it.
    """
    query: dict[str, str] = {
        "Action": action,
        "Format": "json",
        "Version": version,
        "Timestamp": timestamp,
        "SignatureNonce": nonce,
    }
    if credentials.security_token:
        query["SecurityToken"] = credentials.security_token
    query["SignatureMethod"] = V1_SIGNATURE_METHOD
    query["SignatureVersion"] = V1_SIGNATURE_VERSION
    query["AccessKeyId"] = credentials.access_key_id
    signature = v1_signature(
        credentials.access_key_secret, v1_string_to_sign("POST", {**query, **params})
    )
    query["Signature"] = signature
    headers = {
        "host": host,
        "x-acs-version": version,
        "x-acs-action": action,
        "user-agent": user_agent,
        "content-type": FORM_CONTENT_TYPE,
        "x-acs-credentials-provider": credentials.provider_name,
    }
    encoded_query = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in query.items())
    return SignedRequest(
        query=encoded_query, headers=headers, body=form_encode(params).encode("utf-8")
    )
