"""The optional aiohttp transport of :class:`poller.wire.client.LiveClient` (``[api] transport =
"aiohttp"``, or a caller's ``aiohttp.ClientSession``).

Imported only when that transport is chosen, so ``import poller`` does not load aiohttp. Like the
builtin transport it raises only transport-neutral errors: a connect timeout is
:class:`~poller.wire.http.ConnectTimeout`, any other timeout a plain ``TimeoutError``, and an
``aiohttp.ClientError`` a :class:`~poller.wire.http.ForeignHttpError` (described as the original,
URL query redacted, and chained to it); a request that a *reused* keep-alive connection
failed before any answer arrived (the server closed it while idle as we sent) is
:class:`~poller.wire.http.StaleConnectionClosed`, which the client re-sends at once.

A session of its own (:meth:`AiohttpTransport.with_own_session`) honours ``HTTP_PROXY`` /
``HTTPS_PROXY`` / ``NO_PROXY``, keeps no cookies, and counts the connections it opens and tells
reused ones (an ``aiohttp.TraceConfig``). A caller's session has neither count nor stale
detection, and its own proxy settings.

The proxy is the one :func:`poller.wire.proxy.proxy_for` names (aiohttp's ``trust_env`` rule,
read once when the session opens), passed explicitly rather than by ``trust_env=True``: that would
also read ``~/.netrc`` (or ``$NETRC``) for the *endpoint* and add its credentials as an
``Authorization`` header, which breaks every V3 request (aiohttp refuses the combination) and
sends those credentials to the cloud with V1; it also costs two thread hops per request.
"""

from __future__ import annotations

import errno
import ssl
from collections.abc import Mapping
from types import SimpleNamespace

import aiohttp
from yarl import URL

from poller.config import ApiConfig

from .http import ConnectTimeout, ForeignHttpError, StaleConnectionClosed, describe_error
from .proxy import proxy_for

__all__ = ["AiohttpTransport"]

#: ``OSError`` numbers of a connection the peer had already closed when we wrote to it.
_CLOSED_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


class _RequestTrace:
    """Per request (``trace_request_ctx``): did it go out on a reused connection?"""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


class _Tracer:
    """An ``aiohttp.TraceConfig`` that counts connections opened and marks the requests that
    went out on a reused one."""

    def __init__(self) -> None:
        self.connections_opened = 0
        self.config = aiohttp.TraceConfig()
        self.config.on_connection_create_end.append(self._created)
        self.config.on_connection_reuseconn.append(self._reused)

    async def _created(
        self,
        _session: aiohttp.ClientSession,
        _ctx: SimpleNamespace,
        _params: aiohttp.TraceConnectionCreateEndParams,
    ) -> None:
        self.connections_opened += 1

    async def _reused(
        self,
        _session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        _params: aiohttp.TraceConnectionReuseconnParams,
    ) -> None:
        trace = ctx.trace_request_ctx
        if isinstance(trace, _RequestTrace):
            trace.reused = True


def _closed_under_us(exc: aiohttp.ClientError) -> bool:
    """The failures of a connection the server had closed while it sat idle."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno in _CLOSED_ERRNOS


#: The proxy URL (no credentials) and its ``Proxy-Authorization`` header, if any.
_ProxySettings = tuple[URL | None, dict[str, str] | None]


def _proxy_settings(proxy: str | None) -> _ProxySettings:
    """``proxy``'s credentials go in a header, never in the URL aiohttp may show in errors."""
    if proxy is None:
        return None, None
    url = URL(proxy)
    if url.user is None:
        return url, None
    auth = aiohttp.encode_basic_auth(url.user, url.password or "")
    return url.with_user(None), {"Proxy-Authorization": auth}


class AiohttpTransport:
    """POSTs to ``base_url`` over ``session``, which is closed by :meth:`aclose` only if
    ``owns_session`` (see :meth:`with_own_session`). With ``tracer`` (which must be among the
    session's trace configs) it counts connections and tells stale ones."""

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        owns_session: bool = False,
        tracer: _Tracer | None = None,
        proxy: _ProxySettings = (None, None),
    ) -> None:
        self._base = base_url.rstrip("/")
        self._root = URL(base_url, encoded=True)  # V3's target, every request
        self._owns_session = owns_session
        self._tracer = tracer
        self._proxy, proxy_headers = proxy
        # aiohttp sends ``proxy_headers`` only with a CONNECT (HTTPS through the proxy); a plain
        # HTTP request through it carries them itself.
        tunnelled = self._root.scheme == "https"
        self._proxy_headers = proxy_headers if tunnelled else None
        self._request_headers = None if tunnelled else proxy_headers
        self.session = session

    @property
    def connections_opened(self) -> int | None:
        """Connections opened so far; ``None`` for a caller's session (we cannot trace it)."""
        return self._tracer.connections_opened if self._tracer is not None else None

    @classmethod
    def with_own_session(
        cls, api: ApiConfig, *, max_connections: int, ssl_context: ssl.SSLContext | None
    ) -> AiohttpTransport:
        """A transport with its own session: ``max_connections`` keep-alive connections to
        ``api.base_url``, idle ones closed after ``api.keepalive_s``, TLS by ``ssl_context``
        (``None``: aiohttp's default verification), through the proxy the environment names
        for it (:func:`~poller.wire.proxy.proxy_for`), no cookie jar."""
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            keepalive_timeout=api.keepalive_s,
            ttl_dns_cache=300,
            ssl=ssl_context or True,
        )
        proxy = _proxy_settings(proxy_for(api))
        tracer = _Tracer()
        # No session-wide total timeout: each attempt gets its own, started after the
        # rate token is granted (aiohttp's total would include pool waits).
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=api.connect_timeout_s),
            skip_auto_headers=("User-Agent",),
            auto_decompress=True,
            trust_env=False,  # see the module's docstring; the proxy is passed per request
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=[tracer.config],
        )
        return cls(api.base_url, session, owns_session=True, tracer=tracer, proxy=proxy)

    async def post(
        self, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        url = self._root if target == "/" else URL(self._base + target, encoded=True)
        if self._request_headers is not None:
            headers = {**headers, **self._request_headers}
        trace = _RequestTrace()
        answered = False
        try:
            # No redirects: following one would re-send the signed request with the same nonce.
            async with self.session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
                trace_request_ctx=trace,
            ) as resp:
                answered = True
                return resp.status, resp.headers, await resp.read()
        except aiohttp.ConnectionTimeoutError as exc:
            # Before ServerTimeoutError and ClientError: it is both.
            raise ConnectTimeout(f"no connection to {url.host} (aiohttp's sock_connect)") from exc
        except aiohttp.ServerTimeoutError as exc:  # a read timeout (none is configured)
            raise TimeoutError(describe_error(exc)) from exc
        except aiohttp.ClientError as exc:
            if trace.reused and not answered and _closed_under_us(exc):
                raise StaleConnectionClosed(describe_error(exc)) from exc
            raise ForeignHttpError(exc) from exc

    async def aclose(self) -> None:
        if self._owns_session:
            await self.session.close()
