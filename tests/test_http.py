"""poller.wire.http: the request bytes on the wire, response framing, keep-alive reuse, failures.

Most tests talk to :class:`RawServer`, a scripted server on 127.0.0.1 that records the exact
request bytes it receives and answers with exact response bytes (optionally in pieces), so both
directions of the wire are checked byte for byte. A few parser tests feed ``_Connection``
directly, which is the only way to make every split point of a response happen for certain.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import itertools
import os
import socket
import ssl
import string
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.wire.http import (
    DNS_FAILURE_HOLD_S,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    BadResponse,
    ConnectionClosed,
    ConnectTimeout,
    ForeignHttpError,
    HttpError,
    HttpPool,
    HttpResponse,
    StaleConnectionClosed,
    _Connection,
    describe_error,
    encode_request,
)
from tests.conftest import FakeClock

#: Safety net for every awaited exchange; nothing here should take more than a fraction of it.
BOUND_S = 5.0

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# -- a scripted raw server -------------------------------------------------------------------


@dataclass(frozen=True)
class SeenRequest:
    """One request as the server received it."""

    conn: int  # which connection it came on, in accept order (0-based)
    index: int  # its position among all requests the server received
    head: bytes  # request line and headers, including the final CRLF CRLF
    body: bytes

    @property
    def request_line(self) -> str:
        return self.head.decode("latin-1").split("\r\n", 1)[0]

    @property
    def method(self) -> str:
        return self.request_line.split(" ")[0]

    @property
    def target(self) -> str:
        return self.request_line.split(" ")[1]

    @property
    def headers(self) -> list[tuple[str, str]]:
        lines = self.head.decode("latin-1").split("\r\n")[1:-2]
        return [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines)]


After = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class Reply:
    """What the server does with one request."""

    data: bytes | Sequence[bytes] = OK  # written as is; a sequence is written piece by piece
    close: bool = False  # close the connection after writing
    hang: bool = False  # write nothing; wait until the client goes away
    pause: float = 0.0  # sleep after each piece (so the client reads them separately)
    after: After | None = None  # run after writing; the connection is closed when it returns


Respond = Callable[[SeenRequest], Reply | bytes | Awaitable[Reply | bytes]]


def response(
    body: bytes = b"ok",
    status: int = 200,
    reason: str = "OK",
    headers: Sequence[tuple[str, str]] = (),
    version: str = "HTTP/1.1",
) -> bytes:
    """A response framed by Content-Length."""
    lines = [f"{version} {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*chunks: bytes, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A chunked 200 response."""
    lines = ["HTTP/1.1 200 OK", *(f"{k}: {v}" for k, v in headers), "Transfer-Encoding: chunked"]
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    for chunk in chunks:
        out += b"%x\r\n%s\r\n" % (len(chunk), chunk)
    return out + b"0\r\n\r\n"


def echo(req: SeenRequest) -> bytes:
    """Answers with the request line's method and target, a newline, then the request body."""
    return response(f"{req.method} {req.target}\n".encode() + req.body)


def echoed(target: str, method: str = "GET", body: bytes = b"") -> bytes:
    return f"{method} {target}\n".encode() + body


def scripted(*replies: Reply | bytes) -> Respond:
    """The n-th request (over all connections) gets the n-th reply; later ones get echo()."""

    def respond(req: SeenRequest) -> Reply | bytes:
        return replies[req.index] if req.index < len(replies) else echo(req)

    return respond


def wave(size: int) -> Respond:
    """Holds the first ``size`` requests until all of them have arrived, which needs ``size``
    connections at once, then echoes every request."""
    barrier = asyncio.Barrier(size)

    async def respond(req: SeenRequest) -> bytes:
        if req.index < size:
            await asyncio.wait_for(barrier.wait(), BOUND_S)
        return echo(req)

    return respond


