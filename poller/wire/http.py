"""A small HTTP/1.1 client for one origin: keep-alive connections, one exchange at a time each.

poller sends thousands of near-identical small POSTs per second to a single host, and a
general-purpose client's per-request machinery (URL handling, cookie jars, redirects, tracing,
header multidicts, payload objects) costs more CPU than everything else poller does per request.
:class:`HttpPool` does only what this job needs:

* the request is serialized into one ``bytes`` and written with one ``transport.write``;
* the response is parsed by a small state machine in ``data_received``: status line, headers,
  then a ``Content-Length``, ``chunked`` or read-until-close body (``gzip``/``deflate`` bodies are
  decoded; the request never asks for them);
* connections are reused while the server keeps them alive (most recently used first), are
  dropped after ``idle_timeout_s`` unused, and are never shared by two requests at once;
* new connections race the endpoint's addresses (RFC 8305 "happy eyeballs", by
  ``aiohappyeyeballs``), and the addresses are cached for ``dns_ttl_s``: one lookup at a time,
  shared by every connection waiting for it, and the last known addresses are kept if a later
  lookup fails;
* a connection whose exchange failed, timed out, was cancelled or ended in anything unexpected is
  closed, never reused; a request is never re-sent by this module (the caller re-signs, since a
  signed request carries a single-use nonce).

Anything that is not a well-formed HTTP/1.x answer raises :class:`BadResponse`; a connection
that ends before a complete answer raises :class:`ConnectionClosed`; socket and TLS errors are
the ``OSError`` subclasses the loop raises. It works with the stdlib event loop and uvloop, over
plain TCP or TLS (``ssl_context``, with SNI and hostname checking from the context).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import string
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import aiohappyeyeballs

from poller.core.clock import Clock, system_clock

__all__ = [
    "BadResponse",
    "ConnectTimeout",
    "ConnectionClosed",
    "ForeignHttpError",
    "HttpError",
    "HttpPool",
    "HttpResponse",
    "describe_error",
    "encode_request",
]

#: A response head (status line and headers) larger than this is refused.
MAX_HEAD_BYTES: Final = 64 * 1024
#: A response body larger than this (after decoding) is refused.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE, _IDLE = range(7)
_HEX_DIGITS: Final = frozenset(b"0123456789abcdefABCDEF")
#: Headers the pool frames itself; a caller may not set them.
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})
#: RFC 9110 token characters, the only ones a header name may have.
_TOKEN_CHARS: Final = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
#: Header names already checked (the same few names go out with every request).
_checked_names: set[str] = set()
#: Delay before racing the next address of the endpoint (RFC 8305 recommends 250 ms).
HAPPY_EYEBALLS_DELAY_S: Final = 0.25

AddrInfo = tuple[Any, Any, int, str, tuple[Any, ...]]


class HttpError(Exception):
    """No usable HTTP answer (besides ``OSError``, which the event loop raises as it is).

    The transport-neutral failures: every transport of :mod:`poller.wire.client` raises these
    (or ``OSError``, or ``TimeoutError``), never its own library's exceptions.
    """


class ConnectionClosed(HttpError):
    """The connection ended before a complete answer arrived."""


class BadResponse(HttpError):
    """The bytes received are not a well-formed HTTP/1.x answer."""


class ConnectTimeout(HttpError):
    """No connection (TCP and TLS) within the connect timeout."""


class ForeignHttpError(HttpError):
    """Another HTTP client library's failure, translated: its message is the original's
    :func:`describe_error` text (query redacted), and the original is its ``__cause__``
    (raise it ``from`` the original)."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(describe_error(original))


def describe_error(exc: BaseException) -> str:
    """``"<type>: <text>"`` for a transport error, without any URL query (V1 puts the signature
    and token there); a :class:`ForeignHttpError` is described as its original was."""
    if isinstance(exc, ForeignHttpError):
        return str(exc)
    text = str(exc) or type(exc).__name__
    if "?" in text:
        text = text.split("?", 1)[0] + "?<redacted>"
    return f"{type(exc).__name__}: {text}"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    #: Lower-cased names; repeated headers are joined with ", ".
    headers: dict[str, str]
    body: bytes


