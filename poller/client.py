"""The HTTP client: one keep-alive session, a freshly signed POST per attempt, one error boundary.

This is the only module that sees aiohttp, asyncio timeouts or orjson decode errors; they are
translated here, once, into :mod:`poller.errors`. Requests are POST with a form body, which
aiohttp never replays by itself (it silently re-sends *idempotent* requests on a dropped
keep-alive connection, with the same nonce), so every attempt on the wire is one we signed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp
import orjson
from yarl import URL

from .config import ApiConfig
from .errors import (
    AttemptTimeout,
    ConfigError,
    MalformedResponse,
    TransportError,
    error_for_response,
)
from .records import Batch
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

__all__ = ["BatchFetcher", "LiveClient", "OnlineUsersAnswer"]

log = logging.getLogger("poller.client")


@dataclass(frozen=True, slots=True)
class OnlineUsersAnswer:
    """A successful ``BatchGetOnlineUsers`` answer, before per-UID merging."""

    request_id: str
    online_users: list[Any]


class BatchFetcher(Protocol):
    """What the pipeline needs from a client (tests substitute scripted fakes)."""

    async def fetch(self, batch: Batch) -> OnlineUsersAnswer: ...


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("x-acs-retry-after")
    if not raw:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value / 1000.0 if value > 0 else None


def _describe(exc: BaseException) -> str:
    """A transport error's text without any URL query (V1 puts the signature and token there)."""
    text = str(exc) or type(exc).__name__
    if "?" in text:
        text = text.split("?", 1)[0] + "?<redacted>"
    return f"{type(exc).__name__}: {text}"


class LiveClient:
    """Calls the ApsaraVideo Live RPC API. Use as ``async with LiveClient(...) as client:``."""

    def __init__(
        self,
        api: ApiConfig,
        credentials: SigningCredentials,
        *,
        max_connections: int = 64,
        session: aiohttp.ClientSession | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._credentials = credentials
        self._max_connections = max_connections
        self._session = session
        self._owns_session = session is None
        self._wall_clock = wall_clock
        self._user_agent = api.user_agent or DEFAULT_USER_AGENT
        self._url = URL(api.base_url)
        self._host = api.endpoint
        self.attempts = 0

    def __repr__(self) -> str:
        return f"<LiveClient {self._api.base_url} key={self._credentials.access_key_id}>"

    async def __aenter__(self) -> Self:
        if self._session is None:
            ssl_ctx: ssl.SSLContext | bool = True
            if self._api.protocol == "https" and not self._api.verify_tls:
                log.warning("TLS certificate verification is DISABLED (api.verify_tls = false)")
                ssl_ctx = False
            elif self._api.ca_file is not None:
                ssl_ctx = ssl.create_default_context()
                try:
                    ssl_ctx.load_verify_locations(cafile=str(self._api.ca_file))
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(
                        f"cannot load the CA bundle: {exc}", key="api.ca_file"
                    ) from exc
            connector = aiohttp.TCPConnector(
                limit=max(self._max_connections + 8, 16),
                keepalive_timeout=30.0,
                ttl_dns_cache=300,
                ssl=ssl_ctx,
            )
            # No session-wide total timeout: each attempt gets its own, started after the
            # rate token is granted (aiohttp's total would include pool waits).
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._api.connect_timeout_s),
                skip_auto_headers=("User-Agent",),
                auto_decompress=True,
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _sign(self, action: str, params: Mapping[str, str]) -> tuple[URL, SignedRequest]:
        moment = timestamp_at(self._wall_clock())
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
            return URL(f"{self._api.base_url}?{signed.query}", encoded=True), signed
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
        return self._url, signed

    async def call(self, action: str, params: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        """One signed attempt. Returns ``(body, request_id)`` or raises a :class:`PollerError`."""
        session = self._session
        if session is None:
            raise RuntimeError("LiveClient used outside 'async with'")
        url, signed = self._sign(action, params)
        self.attempts += 1
        try:
            async with asyncio.timeout(self._api.timeout_s):
                async with session.post(url, data=signed.body, headers=signed.headers) as resp:
                    status = resp.status
                    headers = resp.headers
                    body = await resp.read()
        except TimeoutError as exc:
            raise AttemptTimeout(
                f"no complete answer within {self._api.timeout_s:g} s", code="Timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(_describe(exc)) from exc
        except OSError as exc:
            raise TransportError(_describe(exc)) from exc
        return self._parse(status, headers, body)

    def _parse(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> tuple[dict[str, Any], str]:
        header_request_id = headers.get("x-acs-request-id")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            kind = "empty body" if not body else "body is not a JSON object"
            if data is None and body:
                snippet = body[:60].decode("utf-8", "replace").replace("\n", " ")
                kind = f"body is not JSON ({snippet!r}...)"
            err = MalformedResponse(
                f"HTTP {status}: {kind}", http_status=status, request_id=header_request_id
            )
            err.retriable = status == 200 or status >= 500
            raise err
        request_id = data.get("RequestId") or header_request_id or ""
        if not isinstance(request_id, str):
            request_id = str(request_id)
        if 200 <= status < 300:
            return data, request_id
        code = data.get("Code")
        message = data.get("Message")
        if isinstance(message, str) and "string to sign" in message:
            # The server echoes its string-to-sign, which in V1 holds the STS token: drop it.
            message = message.split(" server string to sign", 1)[0].rstrip(" .:") + "."
        raise error_for_response(
            http_status=status,
            code=code if isinstance(code, str) else None,
            message=message if isinstance(message, str) else None,
            request_id=request_id or None,
            retry_after_s=_retry_after_s(headers),
        )

    async def fetch(self, batch: Batch) -> OnlineUsersAnswer:
        data, request_id = await self.call(
            "BatchGetOnlineUsers",
            {
                "AppId": batch.target.app_id,
                "GroupId": batch.target.group_id,
                "UserIds": ",".join(batch.uids),
            },
        )
        result = data.get("Result")
        users = result.get("OnlineUsers") if isinstance(result, dict) else None
        if not isinstance(users, list):
            raise MalformedResponse(
                "answer has no Result.OnlineUsers list", http_status=200, request_id=request_id
            )
        return OnlineUsersAnswer(request_id=request_id, online_users=users)
