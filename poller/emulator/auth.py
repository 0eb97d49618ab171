"""Server-side verification of V3 (``ACS3-HMAC-SHA256``) and V1 (``HMAC-SHA1``) signatures.

Implements protocol.md §3.7 and §4.4 on top of the pure helpers in :mod:`poller.wire.signing`.
Verification is split in two so the caller can attribute a request to an account as soon as the
key is known (for per-account statistics), before deciding whether it is genuine:

1. ``identify_*`` parses the credential and looks the key up
   (``IncompleteSignature``, ``MissingParameter``, ``InvalidAccessKeyId.NotFound``);
2. ``verify_*`` checks, in this order: STS token and ``x-acs-accesskey-id``; for V3 that ``host``,
   every ``x-acs-*`` header and, when there is a body, ``content-type`` are signed (the official
   SDK's calls of the current interactive-messaging family carry every parameter in the query and
   no body, and aiohttp then adds an unsigned ``Content-Type: application/octet-stream`` after
   signing: the cloud accepts that, so the emulator does too); the date's format and window;
   ``Content-MD5`` when sent; the body hash (V3); the signature, compared with
   :func:`hmac.compare_digest`. It returns the nonce and how long it must be remembered; the replay
   check itself belongs to the caller, which decides when a nonce counts as consumed.

For V3 the server's string to sign always uses the hash of the body actually received, so a
tampered body reports ``SignatureDoesNotMatch`` with a string to sign the client can diff.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Final

from multidict import MultiMapping

from poller.wire.signing import (
    V1_SIGNATURE_METHOD,
    V3_ALGORITHM,
    V3Authorization,
    canonical_query_string,
    parse_v3_authorization,
    v1_signature_for,
    v3_canonical_request,
    v3_string_to_sign,
)

from . import errors
from .accounts import AccessKey, KeyStore

__all__ = ["AuthResult", "Verifier", "parse_timestamp", "v3_expected_signature"]

_TIMESTAMP_RE: Final = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z")
_V1_REQUIRED: Final = (
    "SignatureMethod",
    "SignatureVersion",
    "Timestamp",
    "SignatureNonce",
    "Signature",
)
_timestamp_cache: dict[str, float] = {}


def parse_timestamp(value: str) -> float | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` (UTC) to epoch seconds; ``None`` if malformed or impossible."""
    cached = _timestamp_cache.get(value)
    if cached is not None:
        return cached
    match = _TIMESTAMP_RE.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    if not (1 <= month <= 12 and hour < 24 and minute < 60 and second < 60):
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    epoch = float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    if len(_timestamp_cache) >= 256:  # nearly all requests share the current second
        _timestamp_cache.clear()
    _timestamp_cache[value] = epoch
    return epoch


_plans: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}