def encode_request(
    method: str, target: str, host: str, headers: Mapping[str, str], body: bytes
) -> bytes:
    """One HTTP/1.1 request as bytes: the given headers in order, ``Host`` first if absent (in
    any letter case), then ``Content-Length``.

    Raises ``ValueError`` on what would corrupt the request: a header name that is not an
    RFC 9110 token, a line break or NUL in a header value, a space or control character in the
    method or target, or a framing header set by the caller.
    """
    if not method.isalpha() or not method.isascii():
        raise ValueError(f"bad HTTP method {method[:20]!r}")
    if not target.startswith("/") or not target.isprintable() or " " in target:
        raise ValueError("the request target must start with '/' and hold no space or control")
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    has_host = False
    for name, value in headers.items():
        if name not in _checked_names:
            _check_header_name(name)
        if "\n" in value or "\r" in value or "\0" in value:
            raise ValueError(f"HTTP header {name!r} has a line break or NUL in its value")
        lowered = name.lower()
        if lowered == "host":
            has_host = True
        elif lowered in _FRAMING_HEADERS:
            raise ValueError(f"HTTP header {name!r} is set by the pool, not the caller")
        lines.append(f"{name}: {value}\r\n")
    if not has_host:
        lines.insert(1, f"Host: {host}\r\n")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "".join(lines).encode("utf-8") + body


def _check_header_name(name: str) -> None:
    if not name or not _TOKEN_CHARS.issuperset(name):
        raise ValueError(f"bad HTTP header name {name[:40]!r}")
    if len(_checked_names) < 1024:
        _checked_names.add(name)


def _decode_body(encoding: str, body: bytes) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip", "deflate"):
        # 47 = 32 + 15: zlib or gzip header, detected; raw deflate as a fallback for "deflate".
        for wbits in (47, -15):
            decoder = zlib.decompressobj(wbits)
            try:
                out = decoder.decompress(body, MAX_BODY_BYTES + 1)
            except zlib.error:
                continue
            if len(out) > MAX_BODY_BYTES:
                raise BadResponse(f"decoded body over {MAX_BODY_BYTES} bytes")
            if not decoder.eof:
                raise BadResponse(f"{encoding} body is truncated")
            return out
        raise BadResponse(f"body is not valid {encoding}")
    raise BadResponse(f"unsupported Content-Encoding {encoding!r}")


def _parse_header_lines(lines: list[str]) -> dict[str, str]:
    """Header lines into lower-cased names; repeated headers are joined with ", "."""
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or "\n" in line:
            raise BadResponse(f"malformed header line {line[:60]!r}")
        name = name.lower()
        value = value.strip(" \t")
        if name in headers:
            if name == "content-length" and headers[name] != value:
                raise BadResponse("conflicting Content-Length headers")
            if name != "content-length":
                headers[name] += ", " + value
        else:
            headers[name] = value
    return headers


