"""The optional aiohttp transport of :class:`poller.wire.client.LiveClient` (``[api] transport =
"aiohttp"``, or a caller's ``aiohttp.ClientSession``).

Imported only when that transport is chosen, so ``import poller`` does not load aiohttp. Like the
builtin transport it raises only transport-neutral errors: a connect timeout is
:class:`~poller.wire.http.ConnectTimeout`, any other timeout a plain ``TimeoutError``, and an
``aiohttp.ClientError`` a :class:`~poller.wire.http.ForeignHttpError` (described as the original,
URL query redacted, and chained to it).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import aiohttp
from yarl import URL

from poller.config import ApiConfig

from .http import ConnectTimeout, ForeignHttpError, describe_error

__all__ = ["AiohttpTransport"]


class AiohttpTransport:
    """POSTs to ``base_url`` over ``session``, which is closed by :meth:`aclose` only if
    ``owns_session`` (see :meth:`with_own_session`)."""

    def __init__(
        self, base_url: str, session: aiohttp.ClientSession, *, owns_session: bool = False
    ) -> None:
        self._base = base_url.rstrip("/")
        self._root = URL(base_url, encoded=True)  # V3's target, every request
        self._owns_session = owns_session
        self.session = session

    @classmethod
    def with_own_session(
        cls, api: ApiConfig, *, max_connections: int, ssl_context: ssl.SSLContext | None
    ) -> AiohttpTransport:
        """A transport with its own session: ``max_connections`` keep-alive connections to
        ``api.base_url``, TLS by ``ssl_context`` (``None``: aiohttp's default verification)."""
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            keepalive_timeout=15.0,
            ttl_dns_cache=300,
            ssl=ssl_context or True,
        )
        # No session-wide total timeout: each attempt gets its own, started after the
        # rate token is granted (aiohttp's total would include pool waits).
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=api.connect_timeout_s),
            skip_auto_headers=("User-Agent",),
            auto_decompress=True,
        )
        return cls(api.base_url, session, owns_session=True)

    async def post(
        self, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        url = self._root if target == "/" else URL(self._base + target, encoded=True)
        try:
            # No redirects: following one would re-send the signed request with the same nonce.
            async with self.session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                return resp.status, resp.headers, await resp.read()
        except aiohttp.ConnectionTimeoutError as exc:
            # Before ServerTimeoutError and ClientError: it is both.
            raise ConnectTimeout(f"no connection to {url.host} (aiohttp's sock_connect)") from exc
        except aiohttp.ServerTimeoutError as exc:  # a read timeout (none is configured)
            raise TimeoutError(describe_error(exc)) from exc
        except aiohttp.ClientError as exc:
            raise ForeignHttpError(exc) from exc

    async def aclose(self) -> None:
        if self._owns_session:
            await self.session.close()
