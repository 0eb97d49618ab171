"""The HTTP side of the webhook sink (:mod:`poller.engine.webhook`): the request signature, its
check for receivers (:func:`verify`), and one POST over an aiohttp session.

The signature header is ``X-Poller-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is the
HMAC-SHA256, keyed with the shared secret, of ``"<t>."`` followed by the raw request body. A
receiver recomputes it over the body bytes as received, compares in constant time, and refuses
a timestamp too far from its clock (a replayed old request)::

    from poller.wire.webhook import verify

    if not verify(secret, request.headers["X-Poller-Signature"], await request.read()):
        return web.Response(status=401)
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import time
from dataclasses import dataclass
from typing import Final

import aiohttp

__all__ = [
    "SIGNATURE_HEADER",
    "WebhookAnswer",
    "WebhookClient",
    "WebhookUnreachable",
    "sign",
    "verify",
]

SIGNATURE_HEADER: Final = "X-Poller-Signature"
#: How much of a receiver's answer is kept (for the log).
ANSWER_SNIPPET: Final = 300


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Poller-Signature`` value of ``body`` sent at ``timestamp`` (unix seconds)."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: str | bytes,
    header: str,
    body: bytes,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (``X-Poller-Signature``) signs ``body`` with ``secret`` and is at most
    ``tolerance_s`` old (a replayed old request fails). Constant-time comparison."""
    fields = dict(part.partition("=")[::2] for part in header.split(","))
    try:
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).partition(",v1=")[2]
    return hmac.compare_digest(expected, given)


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    status: int
    retry_after: str | None
    text: str  # the start of the body, for the log


class WebhookUnreachable(Exception):
    """No answer: a connection error or a timeout (retried)."""


class WebhookClient:
    """POSTs to one receiver over a keep-alive session; opened by :meth:`open`."""

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None, timeout_s: float) -> None:
        self.url = url
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def post(self, body: bytes, headers: dict[str, str]) -> WebhookAnswer:
        session = self._session
        assert session is not None, "open() first"
        try:
            async with session.post(self.url, data=body, headers=headers) as resp:
                text = (await resp.content.read(ANSWER_SNIPPET)).decode("utf-8", "replace")
                return WebhookAnswer(resp.status, resp.headers.get("Retry-After"), text)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            detail = str(exc)
            raise WebhookUnreachable(
                f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            ) from exc
