"""A small HTTP/1.1 client for one origin: keep-alive connections, one exchange at a time each.

poller sends thousands of near-identical small POSTs per second to a single host, and a
general-purpose client's per-request machinery costs more CPU than everything else poller does
per request. :class:`HttpPool` does only what this job needs: the request (encoded by
:func:`~poller.wire.http_parse.encode_request`) goes out in one ``transport.write``; the answer
is parsed by :class:`~poller.wire.http_parse.ResponseParser` (llhttp, through httptools);
connections are reused while the server keeps them alive (most recently used first), dropped
after ``idle_timeout_s`` unused, never shared by two requests at once, and never reused after an
exchange that failed, timed out or was cancelled; a request is never re-sent here (the caller
re-signs: a signed request carries a single-use nonce). New connections race the endpoint's
addresses (RFC 8305 "happy eyeballs", by ``aiohappyeyeballs``), cached for ``dns_ttl_s``
(``getaddrinfo`` gives no record TTL, so this is the only one) and looked up once for all the
connections waiting. A failed lookup is never cached as an answer: the last known addresses, if
any, are still used, and the failure is held for :data:`DNS_FAILURE_HOLD_S` so that a dead
resolver is not asked by every connect.

Errors: :class:`BadResponse` for anything not a well-formed HTTP/1.x answer;
:class:`ConnectionClosed` for a connection that ends before a complete answer, or its subclass
:class:`StaleConnectionClosed` for a kept-alive one that ends before any byte of it; ``OSError``
subclasses from the loop for socket and TLS errors. Works on the stdlib loop and uvloop, over TCP
or TLS (``ssl_context``, with SNI and hostname checking from the context).
"""

from __future__ import annotations

import asyncio
import copy
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import aiohappyeyeballs

from poller.core.clock import Clock, system_clock
from poller.wire.http_parse import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    BadResponse,
    ConnectionClosed,
    ConnectTimeout,
    ForeignHttpError,
    HttpError,
    HttpResponse,
    ResponseParser,
    StaleConnectionClosed,
    describe_error,
    encode_request,
)

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEAD_BYTES",
    "BadResponse",
    "ConnectTimeout",
    "ConnectionClosed",
    "ForeignHttpError",
    "HttpError",
    "HttpPool",
    "HttpResponse",
    "StaleConnectionClosed",
    "describe_error",
    "encode_request",
]

#: Delay before racing the next address of the endpoint (RFC 8305 recommends 250 ms).
HAPPY_EYEBALLS_DELAY_S: Final = 0.25
#: How long a failed address lookup is remembered before the resolver is asked again.
DNS_FAILURE_HOLD_S: Final = 1.0

AddrInfo = tuple[Any, Any, int, str, tuple[Any, ...]]


class _Connection(asyncio.Protocol):
    """One connection, and the parser for the answer to the request in flight on it."""

    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self.idle_since = 0.0
        #: Answers completed on this connection.
        self.exchanges = 0
        self.lost: asyncio.Future[None] = pool.loop.create_future()
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._parser: ResponseParser | None = None  # the one for the answer in flight
        self._spare: ResponseParser | None = None  # one to reset for the next answer
        self._closed_here = False  # close() or abort() was called

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if self._parser is None or waiter is None or waiter.done():
            # Bytes nobody asked for (a late or extra answer, a "408" before closing): this
            # connection's framing can no longer be trusted.
            self.close()
            return
        self._advance(data)

    def eof_received(self) -> bool:
        if self._parser is not None:
            self._advance(None)  # the end of a read-until-close answer
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._pool._forget(self)
        if exc is None and self._parser is not None:
            self._advance(None)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._closed_error(exc))
        self._parser = None
        if not self.lost.done():
            self.lost.set_result(None)

    # -- used by the pool

    @property
    def usable(self) -> bool:
        t = self.transport
        return self.reusable and t is not None and not t.is_closing()

    def send(self, data: bytes, *, no_body: bool = False) -> asyncio.Future[HttpResponse]:
        """Write one request; the future gets its answer. ``no_body``: a ``HEAD`` request."""
        assert self.transport is not None
        waiter = self._pool.loop.create_future()
        self._waiter = waiter
        parser = self._parser = self._spare or ResponseParser()
        parser.reset(head_request=no_body)
        self._spare = None
        self.transport.write(data)
        return waiter

    def close(self, *, abort: bool = False) -> None:
        self.reusable = False
        self._closed_here = True
        if self.transport is not None:
            self.transport.abort() if abort else self.transport.close()

    def abort(self) -> None:
        self.close(abort=True)

    def _advance(self, data: bytes | None) -> None:
        """Feeds the parser ``data`` (``None``: the end of the stream); settles the waiter."""
        parser, waiter = self._parser, self._waiter
        assert parser is not None and waiter is not None
        try:
            response = parser.feed(data) if data is not None else parser.feed_eof()
        except BadResponse as exc:
            self._parser = None
            if not waiter.done():
                waiter.set_exception(exc)
            self.close()
            return
        if response is not None:
            self._parser = None
            self.exchanges += 1
            self.reusable = self.reusable and parser.reusable
            if self.reusable and data is not None and not parser.head_request:
                self._spare = parser  # llhttp is at the start of the next answer
            if not waiter.done():
                waiter.set_result(response)

    def _closed_error(self, exc: Exception | None) -> ConnectionClosed:
        reason = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        parser = self._parser
        if self.exchanges and not self._closed_here and parser is not None and not parser.received:
            return StaleConnectionClosed(
                f"the kept-alive connection closed before any byte of the answer{reason}"
            )
        return ConnectionClosed(f"the connection closed before a complete answer{reason}")