def _signed_header_plan(signed_headers: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """``SignedHeaders`` parsed once per distinct string: (sorted lower-case names, their set).

    Clients send the same list on every request, so this saves a split, a sort and a set per
    request. Bounded: the cache is dropped when it holds 256 distinct lists.
    """
    plan = _plans.get(signed_headers)
    if plan is None:
        names = sorted(h.strip().lower() for h in signed_headers.split(";") if h.strip())
        plan = (tuple(names), frozenset(names))
        if len(_plans) >= 256:
            _plans.clear()
        _plans[signed_headers] = plan
    return plan


def v3_expected_signature(
    *,
    secret: str,
    method: str,
    query: dict[str, str],
    signed_headers: str,
    headers: MultiMapping[str],
    hashed_payload: str,
) -> tuple[str, str]:
    """``(signature, string_to_sign)`` for a received V3 request at path ``/``.

    The emulator's hot path; equal by construction (and by test) to
    :func:`poller.wire.signing.v3_signature_for`, which it avoids only for speed: the
    header-name plan is cached and single-valued headers skip the per-value sort.
    """
    names, _ = _signed_header_plan(signed_headers)
    lines = []
    for name in names:
        values = headers.getall(name, ())
        if len(values) == 1:
            lines.append(f"{name}:{values[0].strip()}\n")
        else:
            lines.append(f"{name}:{','.join(sorted(v.strip() for v in values))}\n")
    canonical = v3_canonical_request(
        method,
        "/",
        canonical_query_string(query) if query else "",
        "".join(lines),
        signed_headers,
        hashed_payload,
    )
    string_to_sign = v3_string_to_sign(canonical)
    signature = hmac.digest(secret.encode("utf-8"), string_to_sign.encode("utf-8"), "sha256")
    return signature.hex(), string_to_sign


_auth_heads: dict[str, tuple[str, str, str]] = {}


def _parse_authorization(value: str) -> V3Authorization | None:
    """:func:`poller.wire.signing.parse_v3_authorization`, memoised on all before the signature.

    A client's ``Authorization`` differs between requests only in its trailing ``Signature=``;
    for a head seen before, the result is exactly what the full parse would return.
    """
    head, sep, signature = value.rpartition(",Signature=")
    simple = bool(sep) and "," not in signature and bool(signature.strip())
    if simple:
        cached = _auth_heads.get(head)
        if cached is not None:
            return V3Authorization(cached[0], cached[1], cached[2], signature.strip())
    auth = parse_v3_authorization(value)
    if simple and auth is not None and auth.signature == signature.strip():
        if len(_auth_heads) >= 256:
            _auth_heads.clear()
        _auth_heads[head] = (auth.algorithm, auth.credential, auth.signed_headers)
    return auth


def _same(received: str, expected: str) -> bool:
    """Constant-time comparison that also accepts non-ASCII input (which never matches)."""
    return hmac.compare_digest(
        received.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


@dataclass(frozen=True, slots=True)
class AuthResult:
    """A verified request: its nonce and the wall-clock instant until which to remember it."""

    nonce: str
    nonce_expiry: float


class Verifier:
    """Signature, date, STS and body checks for one key store and date window."""

    __slots__ = ("_keys", "_window")

    def __init__(self, keys: KeyStore, date_window_s: float) -> None:
        self._keys = keys
        self._window = date_window_s

    # ---------------------------------------------------------------------------- V3

    def identify_v3(self, headers: MultiMapping[str]) -> tuple[V3Authorization, AccessKey]:
        auth = _parse_authorization(headers.get("Authorization", ""))
        if auth is None or auth.algorithm != V3_ALGORITHM:
            raise errors.incomplete_signature()
        key = self._keys.get(auth.credential)
        if key is None:
            raise errors.invalid_access_key()
        return auth, key

    def verify_v3(
        self,
        auth: V3Authorization,
        key: AccessKey,
        *,
        method: str,
        headers: MultiMapping[str],
        query: dict[str, str],
        body: bytes,
        now: float,
    ) -> AuthResult:
        header_key_id = headers.get("x-acs-accesskey-id")
        if header_key_id is not None and header_key_id != auth.credential:
            raise errors.security_token_mismatch()
        self._check_token(key, headers.get("x-acs-security-token"))

        _, signed = _signed_header_plan(auth.signed_headers)
        if "host" not in signed:
            raise errors.incomplete_signature()
        for name in headers:
            lower = name.lower()
            if lower in signed:
                continue
            if lower.startswith("x-acs-") or (lower == "content-type" and body):
                raise errors.incomplete_signature()

        date = headers.get("x-acs-date")
        if date is None:
            raise errors.missing_parameter("x-acs-date")
        nonce = headers.get("x-acs-signature-nonce")
        if not nonce:
            raise errors.missing_parameter("x-acs-signature-nonce")
        claimed_hash = headers.get("x-acs-content-sha256")
        if claimed_hash is None:
            raise errors.missing_parameter("x-acs-content-sha256")
        expiry = self._check_date(date, now)
        self._check_content_md5(headers, body)

        actual_hash = hashlib.sha256(body).hexdigest()
        expected, string_to_sign = v3_expected_signature(
            secret=key.secret,
            method=method,
            query=query,
            signed_headers=auth.signed_headers,
            headers=headers,
            hashed_payload=actual_hash,
        )
        if not _same(claimed_hash, actual_hash) or not _same(expected, auth.signature):
            raise errors.signature_mismatch(string_to_sign)
        return AuthResult(nonce, expiry)

    # ---------------------------------------------------------------------------- V1

    def identify_v1(self, params: dict[str, str]) -> AccessKey:
        key_id = params.get("AccessKeyId")
        if not key_id:
            raise errors.missing_parameter("AccessKeyId")
        key = self._keys.get(key_id)
        if key is None:
            raise errors.invalid_access_key()
        return key

    def verify_v1(
        self,
        key: AccessKey,
        *,
        method: str,
        headers: MultiMapping[str],
        params: dict[str, str],
        body: bytes,
        now: float,
    ) -> AuthResult:
        self._check_token(key, params.get("SecurityToken"))
        for name in _V1_REQUIRED:
            if not params.get(name):
                raise errors.missing_parameter(name)
        if params["SignatureMethod"] != V1_SIGNATURE_METHOD or params["SignatureVersion"] != "1.0":
            raise errors.incomplete_signature()
        expiry = self._check_date(params["Timestamp"], now)
        self._check_content_md5(headers, body)
        signed = {k: v for k, v in params.items() if k != "Signature"}
        expected, string_to_sign = v1_signature_for(secret=key.secret, method=method, params=signed)
        if not _same(expected, params["Signature"]):
            raise errors.signature_mismatch(string_to_sign)
        return AuthResult(params["SignatureNonce"], expiry)

    # ---------------------------------------------------------------------------- shared

    @staticmethod
    def _check_token(key: AccessKey, token: str | None) -> None:
        if key.security_token is None:
            if token:  # a token for a permanent key: it belongs to some other credential
                raise errors.security_token_mismatch()
            return
        if not token:
            raise errors.missing_security_token()
        if not _same(token, key.security_token):
            raise errors.security_token_mismatch()

    def _check_date(self, value: str, now: float) -> float:
        moment = parse_timestamp(value)
        if moment is None:
            raise errors.invalid_timestamp_format()
        if abs(now - moment) > self._window:
            raise errors.expired_timestamp()
        return moment + self._window

    @staticmethod
    def _check_content_md5(headers: MultiMapping[str], body: bytes) -> None:
        claimed = headers.get("Content-MD5")
        if claimed is None:
            return
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        if not _same(claimed.strip(), base64.b64encode(digest).decode("ascii")):
            raise errors.content_md5_mismatch()
