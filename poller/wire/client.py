"""The API client: keep-alive connections, a freshly signed POST per attempt, one error boundary.

This is the only module that sees the HTTP transport's errors, asyncio timeouts or orjson decode
errors; they are translated here, once, into :mod:`poller.core.errors`. Two transports carry the
requests (``[api] transport``):

``aiohttp`` (default)
    an ``aiohttp.ClientSession`` (:mod:`poller.wire.aiohttp_transport`, imported only when
    chosen): honours ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``; also used when a session is
    passed in.
``builtin``
    :class:`poller.wire.http.HttpPool`, a lean HTTP/1.1 keep-alive client for the one endpoint; it
    costs a fraction of a general-purpose client's CPU per request (many accounts in one
    process). It cannot use a proxy, so it refuses to start when one applies to the endpoint
    (:func:`poller.wire.proxy.check_builtin_transport`).

Each transport raises only transport-neutral errors (:class:`poller.wire.http.HttpError` and its
subclasses, ``OSError``, ``TimeoutError``), so this module never imports aiohttp. A request
that a reused keep-alive connection lost before any answer (``StaleConnectionClosed``) becomes
:class:`~poller.core.errors.StaleConnection`, which the retry loop sends again at once.

Every answer's ``Date`` header updates the offset of the client's
:class:`~poller.core.clock.SkewedClock`, which signs the requests. An ``InvalidTimeStamp.*`` answer
whose ``Date`` corrected the offset its request was signed with becomes
:class:`~poller.core.errors.ClockSkewCorrected` (sent again at once, re-signed); rejected again
right after that, it is a final :class:`~poller.core.errors.ClockSkewError` (no loop).

Every message put into an error is scrubbed by value (:mod:`poller.core.redact`) of the secret,
the STS token and the request's signature, whatever text the server or a library wrapped them in;
``LiveClient.redactor`` scrubs the first two, for the logs.

Neither re-sends a request by itself (requests are POST with a form body, which aiohttp never
replays; the builtin transport never replays anything), so every attempt on the wire is one we
signed, with its own nonce.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self
from urllib.parse import parse_qsl

from poller.config import ApiConfig
from poller.core.clock import OFFSET_THRESHOLD_S, Clock, SkewedClock, system_clock
from poller.core.errors import (
    AttemptTimeout,
    ClockSkewCorrected,
    ClockSkewError,
    ConfigError,
    StaleConnection,
)
from poller.core.records import Batch
from poller.core.redact import Redactor

from .answers import parse_answer, transport_error
from .backends import backend_for
from .http import ConnectTimeout, HttpError, HttpPool, StaleConnectionClosed, describe_error
from .proxy import check_builtin_transport
from .signing import (
    API_VERSION,
    DEFAULT_USER_AGENT,
    SignedRequest,
    SigningCredentials,
    new_nonce,
    sign_v1,
    sign_v3,
    timestamp_at,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = ["BatchFetcher", "LiveClient", "OnlineUsersAnswer", "tls_context"]

log = logging.getLogger("poller.client")

#: A learned clock offset beyond this many seconds is logged as a WARNING (once per change).
WARN_OFFSET_S = 60.0
#: Requests remembered as "just re-signed after a clock correction" (a bound, not a tuning knob).
_MAX_CORRECTED = 1024

_RequestKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class OnlineUsersAnswer:
    """A successful presence answer's per-user entries, before per-UID merging."""

    request_id: str
    online_users: list[Any]


class BatchFetcher(Protocol):
    """What the pipeline needs from a client (tests substitute scripted fakes)."""

    async def fetch(self, batch: Batch) -> OnlineUsersAnswer: ...


def _signature_of(signed: SignedRequest) -> str | None:
    """The request's signature: V3's ``Signature=`` in ``Authorization``, V1's query parameter."""
    auth = signed.headers.get("Authorization")
    if auth is not None:
        return auth.rpartition("Signature=")[2] or None
    return next((v for k, v in parse_qsl(signed.query) if k == "Signature"), None)


class _Transport(Protocol):
    @property
    def connections_opened(self) -> int | None: ...

    async def post(
        self, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Mapping[str, str], bytes]: ...

    async def aclose(self) -> None: ...