class RawServer:
    """A scripted HTTP/1.1 server on 127.0.0.1 (port 0); ``async with`` starts and stops it."""

    def __init__(self, respond: Respond = echo, *, ssl_context: ssl.SSLContext | None = None):
        self._respond = respond
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.requests: list[SeenRequest] = []
        #: Connections accepted so far.
        self.accepted = 0
        #: Connections the client closed cleanly while the server waited for a request.
        self.client_eofs = 0
        #: Connections that are over (for whatever reason).
        self.finished = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._ssl)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=2.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        conn = self.accepted
        self.accepted += 1
        try:
            await self._serve(conn, reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away mid-exchange
        except asyncio.CancelledError:
            pass  # stopped by __aexit__ (a test failed while this handler was waiting)
        finally:
            self.finished += 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), BOUND_S)
            self._writers.discard(writer)

    async def _serve(
        self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    self.client_eofs += 1
                return
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            req = SeenRequest(conn, len(self.requests), head, body)
            self.requests.append(req)
            answer = self._respond(req)
            if not isinstance(answer, Reply | bytes):
                answer = await answer
            reply = Reply(answer) if isinstance(answer, bytes) else answer
            if reply.hang:
                await reader.read()  # until the client closes or aborts
                return
            for piece in [reply.data] if isinstance(reply.data, bytes) else reply.data:
                writer.write(piece)
                await writer.drain()
                if reply.pause:
                    await asyncio.sleep(reply.pause)
            if reply.after is not None:
                await reply.after(reader, writer)
                return
            if reply.close:
                return


def pool_for(
    server: RawServer,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int = 4,
    idle_timeout_s: float = 15.0,
    connect_timeout_s: float | None = None,
) -> HttpPool:
    return HttpPool(
        "127.0.0.1",
        server.port,
        ssl_context=ssl_context,
        max_connections=max_connections,
        idle_timeout_s=idle_timeout_s,
        connect_timeout_s=connect_timeout_s,
    )


async def fetch(
    pool: HttpPool,
    target: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> HttpResponse:
    return await asyncio.wait_for(pool.request(method, target, headers or {}, body), BOUND_S)


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for something the event loop is about to make true."""
    for _ in range(int(BOUND_S / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"gave up waiting until {what}")


def open_connections(pool: HttpPool) -> int:
    """Connections the pool still holds (the one peek into HttpPool's private state)."""
    return len(pool._open)


# -- 1. the request on the wire -------------------------------------------------------------


def test_encode_request_exact_bytes() -> None:
    raw = encode_request(
        "POST",
        "/?Action=BatchGetOnlineUsers&AppId=a%20b",
        "live.aliyuncs.com",
        {"Content-Type": "application/json", "x-acs-signature-nonce": "n-1", "A": ""},
        b'{"k": [1, 2]}',
    )
    assert raw == (
        b"POST /?Action=BatchGetOnlineUsers&AppId=a%20b HTTP/1.1\r\n"
        b"Host: live.aliyuncs.com\r\n"
        b"Content-Type: application/json\r\n"
        b"x-acs-signature-nonce: n-1\r\n"
        b"A: \r\n"
        b"Content-Length: 13\r\n"
        b"\r\n"
        b'{"k": [1, 2]}'
    )


def test_encode_request_without_body_says_length_zero() -> None:
    assert encode_request("GET", "/", "h", {}, b"") == (
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
    )


@pytest.mark.parametrize("name", ["Host", "host"])
def test_encode_request_keeps_the_callers_host_where_it_is(name: str) -> None:
    raw = encode_request("GET", "/", "default", {"X-A": "1", name: "given:8080", "X-B": "2"}, b"")
    assert (
        raw
        == (
            f"GET / HTTP/1.1\r\nX-A: 1\r\n{name}: given:8080\r\nX-B: 2\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )


@pytest.mark.parametrize("name", ["HOST", "hOsT"])
def test_encode_request_host_check_ignores_case(name: str) -> None:
    raw = encode_request("GET", "/", "default", {name: "given"}, b"")
    head_lines = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert [line for line in head_lines if line.lower().startswith(b"host:")] == [
        name.encode() + b": given"
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Nonce", "abc\r\nX-Injected: 1"),
        ("X-Nonce", "abc\nX-Injected: 1"),
        ("X-Nonce", "abc\r"),
        ("X-Nonce", "\r\n\r\nGET /smuggled HTTP/1.1"),
        ("X-Nonce\r\nX-Injected", "1"),
        ("X-Nonce\n", "1"),
        ("\r", "1"),
    ],
)
def test_encode_request_refuses_line_breaks_in_headers(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=r"line break|bad HTTP header name"):
        encode_request("POST", "/", "h", {"X-Ok": "1", name: value}, b"body")


TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F)) + "\t"
header_names = st.text(st.sampled_from(TOKEN_CHARS), min_size=1, max_size=20)
header_values = st.text(st.sampled_from(VALUE_CHARS), max_size=30)


@settings(max_examples=100)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    target=st.from_regex(r"/[A-Za-z0-9/?=&%._~-]{0,40}", fullmatch=True),
    headers=st.dictionaries(
        header_names.filter(lambda n: n.lower() not in ("host", "content-length")),
        header_values,
        max_size=8,
    ),
    body=st.binary(max_size=300),
)
def test_encode_request_round_trips(
    method: str, target: str, headers: dict[str, str], body: bytes
) -> None:
    raw = encode_request(method, target, "example.com:8443", headers, body)
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep and rest == body
    lines = head.decode().split("\r\n")
    assert lines[0] == f"{method} {target} HTTP/1.1"
    assert lines[1] == "Host: example.com:8443"
    assert lines[2:-1] == [f"{name}: {value}" for name, value in headers.items()]
    assert lines[-1] == f"Content-Length: {len(body)}"


async def test_request_bytes_on_the_wire() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB, every byte value: more than one socket write
    async with RawServer() as server, pool_for(server) as pool:
        answer = await fetch(
            pool,
            "/upload?x=1",
            method="PUT",
            headers={"X-B": "2", "Content-Type": "application/octet-stream", "X-A": "1"},
            body=body,
        )
        assert answer.status == 200 and answer.body == echoed("/upload?x=1", "PUT", body)
        [seen] = server.requests
        assert seen.head == (
            b"PUT /upload?x=1 HTTP/1.1\r\n"
            + f"Host: 127.0.0.1:{server.port}\r\n".encode()
            + b"X-B: 2\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"X-A: 1\r\n"
            b"Content-Length: 262144\r\n\r\n"
        )
        assert seen.body == body


async def test_callers_host_header_is_sent_instead_of_the_default() -> None:
    async with RawServer() as server, pool_for(server) as pool:
        await fetch(pool, headers={"host": "api.example.com"})
        [seen] = server.requests
        assert [v for n, v in seen.headers if n.lower() == "host"] == ["api.example.com"]


@pytest.mark.parametrize("port", [80, 443])
async def test_host_header_leaves_out_the_default_port(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with RawServer() as server:
        loop = asyncio.get_running_loop()
        real_connect = loop.sock_connect
        dialled: list[Any] = []

        async def redirect(sock: socket.socket, address: Any) -> None:
            dialled.append(address)
            await real_connect(sock, ("127.0.0.1", server.port))

        monkeypatch.setattr(loop, "sock_connect", redirect)
        async with HttpPool("127.0.0.1", port) as pool:
            await fetch(pool)
        assert dialled == [("127.0.0.1", port)]
        [seen] = server.requests
        assert ("Host", "127.0.0.1") in seen.headers


async def test_header_injection_is_refused_before_anything_is_sent() -> None:
    async with RawServer() as server, pool_for(server) as pool:
        with pytest.raises(ValueError, match="line break"):
            await fetch(pool, headers={"X-Nonce": "1\r\nX-Evil: 1"})
        assert pool.connections_opened == 0
        assert (await fetch(pool, "/after")).body == echoed("/after")
    assert server.accepted == 1
    assert [r.target for r in server.requests] == ["/after"]


# -- 2. response framing ----------------------------------------------------------------------

GZIPPED_TEXT = b"presence " * 200
PACKED = gzip.compress(GZIPPED_TEXT)


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


@dataclass(frozen=True)
class Framing:
    raw: bytes
    status: int
    headers: dict[str, str]
    body: bytes
    reused: bool | None  # None: not asserted
    close: bool = False  # the server closes the connection after writing ``raw``
    exact_headers: bool = True  # False: ``headers`` only has to be a subset


FRAMINGS = [
    pytest.param(
        Framing(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
            b"X-Acs-Request-Id: 7A5F\r\n\r\n"
            b'{"ok":true}',
            200,
            {
                "content-type": "application/json",
                "content-length": "11",
                "x-acs-request-id": "7A5F",
            },
            b'{"ok":true}',
            reused=True,
        ),
        id="content-length",
    ),
    pytest.param(
        Framing(
            response(b"HTTP/1.1 404 X\r\n\r\n\x00\xff\r\n\r\n0\r\n\r\n"),
            200,
            {"content-length": "29"},
            b"HTTP/1.1 404 X\r\n\r\n\x00\xff\r\n\r\n0\r\n\r\n",
            reused=True,
        ),
        id="binary-body-that-looks-like-http",
    ),
    pytest.param(
        Framing(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, {"content-length": "0"}, b"", True
        ),
        id="content-length-0",
    ),
    pytest.param(
        Framing(b"\r\n\r\n" + OK, 200, {"content-length": "2"}, b"ok", reused=True),
        id="empty-lines-before-the-status-line",  # llhttp skips them (RFC 9112 section 2.2)
    ),
    pytest.param(
        Framing(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\n"
            b'1 ;quoted="a;b"\r\n \r\n'
            b"A\r\n0123456789\r\n"
            b"00b\r\n, chunked!!\r\n"
            b"4\r\n\r\n\r\n\r\n"
            b"0;last\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n",
            200,
            {"transfer-encoding": "chunked"},
            b"hello 0123456789, chunked!!\r\n\r\n",
            reused=True,
            exact_headers=False,
        ),
        id="chunked-extensions-trailers",
    ),
    pytest.param(
        Framing(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n1a\r\n"
            + string.ascii_lowercase.encode()
            + b"\r\n0\r\n\r\n",
            200,
            {"transfer-encoding": "Chunked"},
            string.ascii_lowercase.encode(),
            reused=True,
        ),
        id="chunked-lowercase-hex",
    ),
    pytest.param(
        Framing(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            200,
            {"transfer-encoding": "chunked"},
            b"",
            True,
        ),
        id="chunked-empty",
    ),
    pytest.param(
        Framing(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nno length: read until close",
            200,
            {"content-type": "text/plain"},
            b"no length: read until close",
            reused=False,
            close=True,
        ),
        id="read-until-close",
    ),
    pytest.param(
        Framing(b"HTTP/1.1 200 OK\r\n\r\n", 200, {}, b"", reused=False, close=True),
        id="read-until-close-empty",
    ),
    pytest.param(
        Framing(b"HTTP/1.1 204 No Content\r\nX-Id: 1\r\n\r\n", 204, {"x-id": "1"}, b"", True),
        id="204",
    ),
    pytest.param(
        Framing(b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\n\r\n', 304, {"etag": '"e"'}, b"", True),
        id="304",
    ),
    pytest.param(
        Framing(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            201,
            {"content-length": "2"},
            b"ok",
            reused=True,
        ),
        id="interim-100-103",
    ),
    pytest.param(
        Framing(
            response(gzip.compress(GZIPPED_TEXT), headers=[("Content-Encoding", "gzip")]),
            200,
            {"content-encoding": "gzip", "content-length": str(len(gzip.compress(GZIPPED_TEXT)))},
            GZIPPED_TEXT,
            reused=True,
        ),
        id="gzip",
    ),
    pytest.param(
        Framing(
            response(gzip.compress(GZIPPED_TEXT), headers=[("Content-Encoding", "X-GZIP")]),
            200,
            {"content-encoding": "X-GZIP"},
            GZIPPED_TEXT,
            reused=True,
            exact_headers=False,
        ),
        id="x-gzip",
    ),
    pytest.param(
        Framing(
            response(zlib.compress(GZIPPED_TEXT), headers=[("Content-Encoding", "deflate")]),
            200,
            {"content-encoding": "deflate"},
            GZIPPED_TEXT,
            reused=True,
            exact_headers=False,
        ),
        id="deflate-zlib",
    ),
    pytest.param(
        Framing(
            response(raw_deflate(GZIPPED_TEXT), headers=[("Content-Encoding", "deflate")]),
            200,
            {"content-encoding": "deflate"},
            GZIPPED_TEXT,
            reused=True,
            exact_headers=False,
        ),
        id="deflate-raw",
    ),
    pytest.param(
        Framing(
            chunked(
                gzip.compress(GZIPPED_TEXT)[:7],
                gzip.compress(GZIPPED_TEXT)[7:],
                headers=[("Content-Encoding", "gzip")],
            ),
            200,
            {"content-encoding": "gzip", "transfer-encoding": "chunked"},
            GZIPPED_TEXT,
            reused=True,
        ),
        id="gzip-chunked",
    ),
    pytest.param(
        Framing(
            response(b"", headers=[("Content-Encoding", "identity")]),
            200,
            {"content-encoding": "identity", "content-length": "0"},
            b"",
            reused=True,
        ),
        id="identity-encoding",
    ),
    pytest.param(
        Framing(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Multi: 1\r\nset-cookie: b=2\r\n"
            b"X-MULTI: 2\r\nx-multi:3\r\nX-Pad: \t padded \t\r\nX-Empty:\r\n"
            b"Content-Length: 0\r\n\r\n",
            200,
            {
                "set-cookie": "a=1, b=2",
                "x-multi": "1, 2, 3",
                "x-pad": "padded",
                "x-empty": "",
                "content-length": "0",
            },
            b"",
            reused=True,
        ),
        id="header-case-repeats-whitespace",
    ),
    pytest.param(
        Framing(
            response(b'{"Code":"Throttling"}', 503, "Service Unavailable"),
            503,
            {"content-length": "21"},
            b'{"Code":"Throttling"}',
            reused=True,
        ),
        id="503-is-an-answer",
    ),
    pytest.param(
        Framing(
            b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx", 200, {"content-length": "1"}, b"x", True
        ),
        id="no-reason-phrase",
    ),
    pytest.param(
        Framing(
            response(b"x", 599, "Some Custom Reason"), 599, {"content-length": "1"}, b"x", True
        ),
        id="599-custom-reason",
    ),
    pytest.param(
        Framing(
            response(b"kept", headers=[("Connection", "keep-alive")], version="HTTP/1.0"),
            200,
            {"connection": "keep-alive", "content-length": "4"},
            b"kept",
            reused=True,
        ),
        id="http-1.0-keep-alive",
    ),
    pytest.param(
        Framing(
            response(b"once", version="HTTP/1.0"),
            200,
            {"content-length": "4"},
            b"once",
            reused=False,
        ),
        id="http-1.0-without-keep-alive",
    ),
    pytest.param(
        Framing(
            response(b"bye", headers=[("Connection", "close")]),
            200,
            {"connection": "close", "content-length": "3"},
            b"bye",
            reused=False,
        ),
        id="connection-close",
    ),
    pytest.param(
        Framing(
            response(b"bye", headers=[("Connection", "Keep-Alive, Close")]),
            200,
            {"connection": "Keep-Alive, Close", "content-length": "3"},
            b"bye",
            reused=False,
        ),
        id="connection-close-in-a-list",
    ),
    pytest.param(
        Framing(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
            200,
            {"transfer-encoding": "chunked"},
            b"ok",
            reused=False,  # both framings: answered, but never trusted for another request
            exact_headers=False,
        ),
        id="transfer-encoding-beats-content-length",
    ),
    pytest.param(
        Framing(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(PACKED), PACKED),
            200,
            {"transfer-encoding": "gzip, chunked"},
            GZIPPED_TEXT,  # every transfer coding is removed, not only the last
            reused=True,
        ),
        id="te-gzip-chunked",
    ),
    pytest.param(
        Framing(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: x-gzip\r\nContent-Encoding: deflate\r\n\r\n"
            + gzip.compress(zlib.compress(GZIPPED_TEXT)),
            200,
            {"transfer-encoding": "x-gzip", "content-encoding": "deflate"},
            GZIPPED_TEXT,  # transfer coding removed first, then the content coding
            reused=False,  # no chunked: read until close
            close=True,
        ),
        id="te-gzip-until-close-then-content-deflate",
    ),
    pytest.param(
        Framing(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
            200,
            {"connection": "keep-alive", "transfer-encoding": "chunked"},
            b"ok",
            reused=False,  # Transfer-Encoding in HTTP/1.0: faulty framing (RFC 9112 section 6.1)
        ),
        id="http-1.0-with-transfer-encoding",
    ),
]


@pytest.mark.parametrize("case", FRAMINGS)
async def test_response_framing(case: Framing) -> None:
    """The answer comes back exactly, and the connection is reused only when its framing says
    the answer is over and the server keeps the connection (then a second request follows)."""
    async with (
        RawServer(scripted(Reply(case.raw, close=case.close))) as server,
        pool_for(server) as pool,
    ):
        first = await fetch(pool, "/first")
        second = await fetch(pool, "/second")
    assert first.status == case.status
    assert first.body == case.body
    if case.exact_headers:
        assert first.headers == case.headers
    else:
        assert first.headers.items() >= case.headers.items()
    assert second.status == 200 and second.body == echoed("/second")
    if case.reused is not None:
        connections = 1 if case.reused else 2
        assert server.accepted == pool.connections_opened == connections
        assert [r.conn for r in server.requests] == [0, connections - 1]
    if case.reused is False and not case.close:
        assert server.client_eofs >= 1  # the client closed the connection it would not reuse


# -- 3. any split of any valid response ------------------------------------------------------

FRAMING_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding"}
LATIN1_VALUE_CHARS = VALUE_CHARS + "".join(chr(c) for c in range(0xA0, 0x100))


@dataclass(frozen=True)
class ValidResponse:
    raw: bytes
    status: int
    headers: dict[str, str]
    body: bytes


@st.composite
def valid_responses(draw: st.DrawFn) -> ValidResponse:
    status = draw(st.integers(200, 599).filter(lambda s: s not in (204, 304)))
    reason = draw(st.text(st.sampled_from(string.ascii_letters + " "), max_size=16))
    lines = [f"HTTP/1.1 {status} {reason}"]
    expected: dict[str, str] = {}
    pairs = draw(
        st.lists(
            st.tuples(
                header_names.filter(lambda n: n.lower() not in FRAMING_HEADERS),
                st.text(st.sampled_from(LATIN1_VALUE_CHARS), max_size=30),
            ),
            max_size=6,
        )
    )
    for name, value in pairs:
        lines.append(f"{name}:{draw(st.sampled_from(['', ' ', chr(9)]))}{value}")
        key, value = name.lower(), value.strip(" \t")
        expected[key] = f"{expected[key]}, {value}" if key in expected else value
    body = draw(st.binary(max_size=2000))
    position = draw(st.integers(1, len(lines)))
    if draw(st.booleans()):
        lines.insert(position, "Transfer-Encoding: chunked")
        expected["transfer-encoding"] = "chunked"
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(body) - 1)), max_size=8)))
        bounds = [0, *(c for c in cuts if c < len(body)), len(body)]
        payload = b""
        for start, end in itertools.pairwise(bounds):
            if end > start:
                size = format(end - start, draw(st.sampled_from(["x", "X", "04x"])))
                ext = draw(st.sampled_from(["", ";a=b", ';q="x;y"', " ;flag"]))
                payload += f"{size}{ext}\r\n".encode() + body[start:end] + b"\r\n"
        payload += b"0\r\n" + draw(st.sampled_from([b"", b"X-Trailer: t\r\n"])) + b"\r\n"
    else:
        lines.insert(position, f"Content-Length: {len(body)}")
        expected["content-length"] = str(len(body))
        payload = body
    interim = draw(st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n"]))
    raw = interim + ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
    return ValidResponse(raw, status, expected, body)


def split(raw: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(raw)}), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def split_responses(draw: st.DrawFn) -> tuple[ValidResponse, list[bytes]]:
    answer = draw(valid_responses())
    cuts = draw(st.lists(st.integers(1, len(answer.raw) - 1), max_size=12))
    return answer, split(answer.raw, cuts)