class HttpPool:
    """Keep-alive connections to one ``host:port``; at most ``max_connections`` at once.

    ``clock`` (default :func:`~poller.core.clock.system_clock`) times idle connections and the
    address cache; connect timeouts are the event loop's.

    Use as ``async with HttpPool(...) as pool:`` (or call :meth:`aclose`), from one event loop.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 64,
        connect_timeout_s: float | None = None,
        idle_timeout_s: float = 15.0,
        dns_ttl_s: float = 300.0,
        clock: Clock | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._host_header = host if port in (80, 443) else f"{host}:{port}"
        if ":" in host and not host.startswith("["):  # an IPv6 literal
            self._host_header = f"[{host}]" if port in (80, 443) else f"[{host}]:{port}"
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._dns_ttl_s = dns_ttl_s
        self._clock: Clock = clock if clock is not None else system_clock()
        self._addresses: Sequence[AddrInfo] = ()
        self._resolved_at = 0.0
        self._lookup_error: OSError | None = None  # the last lookup's failure, if it failed
        self._failed_at = 0.0
        self._lookup: asyncio.Task[Sequence[AddrInfo]] | None = None
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        #: Connections opened so far (TCP, and TLS where used).
        self.connections_opened = 0

    def __repr__(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"<HttpPool {scheme}://{self._host_header} open={len(self._open)}>"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def __aenter__(self) -> HttpPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes = b""
    ) -> HttpResponse:
        """Send one request and return its complete answer. Never retries."""
        if self._closed:
            raise RuntimeError("HttpPool is closed")
        data = encode_request(method, target, self._host_header, headers, body)
        async with self._slots:
            conn = self._take_idle()
            if conn is None:
                conn = await self._connect()
            try:
                response = await conn.send(data, no_body=method == "HEAD")
            except BaseException:
                conn.abort()
                raise
            if conn.usable and not self._closed:
                self._put_idle(conn)
            else:
                conn.close()
            return response

    async def aclose(self) -> None:
        """Close every connection and wait (briefly) until they are gone."""
        self._closed = True
        lookup, self._lookup = self._lookup, None
        if lookup is not None and not lookup.done():
            lookup.cancel()
            await asyncio.wait([lookup], timeout=1.0)
        conns = list(self._open)
        self._idle.clear()
        for conn in conns:
            conn.close()
        pending = [c.lost for c in conns if not c.lost.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=1.0)
            for conn in conns:
                if not conn.lost.done():
                    conn.abort()
            if late:
                await asyncio.wait(late, timeout=1.0)

    def _put_idle(self, conn: _Connection) -> None:
        now = self._clock.monotonic()
        conn.idle_since = now
        idle = self._idle
        # Most recently used last (taken first); the oldest, at the bottom, expire here even
        # while the ones on top keep being reused.
        while idle and now - idle[0].idle_since > self._idle_timeout_s:
            idle.pop(0).close()
        idle.append(conn)

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = self._clock.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.usable:
                continue
            if now - conn.idle_since > self._idle_timeout_s:
                conn.close()
                continue
            return conn
        return None

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    async def _connect(self) -> _Connection:
        deadline = asyncio.timeout(self._connect_timeout_s)
        try:
            async with deadline:
                return await self._open_connection()
        except TimeoutError:
            if not deadline.expired():
                raise  # the operating system's own connect timeout (ETIMEDOUT), an OSError
            raise ConnectTimeout(
                f"no connection to {self._host_header} within {self._connect_timeout_s:g} s"
            ) from None

    async def _resolve(self) -> Sequence[AddrInfo]:
        """The endpoint's addresses, from the cache while it is fresh; a failed lookup falls
        back to the last known addresses (a resolver outage does not stop polling), and is not
        repeated within :data:`DNS_FAILURE_HOLD_S`."""
        now = self._clock.monotonic()
        if self._addresses and now - self._resolved_at < self._dns_ttl_s:
            return self._addresses
        error = self._lookup_error
        if error is not None and now - self._failed_at < DNS_FAILURE_HOLD_S:
            if self._addresses:
                return self._addresses
            raise copy.copy(error).with_traceback(None)  # a fresh copy: no growing traceback
        lookup = self._lookup
        if lookup is None:
            lookup = self._lookup = self.loop.create_task(self._lookup_addresses())
            lookup.add_done_callback(self._lookup_done)
        try:
            # Shielded: one waiter's timeout must not cancel the lookup the others share.
            return await asyncio.shield(lookup)
        except OSError:
            if self._addresses:
                return self._addresses
            raise

    async def _lookup_addresses(self) -> Sequence[AddrInfo]:
        try:
            infos = await self.loop.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
            if not infos:
                raise OSError(f"no address for {self.host!r}")
        except OSError as exc:
            self._lookup_error = exc
            self._failed_at = self._clock.monotonic()
            raise
        self._addresses = infos
        self._resolved_at = self._clock.monotonic()
        self._lookup_error = None
        return infos

    def _lookup_done(self, task: asyncio.Task[Sequence[AddrInfo]]) -> None:
        if self._lookup is task:
            self._lookup = None
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is never logged

    async def _open_connection(self) -> _Connection:
        loop = self.loop
        addresses = await self._resolve()
        sock = await aiohappyeyeballs.start_connection(
            addresses, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY_S, interleave=1, loop=loop
        )
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        # From here on the loop owns the socket (it closes it if the TLS handshake fails).
        _, conn = await loop.create_connection(
            lambda: _Connection(self),
            sock=sock,
            ssl=self._ssl,
            server_hostname=self.host if self._ssl is not None else None,
        )
        self.connections_opened += 1
        if self._closed:
            conn.close()
            raise RuntimeError("HttpPool is closed")
        self._open.add(conn)
        return conn
