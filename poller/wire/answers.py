"""Reading the API's answers and the transports' failures into :mod:`poller.core.errors`.

Used by :class:`poller.wire.client.LiveClient`, the one error boundary. Every text that goes
into an error passes through the caller's ``scrub`` first (see :mod:`poller.core.redact`): a
server that echoes what it signed (V1's string-to-sign holds the STS token), or an error
description that quotes a request, must not carry a secret into records or logs.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from poller.core.errors import (
    MalformedResponse,
    PollerError,
    TlsVerificationError,
    TransportError,
    error_for_response,
)

from .http import describe_error

__all__ = ["cert_verification_failure", "parse_answer", "retry_after_s", "transport_error"]

Scrub = Callable[[str], str]


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The ``x-acs-retry-after`` header (milliseconds) in seconds; ``None`` if absent or bad."""
    raw = headers.get("x-acs-retry-after")
    if not raw:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value / 1000.0 if value > 0 else None


def cert_verification_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure ``exc`` is or was caused by (aiohttp wraps it in
    ``ClientConnectorCertificateError``, which our aiohttp transport wraps again), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        inner = getattr(current, "certificate_error", None)  # aiohttp keeps the original here
        if isinstance(inner, ssl.SSLCertVerificationError):
            return inner
        current = current.__cause__ or current.__context__
    return None


def transport_error(exc: BaseException, host: str, scrub: Scrub) -> TransportError:
    """The error for a failed exchange with ``host``: :class:`TlsVerificationError` (fatal) when
    the server's certificate failed verification, else a retriable :class:`TransportError`."""
    cert = cert_verification_failure(exc)
    if cert is not None:
        return TlsVerificationError(
            scrub(
                f"TLS certificate verification failed for {host}: {describe_error(cert)} "
                "(check api.ca_file, api.verify_tls and any proxy in between)"
            )
        )
    return TransportError(scrub(describe_error(exc)))


def _cut_string_to_sign(message: str) -> str:
    # The server echoes its string-to-sign, which in V1 holds the STS token. Scrubbing by value
    # removes the secrets wherever they are; this only shortens the usual spelling's message.
    if "string to sign" in message:
        return message.split(" server string to sign", 1)[0].rstrip(" .:") + "."
    return message


def parse_answer(
    status: int, headers: Mapping[str, str], body: bytes, scrub: Scrub
) -> tuple[dict[str, Any], str]:
    """``(body, request_id)`` of a 2xx JSON answer; raises the :class:`PollerError` of any other,
    its message scrubbed with ``scrub``."""
    header_request_id = headers.get("x-acs-request-id")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        kind = "empty body" if not body else "body is not a JSON object"
        if data is None and body:
            # Scrubbed before it is cut short: a secret across the cut is still found whole.
            text = scrub(body[:4096].decode("utf-8", "replace"))
            snippet = text[:60].replace("\n", " ")
            kind = f"body is not JSON ({snippet!r}...)"
        raise MalformedResponse(
            scrub(f"HTTP {status}: {kind}"), http_status=status, request_id=header_request_id
        )
    request_id = data.get("RequestId") or header_request_id or ""
    if not isinstance(request_id, str):
        request_id = str(request_id)
    if 200 <= status < 300:
        return data, request_id
    raise _api_error(status, headers, data, request_id, scrub)


def _api_error(
    status: int, headers: Mapping[str, str], data: dict[str, Any], request_id: str, scrub: Scrub
) -> PollerError:
    code = data.get("Code")
    message = data.get("Message")
    return error_for_response(
        http_status=status,
        code=scrub(code) if isinstance(code, str) else None,
        message=scrub(_cut_string_to_sign(message)) if isinstance(message, str) else None,
        request_id=request_id or None,
        retry_after_s=retry_after_s(headers),
    )