async def serve_in_pieces(pieces: list[bytes]) -> tuple[HttpResponse, HttpResponse, int]:
    reply = Reply(pieces, pause=0.001)
    async with RawServer(scripted(reply)) as server, pool_for(server) as pool:
        first = await fetch(pool, "/first")
        second = await fetch(pool, "/second")
    return first, second, server.accepted


@settings(max_examples=50, deadline=None)
@given(split_responses())
def test_any_valid_response_in_any_pieces_over_tcp(
    example: tuple[ValidResponse, list[bytes]],
) -> None:
    answer, pieces = example
    first, second, accepted = asyncio.run(serve_in_pieces(pieces))
    assert (first.status, first.headers, first.body) == (answer.status, answer.headers, answer.body)
    # The parser consumed exactly this answer: the connection carried the next exchange too.
    assert second.body == echoed("/second")
    assert accepted == 1


class MemoryTransport(asyncio.Transport):
    """Stands in for a socket when the parser is fed directly."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview[int]) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


async def parse_in_pieces(
    pieces: Iterable[bytes], *, eof: bool = False
) -> tuple[HttpResponse, bool]:
    """Feeds one answer to a connection's parser piece by piece; returns the answer and
    whether the connection could carry another exchange."""
    conn = _Connection(HttpPool("127.0.0.1", 9))
    conn.connection_made(MemoryTransport())
    waiter = conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    for piece in pieces:
        conn.data_received(piece)
    if eof:
        conn.eof_received()
        conn.connection_lost(None)
    assert waiter.done(), "the parser did not complete the answer"
    return waiter.result(), conn.usable


TRICKY = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nx-a: 2\r\n\r\n"
    b'4;ext="q"\r\nab\r\n\r\n'
    b"10\r\n0123456789abcdef\r\n"
    b"0\r\nTrailer: x\r\n\r\n"
)


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        pytest.param(TRICKY, b"ab\r\n0123456789abcdef", id="interim+chunked"),
        pytest.param(
            response(b"\r\n\r\nbody", headers=[("X-A", "1, 2")]),
            b"\r\n\r\nbody",
            id="content-length",
        ),
    ],
)
async def test_parser_handles_every_split_point(raw: bytes, body: bytes) -> None:
    for cut in range(1, len(raw)):  # every two-piece split
        answer, reusable = await parse_in_pieces([raw[:cut], raw[cut:]])
        assert (answer.status, answer.body, answer.headers["x-a"]) == (200, body, "1, 2"), cut
        assert reusable, cut
    answer, reusable = await parse_in_pieces([raw[i : i + 1] for i in range(len(raw))])
    assert (answer.status, answer.body, reusable) == (200, body, True)


@settings(max_examples=100, deadline=None)
@given(split_responses())
def test_any_valid_response_in_any_pieces_parsed_directly(
    example: tuple[ValidResponse, list[bytes]],
) -> None:
    answer, pieces = example
    parsed, reusable = asyncio.run(parse_in_pieces(pieces))
    assert (parsed.status, parsed.headers, parsed.body) == (
        answer.status,
        answer.headers,
        answer.body,
    )
    assert reusable


async def test_read_until_close_body_in_pieces_ends_at_eof() -> None:
    raw = b"HTTP/1.1 200 OK\r\nX-A: 1, 2\r\n\r\nuntil the end"
    answer, reusable = await parse_in_pieces(split(raw, [5, 17, 30, 33]), eof=True)
    assert (answer.status, answer.body, reusable) == (200, b"until the end", False)


# -- 4. keep-alive ----------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection() -> None:
    async with RawServer() as server, pool_for(server) as pool:
        for i in range(20):
            answer = await fetch(pool, f"/r{i}", method="POST", body=b"payload %d" % i)
            assert answer.body == echoed(f"/r{i}", "POST", b"payload %d" % i)
        assert open_connections(pool) == 1
    assert server.accepted == pool.connections_opened == 1
    assert {r.conn for r in server.requests} == {0}


async def test_concurrent_requests_never_open_more_than_max_connections() -> None:
    async with RawServer(wave(3)) as server, pool_for(server, max_connections=3) as pool:
        answers = await asyncio.gather(*(fetch(pool, f"/r{i}") for i in range(30)))
    # Each caller got the answer to its own request: no connection carried two at once.
    assert [a.body for a in answers] == [echoed(f"/r{i}") for i in range(30)]
    assert server.accepted == pool.connections_opened == 3
    assert len(server.requests) == 30


async def test_most_recently_used_connection_is_taken_first() -> None:
    async with RawServer(wave(3)) as server, pool_for(server, max_connections=3) as pool:
        await asyncio.gather(*(fetch(pool, f"/burst{i}") for i in range(3)))
        for i in range(6):
            await fetch(pool, f"/calm{i}")
    # In calm traffic one connection does all the work (the other two can idle out).
    assert len({r.conn for r in server.requests[3:]}) == 1
    assert server.accepted == 3


async def test_connection_idle_past_idle_timeout_is_replaced() -> None:
    async with RawServer() as server, pool_for(server, idle_timeout_s=0.05) as pool:
        await fetch(pool, "/a")
        await asyncio.sleep(0.15)  # longer than the idle timeout, whatever the machine's speed
        assert (await fetch(pool, "/b")).body == echoed("/b")
        assert server.accepted == pool.connections_opened == 2
        await eventually(lambda: server.client_eofs == 1, "the stale connection is closed")


async def test_idle_expiry_reads_the_injected_clock() -> None:
    clock = FakeClock()
    async with RawServer() as server:
        pool = HttpPool("127.0.0.1", server.port, idle_timeout_s=10.0, clock=clock)
        async with pool:
            await fetch(pool, "/a")
            clock.now += 9.0  # still within the idle timeout, however long the test really took
            await fetch(pool, "/b")
            assert pool.connections_opened == 1
            clock.now += 10.5  # past it: the next request reconnects, and never slept for it
            await fetch(pool, "/c")
            assert server.accepted == pool.connections_opened == 2


async def test_connections_idle_at_the_bottom_expire_while_the_top_one_is_reused() -> None:
    async with (
        RawServer(wave(3)) as server,
        pool_for(server, max_connections=3, idle_timeout_s=0.05) as pool,
    ):
        await asyncio.gather(*(fetch(pool, f"/burst{i}") for i in range(3)))
        for i in range(500):  # calm traffic on the top connection, which never idles long
            await fetch(pool, f"/calm{i}")
            if server.client_eofs == 2:
                break
            await asyncio.sleep(0.005)
        assert server.client_eofs == 2, "the two connections below expired"
        assert open_connections(pool) == 1 and server.accepted == 3
        assert len({r.conn for r in server.requests[3:]}) == 1


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/a b", {}),
        ("GET", "/a\r\nX-Evil: 1", {}),
        ("GET", "no-slash", {}),
        ("GE T", "/", {}),
        ("GET\r\n", "/", {}),
        ("POST", "/", {"Content-Length": "5"}),
        ("POST", "/", {"transfer-encoding": "chunked"}),
    ],
)
def test_encode_request_refuses_what_would_corrupt_the_request(
    method: str, target: str, headers: dict[str, str]
) -> None:
    with pytest.raises(ValueError):
        encode_request(method, target, "h", headers, b"")


async def test_a_head_request_reads_no_body_and_keeps_the_connection() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
    async with RawServer(scripted(head, OK)) as server, pool_for(server) as pool:
        first = await fetch(pool, "/", method="HEAD")
        second = await fetch(pool, "/")
    assert (first.status, first.body, first.headers["content-length"]) == (200, b"", "1234")
    assert second.body == b"ok" and server.accepted == 1


# -- 5. the server closes an idle connection --------------------------------------------------


async def scenario_server_closes_idle_connection() -> None:
    """A keep-alive answer, then the server closes the connection while it is idle: the pool
    notices and the next request opens a fresh connection instead of failing."""
    async with RawServer(scripted(Reply(OK, close=True))) as server, pool_for(server) as pool:
        assert (await fetch(pool, "/a")).body == b"ok"
        await eventually(lambda: server.finished == 1, "the server closed the connection")
        await eventually(lambda: open_connections(pool) == 0, "the pool noticed")
        assert (await fetch(pool, "/b")).body == echoed("/b")
        assert server.accepted == pool.connections_opened == 2


async def test_server_closing_an_idle_connection() -> None:
    await scenario_server_closes_idle_connection()


# -- 6. failures ------------------------------------------------------------------------------

CL0 = b"Content-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"HTTP/2 200 OK\r\n" + CL0, id="http-2"),
        pytest.param(b"http/1.1 200 OK\r\n" + CL0, id="lower-case-version"),
        pytest.param(b"HTTP/1.1 OK\r\n" + CL0, id="no-status"),
        pytest.param(b"HTTP/1.1 20 OK\r\n" + CL0, id="two-digit-status"),
        pytest.param(b"HTTP/1.1 2000 OK\r\n" + CL0, id="four-digit-status"),
        pytest.param(b"HTTP/1.1 2x0 OK\r\n" + CL0, id="non-numeric-status"),
        pytest.param(b"HTTP/1.1  200 OK\r\n" + CL0, id="double-space"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", id="101"),
        pytest.param(b"HTTP/1.1 200 OK\r\nNoColonHere\r\n" + CL0, id="header-without-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\n: empty-name\r\n" + CL0, id="header-empty-name"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", id="space-before-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n" + CL0, id="obs-fold"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\n" + CL0, id="bare-lf-in-head"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", id="cl-letters"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", id="cl-negative"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", id="cl-plus"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1.0\r\n\r\nx", id="cl-decimal"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok", id="cl-hex"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", id="cl-empty"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2 2\r\n\r\nok", id="cl-two-numbers"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok", id="cl-list"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            id="cl-conflicting",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            id="cl-repeated-equal",  # llhttp refuses any repeated Content-Length
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            id="te-chunked-not-last",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: br, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            id="te-unsupported-coding",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1; q=1\r\nx\r\n0\r\n\r\n",
            id="chunk-ext-space-after-semicolon",  # llhttp: no whitespace after the ';'
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1),
            id="cl-over-max-body",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="chunk-zz"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n", id="chunk-neg"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\n", id="chunk-plus"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\n", id="chunk-0x"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", id="chunk-empty"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
            id="chunk-longer-than-its-size",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 2000,
            id="chunk-size-line-too-long",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10), id="head-over-max"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: "
            + b"t" * (2 * MAX_HEAD_BYTES + 2048),
            id="trailer-over-max",
        ),
        pytest.param(
            response(b"not gzip at all", headers=[("Content-Encoding", "gzip")]), id="bad-gzip"
        ),
        pytest.param(
            response(b"\xff\xfe\xfd\xfc", headers=[("Content-Encoding", "deflate")]),
            id="bad-deflate",
        ),
        pytest.param(response(b"x", headers=[("Content-Encoding", "br")]), id="unsupported-br"),
    ],
)
async def test_malformed_answer_raises_bad_response_and_drops_the_connection(raw: bytes) -> None:
    # The server keeps the connection open: closing it is the client's decision.
    async with RawServer(scripted(raw)) as server, pool_for(server, max_connections=1) as pool:
        with pytest.raises(BadResponse):
            await fetch(pool, "/bad")
        assert (await fetch(pool, "/next")).body == echoed("/next")
        assert server.accepted == pool.connections_opened == 2
        await eventually(lambda: server.finished == 1, "the client closed the bad connection")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="before-answering"),  # a fresh connection: never stale
        pytest.param(b"HTTP/1.1 20", id="in-status-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Len", id="in-head"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r", id="in-blank-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", id="in-body"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5", id="in-size"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", id="in-chunk"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            id="before-last-chunk",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n",
            id="in-trailers",
        ),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n", id="after-interim-answer"),
    ],
)
async def test_server_closing_mid_answer_raises_connection_closed(raw: bytes) -> None:
    async with (
        RawServer(scripted(Reply(raw, close=True))) as server,
        pool_for(server, max_connections=1) as pool,
    ):
        with pytest.raises(ConnectionClosed) as info:
            await fetch(pool, "/cut")
        assert not isinstance(info.value, StaleConnectionClosed)
        assert (await fetch(pool, "/next")).body == echoed("/next")
        assert server.accepted == pool.connections_opened == 2


async def test_connection_refused_is_an_oserror() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with HttpPool("127.0.0.1", port) as pool:
        with pytest.raises(ConnectionRefusedError):
            await fetch(pool)
        assert pool.connections_opened == 0


async def test_unsolicited_bytes_on_an_idle_connection_drop_it() -> None:
    go, gone = asyncio.Event(), asyncio.Event()

    async def late_408(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the client drops the connection
        gone.set()

    async with RawServer(scripted(Reply(OK, after=late_408))) as server, pool_for(server) as pool:
        assert (await fetch(pool, "/a")).body == b"ok"  # the connection is idle in the pool now
        go.set()
        await asyncio.wait_for(gone.wait(), BOUND_S)
        assert (await fetch(pool, "/b")).body == echoed("/b")
        assert server.accepted == pool.connections_opened == 2


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale", id="second-answer"),
        pytest.param(b"x", id="one-byte"),
    ],
)
async def test_bytes_after_a_complete_answer_stop_reuse(extra: bytes) -> None:
    async with RawServer(scripted(OK + extra)) as server, pool_for(server) as pool:
        assert (await fetch(pool, "/a")).body == b"ok"
        # Never the stale bytes: the next request gets its own answer on a new connection.
        assert (await fetch(pool, "/b")).body == echoed("/b")
        assert server.accepted == pool.connections_opened == 2


async def test_a_stray_crlf_after_an_answer_is_harmless() -> None:
    # llhttp skips empty lines between answers (RFC 9112 section 2.2): the connection may be
    # reused (or dropped, if the CRLF came in a later read), and the next answer is never off.
    async with RawServer(scripted(OK + b"\r\n")) as server, pool_for(server) as pool:
        assert (await fetch(pool, "/a")).body == b"ok"
        assert (await fetch(pool, "/b")).body == echoed("/b")
        assert server.accepted == pool.connections_opened <= 2


async def rst(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Closes the connection with a reset (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize("reset", [False, True], ids=["eof", "reset"])
async def test_a_kept_alive_connection_closed_before_any_answer_byte_is_stale(
    reset: bool,
) -> None:
    # The server answers once, keeps the connection, then drops it as the second request
    # arrives (its idle timeout racing our reuse): nothing of the answer was received.
    drop = Reply(b"", after=rst) if reset else Reply(b"", close=True)
    async with (
        RawServer(scripted(OK, drop)) as server,
        pool_for(server, max_connections=1) as pool,
    ):
        assert (await fetch(pool, "/a")).body == b"ok"
        with pytest.raises(StaleConnectionClosed) as info:
            await fetch(pool, "/b")
        assert isinstance(info.value, ConnectionClosed)
        assert [r.conn for r in server.requests] == [0, 0]
        assert (await fetch(pool, "/c")).body == echoed("/c")
        assert server.accepted == pool.connections_opened == 2


@pytest.mark.parametrize("reset", [False, True], ids=["eof", "reset"])
async def test_a_fresh_connection_closed_before_any_answer_byte_is_not_stale(
    reset: bool,
) -> None:
    drop = Reply(b"", after=rst) if reset else Reply(b"", close=True)
    async with RawServer(scripted(drop)) as server, pool_for(server) as pool:
        with pytest.raises(ConnectionClosed) as info:
            await fetch(pool, "/a")
        assert not isinstance(info.value, StaleConnectionClosed)


async def test_a_kept_alive_connection_closed_mid_answer_is_not_stale() -> None:
    cut = Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal", close=True)
    async with RawServer(scripted(OK, cut)) as server, pool_for(server) as pool:
        assert (await fetch(pool, "/a")).body == b"ok"
        with pytest.raises(ConnectionClosed) as info:
            await fetch(pool, "/b")
        assert not isinstance(info.value, StaleConnectionClosed)
        assert [r.conn for r in server.requests] == [0, 0]


async def test_closing_the_pool_under_a_reused_connection_is_not_stale() -> None:
    async with RawServer(scripted(OK, Reply(hang=True))) as server, pool_for(server) as pool:
        assert (await fetch(pool, "/a")).body == b"ok"
        task = asyncio.create_task(pool.request("GET", "/slow", {}))
        await eventually(lambda: len(server.requests) == 2, "the request arrived")
        await asyncio.wait_for(pool.aclose(), BOUND_S)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(task, BOUND_S)
        assert not isinstance(info.value, StaleConnectionClosed)


async def test_connect_timeout_covers_the_tls_handshake() -> None:
    # A plain TCP server that never speaks TLS: TCP connects, the handshake never finishes.
    async with (
        RawServer() as server,
        pool_for(server, ssl_context=ssl.create_default_context(), connect_timeout_s=0.2) as pool,
    ):
        with pytest.raises(ConnectTimeout) as info:
            await fetch(pool)
        assert isinstance(info.value, HttpError)
        assert pool.connections_opened == 0
        await eventually(lambda: server.finished == 1, "the half-open connection is closed")


async def test_os_connect_timeout_without_a_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def timed_out(sock: socket.socket, address: Any) -> None:
        raise TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))

    monkeypatch.setattr(asyncio.get_running_loop(), "sock_connect", timed_out)
    async with HttpPool("127.0.0.1", 9) as pool:
        with pytest.raises((OSError, HttpError)):
            await fetch(pool)


# Answers that once slipped through and must be refused with BadResponse.


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nok", id="cl-superscript"),
        pytest.param(b"HTTP/1.1 \xb900 OK\r\nContent-Length: 0\r\n\r\n", id="status-superscript"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: " + b"0" * 5000 + b"2\r\n\r\nok",
            id="cl-5001-digits",
        ),
    ],
)
async def test_odd_digits_are_a_bad_response(raw: bytes) -> None:
    async with RawServer(scripted(raw)) as server, pool_for(server) as pool:
        with pytest.raises(BadResponse):
            await fetch(pool)


async def test_chunk_size_with_underscore_is_a_bad_response() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n" + b"x" * 16
    raw += b"\r\n0\r\n\r\n"
    async with RawServer(scripted(raw)) as server, pool_for(server) as pool:
        with pytest.raises(BadResponse):
            await fetch(pool)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_truncated_compressed_body_is_a_bad_response(encoding: str) -> None:
    packed = gzip.compress(GZIPPED_TEXT) if encoding == "gzip" else zlib.compress(GZIPPED_TEXT)
    raw = response(packed[: len(packed) // 2], headers=[("Content-Encoding", encoding)])
    async with RawServer(scripted(raw)) as server, pool_for(server) as pool:
        with pytest.raises(BadResponse):
            await fetch(pool)


async def test_head_over_max_in_pieces_is_a_bad_response() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(BadResponse, match="head over"):
        await parse_in_pieces([head[: MAX_HEAD_BYTES + 1], head[MAX_HEAD_BYTES + 1 :]])


async def test_head_over_max_in_one_read_is_a_bad_response() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(BadResponse, match="head over"):
        await parse_in_pieces([head])


# -- 7. timeouts and cancellation -------------------------------------------------------------


async def scenario_timeout_drops_the_connection() -> None:
    """A request that times out closes its connection; a late answer on it never reaches the
    next request (max_connections=1 also proves the slot was given back)."""
    release = asyncio.Event()

    async def respond(req: SeenRequest) -> bytes:
        if req.index == 0:
            await release.wait()
            return response(b"stale")
        return echo(req)

    async with (
        RawServer(respond) as server,
        pool_for(server, max_connections=1) as pool,
    ):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.request("GET", "/slow", {})
        await eventually(lambda: open_connections(pool) == 0, "the connection is gone")
        release.set()
        assert (await fetch(pool, "/next")).body == echoed("/next")
        assert server.accepted == pool.connections_opened == 2
        assert [r.conn for r in server.requests] == [0, 1]


async def test_timeout_drops_the_connection() -> None:
    await scenario_timeout_drops_the_connection()


async def test_cancelled_request_closes_its_connection() -> None:
    async with (
        RawServer(scripted(Reply(hang=True))) as server,
        pool_for(server, max_connections=1) as pool,
    ):
        task = asyncio.create_task(pool.request("GET", "/slow", {}))
        await eventually(lambda: len(server.requests) == 1, "the request arrived")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: server.finished == 1, "the server saw the connection go")
        assert (await fetch(pool, "/next")).body == echoed("/next")
        assert server.accepted == pool.connections_opened == 2


# -- 8. aclose ---------------------------------------------------------------------------------


async def scenario_aclose_closes_every_connection() -> None:
    async with RawServer(wave(3)) as server:
        pool = pool_for(server, max_connections=3)
        try:
            await asyncio.gather(*(fetch(pool, f"/r{i}") for i in range(3)))
            assert server.accepted == 3 and open_connections(pool) == 3
            await pool.aclose()
            assert open_connections(pool) == 0
            await eventually(lambda: server.client_eofs == 3, "the server saw EOF on each")
            with pytest.raises(RuntimeError, match="closed"):
                await fetch(pool, "/after")
            await pool.aclose()  # again: harmless
        finally:
            await pool.aclose()
        assert pool.connections_opened == 3 and len(server.requests) == 3


async def test_aclose_closes_every_connection() -> None:
    await scenario_aclose_closes_every_connection()


async def test_aclose_fails_the_request_in_flight() -> None:
    async with RawServer(scripted(Reply(hang=True))) as server, pool_for(server) as pool:
        task = asyncio.create_task(pool.request("GET", "/slow", {}))
        await eventually(lambda: len(server.requests) == 1, "the request arrived")
        await asyncio.wait_for(pool.aclose(), BOUND_S)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(task, BOUND_S)
        await eventually(lambda: server.finished == 1, "the server saw the connection go")


# -- 9. TLS ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    ca: Any  # trustme.CA
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def tls() -> Tls:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return Tls(ca, server_ctx, client_ctx)


async def scenario_tls_keep_alive(tls: Tls) -> None:
    async with (
        RawServer(scripted(OK, chunked(b"over ", b"tls"), OK), ssl_context=tls.server) as server,
        pool_for(server, ssl_context=tls.client) as pool,
    ):
        assert (await fetch(pool, "/a")).body == b"ok"
        assert (await fetch(pool, "/b")).body == b"over tls"
        assert (await fetch(pool, "/c")).body == b"ok"
        assert server.accepted == pool.connections_opened == 1


async def test_tls_keep_alive(tls: Tls) -> None:
    await scenario_tls_keep_alive(tls)


async def test_tls_refuses_an_untrusted_certificate(tls: Tls) -> None:
    async with (
        RawServer(ssl_context=tls.server) as server,
        pool_for(server, ssl_context=ssl.create_default_context()) as pool,
    ):
        with pytest.raises(ssl.SSLCertVerificationError):
            await fetch(pool)
        assert pool.connections_opened == 0 and not server.requests


async def test_tls_checks_the_host_name(tls: Tls) -> None:
    other = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.ca.issue_cert("api.example.com").configure_cert(other)
    async with (
        RawServer(ssl_context=other) as server,
        pool_for(server, ssl_context=tls.client) as pool,
    ):
        with pytest.raises(ssl.SSLCertVerificationError, match=r"127\.0\.0\.1"):
            await fetch(pool)
        assert not server.requests


# -- 10. the same scenarios on the stdlib loop and on uvloop ------------------------------------


async def scenario_keep_alive_mixed_framing() -> None:
    """Content-Length, chunked, gzip, 204 and interim answers on one connection; then a
    read-until-close answer, after which a new connection is needed."""
    script = scripted(
        OK,
        chunked(b"a" * 3000, b"b", headers=[("X-Id", "2")]),
        b"HTTP/1.1 100 Continue\r\n\r\n"
        + response(gzip.compress(GZIPPED_TEXT), headers=[("Content-Encoding", "gzip")]),
        b"HTTP/1.1 204 No Content\r\n\r\n",
        Reply(b"HTTP/1.1 200 OK\r\n\r\nuntil close", close=True),
    )
    async with RawServer(script) as server, pool_for(server) as pool:
        assert (await fetch(pool)).body == b"ok"
        second = await fetch(pool)
        assert (second.body, second.headers["x-id"]) == (b"a" * 3000 + b"b", "2")
        assert (await fetch(pool)).body == GZIPPED_TEXT
        assert (await fetch(pool)).status == 204
        assert server.accepted == pool.connections_opened == 1
        assert (await fetch(pool)).body == b"until close"
        assert (await fetch(pool, "/last")).body == echoed("/last")
        assert server.accepted == pool.connections_opened == 2


async def scenario_failures_drop_connections() -> None:
    script = scripted(
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", close=True),
    )
    async with RawServer(script) as server, pool_for(server, max_connections=1) as pool:
        with pytest.raises(BadResponse):
            await fetch(pool)
        with pytest.raises(ConnectionClosed):
            await fetch(pool)
        assert (await fetch(pool, "/ok")).body == echoed("/ok")
        assert server.accepted == pool.connections_opened == 3


async def scenario_concurrency_bound() -> None:
    async with RawServer(wave(4)) as server, pool_for(server, max_connections=4) as pool:
        answers = await asyncio.gather(*(fetch(pool, f"/r{i}") for i in range(40)))
        assert [a.body for a in answers] == [echoed(f"/r{i}") for i in range(40)]
        assert server.accepted == pool.connections_opened == 4


SCENARIOS = [
    scenario_keep_alive_mixed_framing,
    scenario_server_closes_idle_connection,
    scenario_timeout_drops_the_connection,
    scenario_failures_drop_connections,
    scenario_concurrency_bound,
    scenario_aclose_closes_every_connection,
]


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("scenario_"))
def test_scenario_on_each_loop(loop_name: str, scenario: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        assert type(runner.get_loop()).__module__.split(".")[0] == loop_name
        runner.run(asyncio.wait_for(scenario(), 2 * BOUND_S))


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_tls_on_each_loop(loop_name: str, tls: Tls) -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        assert type(runner.get_loop()).__module__.split(".")[0] == loop_name
        runner.run(asyncio.wait_for(scenario_tls_keep_alive(tls), 2 * BOUND_S))


# -- review follow-ups: header names, addresses, empty encoded bodies ------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Content-Length ", "5"),
        ("Transfer-Encoding\t", "chunked"),
        ("X: y", "1"),
        ("X\x00Content-Length", "1"),
        ("", "1"),
        ("X-Ok", "a\x00b"),
    ],
)
def test_encode_request_refuses_non_token_names_and_nul_values(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        encode_request("POST", "/", "h", {name: value}, b"")


@pytest.mark.parametrize(
    "head", [b"HTTP/1.1 204 No Content", b"HTTP/1.1 200 OK\r\nContent-Length: 0"]
)
async def test_an_empty_body_with_a_content_encoding_is_just_empty(head: bytes) -> None:
    raw = head + b"\r\nContent-Encoding: gzip\r\n\r\n"
    async with RawServer(scripted(raw)) as server, pool_for(server) as pool:
        answer = await fetch(pool)
    assert answer.body == b"" and answer.headers["content-encoding"] == "gzip"


def _addresses(*ports: int) -> list[tuple[Any, ...]]:
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p)) for p in ports]


async def test_addresses_are_looked_up_once_and_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    async with RawServer(wave(8)) as server:

        async def getaddrinfo(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
            lookups.append(host)
            await asyncio.sleep(0.01)  # slow enough for all eight connects to wait on it
            return _addresses(server.port)

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
        pool = HttpPool("api.example", server.port, max_connections=8)
        async with pool:
            await asyncio.gather(*(fetch(pool, f"/{i}") for i in range(8)))
            assert pool.connections_opened == 8 and lookups == ["api.example"]


async def test_the_address_cache_expires_by_the_injected_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    lookups: list[str] = []
    async with RawServer() as server:

        async def getaddrinfo(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
            lookups.append(host)
            return _addresses(server.port)

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
        pool = HttpPool("api.example", server.port, dns_ttl_s=60.0, idle_timeout_s=0, clock=clock)
        async with pool:
            for step in (0.0, 30.0, 31.0):  # each request reconnects: the clock moves past 0 s
                clock.now += step
                await fetch(pool, "/x")
        assert pool.connections_opened == 3
        assert lookups == ["api.example"] * 2  # fresh at +0 s and +30 s, stale at +61 s


async def test_a_failed_lookup_falls_back_to_the_last_known_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: list[list[tuple[Any, ...]] | OSError] = []
    async with RawServer() as server:

        async def getaddrinfo(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
            answer = answers.pop(0)
            if isinstance(answer, OSError):
                raise answer
            return answer

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
        answers += [_addresses(server.port), socket.gaierror(-3, "Temporary failure")]
        # dns_ttl_s = 0: every new connection looks the name up again.
        async with HttpPool("api.example", server.port, dns_ttl_s=0, idle_timeout_s=0) as pool:
            await fetch(pool, "/a")
            await asyncio.sleep(0.01)  # the idle connection expires; the next one reconnects
            assert (await fetch(pool, "/b")).body == echoed("/b")
            assert pool.connections_opened == 2 and not answers
        answers.append(socket.gaierror(-2, "Name or service not known"))
        async with HttpPool("api.example", server.port) as pool:  # nothing known: the error
            with pytest.raises(socket.gaierror):
                await fetch(pool)


async def test_an_address_that_never_answers_is_raced_by_the_next(
    monkeypatch: pytest.MonkeyPatch, black_hole_port: int
) -> None:
    async with RawServer() as server:

        async def getaddrinfo(host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
            return _addresses(black_hole_port, server.port)

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
        async with HttpPool("api.example", server.port, connect_timeout_s=3.0) as pool:
            assert (await fetch(pool, "/x")).body == echoed("/x")


# -- transport-neutral errors -----------------------------------------------------------------


def test_errors_are_described_without_url_queries() -> None:
    assert describe_error(ConnectionClosed("gone")) == "ConnectionClosed: gone"
    assert describe_error(OSError()) == "OSError: OSError"
    leaky = ValueError("POST http://h/?Signature=abc&SecurityToken=t failed")
    assert describe_error(leaky) == "ValueError: POST http://h/?<redacted>"


def test_a_foreign_error_is_described_as_its_original() -> None:
    original = ConnectionResetError(104, "reset by http://h/?Signature=abc")
    try:
        raise ForeignHttpError(original) from original
    except HttpError as exc:
        assert describe_error(exc) == describe_error(original)
        assert "Signature" not in str(exc) and exc.__cause__ is original


# -- the address cache: failures ----------------------------------------------------------------


class ScriptedResolver:
    """The running loop's ``getaddrinfo``, answering from ``answers`` in turn (an ``OSError``
    entry is raised) and counting the lookups."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: list[list[tuple[Any, ...]] | OSError] = []
        self.lookups = 0
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", self.getaddrinfo)

    async def getaddrinfo(self, host: str, port: int, **kw: Any) -> list[tuple[Any, ...]]:
        self.lookups += 1
        answer = self.answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer


async def test_a_failed_lookup_is_held_briefly_then_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    async with RawServer() as server:
        resolver = ScriptedResolver(monkeypatch)
        answers = resolver.answers
        answers += [socket.gaierror(-3, "Temporary failure"), _addresses(server.port)]
        async with HttpPool("api.example", server.port, clock=clock) as pool:
            with pytest.raises(socket.gaierror):
                await fetch(pool, "/a")
            clock.now += DNS_FAILURE_HOLD_S / 2  # within the hold: the failure, not a lookup
            with pytest.raises(socket.gaierror):
                await fetch(pool, "/b")
            assert resolver.lookups == 1
            clock.now += DNS_FAILURE_HOLD_S  # past it: asked again, and this time it answers
            assert (await fetch(pool, "/c")).body == echoed("/c")
            assert resolver.lookups == 2 and pool.connections_opened == 1


async def test_a_failed_lookup_is_not_cached_as_an_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Known addresses outlive a failed refresh, but the failure does not renew them: once the
    hold is over the resolver is asked again, on each connect until it answers."""
    clock = FakeClock()
    async with RawServer() as server:
        resolver = ScriptedResolver(monkeypatch)
        answers = resolver.answers
        answers += [_addresses(server.port), socket.gaierror(-3, "Temporary failure")]
        answers += [socket.gaierror(-3, "Temporary failure"), _addresses(server.port)]
        pool = HttpPool("api.example", server.port, dns_ttl_s=10.0, idle_timeout_s=0, clock=clock)
        async with pool:
            await fetch(pool, "/a")  # lookup 1: cached for 10 s
            clock.now += 11.0
            await fetch(pool, "/b")  # lookup 2 fails: the last good addresses are used
            clock.now += DNS_FAILURE_HOLD_S / 2
            await fetch(pool, "/c")  # within the hold: no lookup
            assert resolver.lookups == 2
            clock.now += DNS_FAILURE_HOLD_S
            await fetch(pool, "/d")  # lookup 3 fails again: still the last good addresses
            clock.now += 2 * DNS_FAILURE_HOLD_S
            await fetch(pool, "/e")  # lookup 4 answers: cached for 10 s from now
            clock.now += 5.0
            await fetch(pool, "/f")
            assert resolver.lookups == 4 and not answers
            assert pool.connections_opened == 6