def ssl_context_for(api: ApiConfig) -> ssl.SSLContext | None:
    """The TLS context for ``api`` (``None`` over plain HTTP): see :func:`tls_context`."""
    if api.protocol != "https":
        return None
    return tls_context(verify=api.verify_tls, ca_file=api.ca_file, key="api")


def tls_context(*, verify: bool, ca_file: Path | None, key: str) -> ssl.SSLContext:
    """The system store, plus ``ca_file`` if set; no verification at all only with
    ``verify=False`` (logged as a warning naming ``key``, the config section)."""
    if not verify:
        log.warning("TLS certificate verification is DISABLED (%s.verify_tls = false)", key)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context()
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA bundle: {exc}", key=f"{key}.ca_file") from exc
    return ctx


class _BuiltinTransport:
    def __init__(self, api: ApiConfig, max_connections: int, clock: Clock) -> None:
        host, port = api.host, api.port
        self.pool = HttpPool(
            host,
            port,
            ssl_context=ssl_context_for(api),
            max_connections=max_connections,
            connect_timeout_s=api.connect_timeout_s or None,
            idle_timeout_s=api.keepalive_s,
            clock=clock,
        )

    @property
    def connections_opened(self) -> int:
        return self.pool.connections_opened

    async def post(
        self, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        response = await self.pool.request("POST", target, headers, body)
        return response.status, response.headers, response.body

    async def aclose(self) -> None:
        await self.pool.aclose()


class LiveClient:
    """Calls the ApsaraVideo Live RPC API. Use as ``async with LiveClient(...) as client:``.

    ``session`` (an ``aiohttp.ClientSession`` the caller owns) selects the aiohttp transport
    whatever ``api.transport`` says. ``clock`` (default
    :func:`~poller.core.clock.system_clock`) dates the signatures (its ``time()``) and times the
    builtin transport's idle connections and address cache (its ``monotonic()``). Only a
    :class:`~poller.core.clock.SkewedClock` (the default wraps the system clock; a ``Poller``
    passes its own) is corrected from the answers' ``Date``; another clock is taken as it is.
    """

    def __init__(
        self,
        api: ApiConfig,
        credentials: SigningCredentials,
        *,
        max_connections: int = 64,
        session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._api = api
        self._credentials = credentials
        self._max_connections = max(max_connections + 8, 16)
        self._session = session
        self._transport: _Transport | None = None
        self._clock: Clock = clock if clock is not None else SkewedClock(system_clock())
        self._skewed = self._clock if isinstance(self._clock, SkewedClock) else None
        self._corrected: set[_RequestKey] = set()
        self._user_agent = api.user_agent or DEFAULT_USER_AGENT
        self._host = api.endpoint
        self.attempts = 0
        #: Scrubs the secret and the STS token from any text (see :mod:`poller.core.redact`);
        #: every error message this client raises has been through it.
        self.redactor = Redactor((credentials.access_key_secret, credentials.security_token))

    def __repr__(self) -> str:
        return f"<LiveClient {self._api.base_url} key={self._credentials.access_key_id}>"

    @property
    def transport_name(self) -> str:
        """``"builtin"`` or ``"aiohttp"``: what carries the requests."""
        if self._session is not None:
            return "aiohttp"
        return self._api.transport

    @property
    def clock(self) -> Clock:
        """The clock that dates the signatures (``clock.offset_s``: the learned server time minus
        local time, when it is a :class:`~poller.core.clock.SkewedClock`)."""
        return self._clock

    @property
    def connections_opened(self) -> int | None:
        """Connections opened so far (``None`` before ``async with`` and with a caller's
        aiohttp session, which we cannot trace)."""
        t = self._transport
        return t.connections_opened if t is not None else None

    async def __aenter__(self) -> Self:
        if self._transport is None:
            self._transport = self._open_transport()
        return self

    def _open_transport(self) -> _Transport:
        if self.transport_name == "builtin":
            check_builtin_transport(self._api)
            return _BuiltinTransport(self._api, self._max_connections, self._clock)
        # Imported here, not at the top: only this transport needs aiohttp (and its import time).
        from .aiohttp_transport import AiohttpTransport

        if self._session is not None:
            return AiohttpTransport(self._api.base_url, self._session)
        return AiohttpTransport.with_own_session(
            self._api, max_connections=self._max_connections, ssl_context=ssl_context_for(self._api)
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()

    def _sign(self, action: str, params: Mapping[str, str]) -> tuple[str, SignedRequest]:
        moment = timestamp_at(self._clock.time())
        if self._api.signature == "v1":
            signed = sign_v1(
                credentials=self._credentials,
                host=self._host,
                action=action,
                params=params,
                timestamp=moment,
                nonce=new_nonce(),
                version=API_VERSION,
                user_agent=self._user_agent,
            )
            return f"/?{signed.query}", signed
        signed = sign_v3(
            credentials=self._credentials,
            host=self._host,
            action=action,
            params=params,
            date=moment,
            nonce=new_nonce(),
            version=API_VERSION,
            user_agent=self._user_agent,
        )
        return "/", signed

    async def call(self, action: str, params: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        """One signed attempt. Returns ``(body, request_id)`` or raises a :class:`PollerError`."""
        transport = self._transport
        if transport is None:
            raise RuntimeError("LiveClient used outside 'async with'")
        after_correction = False
        if self._corrected:
            key = (action, tuple(params.items()))
            after_correction = key in self._corrected
            self._corrected.discard(key)
        signed_offset = self._skewed.offset_s if self._skewed is not None else 0.0
        target, signed = self._sign(action, params)
        self.attempts += 1
        try:
            async with asyncio.timeout(self._api.timeout_s):
                status, headers, body = await transport.post(target, signed.headers, signed.body)
        except ConnectTimeout as exc:
            raise AttemptTimeout(
                f"no connection to {self._host} within {self._api.connect_timeout_s:g} s",
                code="Timeout",
            ) from exc
        except TimeoutError as exc:
            raise AttemptTimeout(
                f"no complete answer within {self._api.timeout_s:g} s", code="Timeout"
            ) from exc
        except StaleConnectionClosed as exc:
            raise StaleConnection(self._scrubber(signed)(describe_error(exc))) from exc
        except (HttpError, OSError) as exc:
            raise transport_error(exc, self._host, self._scrubber(signed)) from exc
        implied = self._learn_offset(headers)
        try:
            return parse_answer(status, headers, body, self._scrubber(signed))
        except ClockSkewError as err:
            err.offset_s = implied
            if implied is None or after_correction:
                raise
            if abs(implied - signed_offset) <= OFFSET_THRESHOLD_S:
                raise  # signed with the server's time already: correcting cannot help
            raise self._corrected_retry(err, (action, tuple(params.items())), implied) from None

    def _scrubber(self, signed: SignedRequest) -> Callable[[str], str]:
        """Scrubs the secrets and ``signed``'s signature (its redactor is built only if used)."""

        def scrub(text: str) -> str:
            return self.redactor.with_secrets(_signature_of(signed)).scrub(text)

        return scrub

    def _learn_offset(self, headers: Mapping[str, str]) -> float | None:
        """The offset the answer's ``Date`` implies (see :meth:`SkewedClock.observe_http_date`)."""
        clock, raw = self._skewed, headers.get("date")
        if clock is None or raw is None:
            return None
        before = clock.offset_s
        implied = clock.observe_http_date(raw)
        if clock.offset_s != before:
            log.log(
                logging.WARNING if abs(clock.offset_s) > WARN_OFFSET_S else logging.INFO,
                "clock offset %+.1f s (the API server's time minus ours, from its Date header): "
                "requests are signed and records dated with the corrected time",
                clock.offset_s,
            )
        return implied

    def _corrected_retry(
        self, err: ClockSkewError, key: _RequestKey, implied: float
    ) -> ClockSkewCorrected:
        if len(self._corrected) >= _MAX_CORRECTED:
            self._corrected.clear()
        self._corrected.add(key)
        return ClockSkewCorrected.after(err, implied)

    async def fetch(self, batch: Batch) -> OnlineUsersAnswer:
        """One attempt at ``batch`` with its target's API (:mod:`poller.wire.backends`)."""
        backend = backend_for(batch.target)
        data, request_id = await self.call(backend.action, backend.params(batch.target, batch.uids))
        return OnlineUsersAnswer(
            request_id=request_id, online_users=backend.entries(data, request_id)
        )