class _Connection(asyncio.Protocol):
    """One connection and the parser for the answer to the request in flight on it."""

    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self.idle_since = 0.0
        self.lost: asyncio.Future[None] = pool.loop.create_future()
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._buf = bytearray()
        self._state = _IDLE
        self._status = 0
        self._headers: dict[str, str] = {}
        self._remaining = 0
        self._chunked = bytearray()
        self._scanned = 0  # how far the search for a line end got, so it never rescans
        self._no_body = False  # answering a HEAD request

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Bytes nobody asked for (a late or extra answer, a "408" before closing): this
            # connection's framing can no longer be trusted.
            self.reusable = False
            self.close()
            return
        self._buf += data
        try:
            self._parse()
        except BadResponse as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        if self._state == _UNTIL_CLOSE:
            self._finish(bytes(self._buf))
            self._buf.clear()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._pool._forget(self)
        if self._state == _UNTIL_CLOSE and exc is None:
            self._finish(bytes(self._buf))
            self._buf.clear()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            reason = f": {type(exc).__name__}: {exc}" if exc is not None else ""
            message = f"the connection closed before a complete answer{reason}"
            waiter.set_exception(ConnectionClosed(message))
        if not self.lost.done():
            self.lost.set_result(None)

    # -- used by the pool

    @property
    def usable(self) -> bool:
        t = self.transport
        return self.reusable and t is not None and not t.is_closing()

    def send(self, data: bytes, *, no_body: bool = False) -> asyncio.Future[HttpResponse]:
        assert self.transport is not None
        waiter = self._pool.loop.create_future()
        self._waiter = waiter
        self._no_body = no_body
        self._state = _HEAD
        self._scanned = 0
        self._buf.clear()
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # -- parsing

    def _fail(self, exc: HttpError) -> None:
        self.reusable = False
        self._state = _IDLE
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def _finish(self, body: bytes) -> None:
        self._state = _IDLE
        encoding = self._headers.get("content-encoding")
        if encoding is not None and body:
            try:
                body = _decode_body(encoding, body)
            except BadResponse as exc:
                self._fail(exc)
                return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(HttpResponse(self._status, self._headers, body))

    def _parse(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3), MAX_HEAD_BYTES + 4)
                if end < 0:
                    if len(buf) >= MAX_HEAD_BYTES + 4:
                        raise BadResponse(f"response head over {MAX_HEAD_BYTES} bytes")
                    self._scanned = len(buf)
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._scanned = 0
                self._parse_head(head)
            elif state == _LENGTH:
                n = self._remaining
                if len(buf) < n:
                    return
                body = bytes(buf[:n])
                del buf[:n]
                self._finish(body)
            elif state == _CHUNK_SIZE:
                if not self._parse_chunk_size():
                    return
            elif state == _CHUNK_DATA:
                n = self._remaining
                if len(buf) < n + 2:
                    return
                if buf[n : n + 2] != b"\r\n":
                    raise BadResponse("chunk not followed by CRLF")
                self._chunked += buf[:n]
                del buf[: n + 2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if not self._parse_trailer_line():
                    return
            elif state == _UNTIL_CLOSE:
                if len(buf) > MAX_BODY_BYTES:
                    raise BadResponse(f"body over {MAX_BODY_BYTES} bytes")
                return
            else:  # _IDLE: a complete answer was delivered
                if buf:
                    # More bytes than the answer framed: do not reuse this connection.
                    self.reusable = False
                    buf.clear()
                return

    def _parse_chunk_size(self) -> bool:
        """Consume a chunk-size line; ``False`` if it has not fully arrived yet."""
        buf = self._buf
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > 1024:
                raise BadResponse("chunk size line too long")
            return False
        line = bytes(buf[:end]).split(b";", 1)[0].strip(b" \t")
        del buf[: end + 2]
        if not line or len(line) > 16 or not _HEX_DIGITS.issuperset(line):
            raise BadResponse(f"bad chunk size {line[:20]!r}")
        size = int(line, 16)
        if size == 0:
            self._state = _TRAILERS
        else:
            if len(self._chunked) + size > MAX_BODY_BYTES:
                raise BadResponse(f"body over {MAX_BODY_BYTES} bytes")
            self._remaining = size
            self._state = _CHUNK_DATA
        return True

    def _parse_trailer_line(self) -> bool:
        """Consume a trailer line (the empty one ends the answer); ``False`` if it has not
        fully arrived yet."""
        buf = self._buf
        end = buf.find(b"\r\n", max(0, self._scanned - 1))
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise BadResponse(f"trailers over {MAX_HEAD_BYTES} bytes")
            self._scanned = len(buf)
            return False
        del buf[: end + 2]
        self._scanned = 0
        if end == 0:
            body = bytes(self._chunked)
            self._chunked = bytearray()
            self._finish(body)
        return True

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if (
            version not in ("HTTP/1.1", "HTTP/1.0")
            or len(code) != 3
            or not (code.isascii() and code.isdigit())
            or rest[3:4] not in ("", " ")
        ):
            raise BadResponse(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
        status = int(code)
        headers = _parse_header_lines(lines[1:])
        if 100 <= status < 200:
            if status == 101:
                raise BadResponse("unexpected 101 Switching Protocols")
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self._status = status
        self._headers = headers
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            if "close" in connection:
                self.reusable = False
        elif "keep-alive" not in connection:
            self.reusable = False
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if self._no_body or status == 204 or status == 304:
            self._finish(b"")
        elif te is not None:
            if cl is not None:
                self.reusable = False  # both framings: a smuggling risk, never reuse (RFC 9112)
            if te.rsplit(",", 1)[-1].strip().lower() == "chunked":
                self._chunked = bytearray()
                self._state = _CHUNK_SIZE
            else:
                self.reusable = False
                self._state = _UNTIL_CLOSE
        elif cl is not None:
            if not (cl.isascii() and cl.isdigit()) or len(cl) > 18:
                raise BadResponse(f"bad Content-Length {cl[:20]!r}")
            n = int(cl)
            if n > MAX_BODY_BYTES:
                raise BadResponse(f"body over {MAX_BODY_BYTES} bytes")
            if n == 0:
                self._finish(b"")
            else:
                self._remaining = n
                self._state = _LENGTH
        else:
            self.reusable = False
            self._state = _UNTIL_CLOSE


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
        back to the last known addresses (a resolver outage does not stop polling)."""
        if self._addresses and self._clock.monotonic() - self._resolved_at < self._dns_ttl_s:
            return self._addresses
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
        infos = await self.loop.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        if not infos:
            raise OSError(f"no address for {self.host!r}")
        self._addresses = infos
        self._resolved_at = self._clock.monotonic()
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
