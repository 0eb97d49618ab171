"""HTTP/1.1 messages without I/O, for :mod:`poller.wire.http`: the request encoded, the answer
parsed, and the transport-neutral errors (all re-exported by :mod:`poller.wire.http`).

The answer's framing (status line, headers, ``Content-Length``, ``chunked`` and read-until-close
bodies, interim ``1xx`` answers) is llhttp's, through ``httptools.HttpResponseParser``;
:class:`ResponseParser` adds what llhttp leaves to its caller:

* limits: a head over :data:`MAX_HEAD_BYTES`, a body over :data:`MAX_BODY_BYTES` (as received
  and decoded), trailers and chunk-size lines over their own budget are refused;
* decoding: ``gzip``/``x-gzip``/``deflate`` transfer codings before ``chunked`` (``gzip,
  chunked``), then content codings, in reverse order of application; any other coding, or
  ``chunked`` anywhere but last, is refused with :class:`BadResponse` (before the body);
* whether the connection may carry another exchange: llhttp's keep-alive verdict, and never
  after an answer with both ``Transfer-Encoding`` and ``Content-Length``, an HTTP/1.0 answer
  with ``Transfer-Encoding`` (RFC 9112 6.1, 6.3: faulty framing, close after it), or bytes past
  the end of the answer (llhttp skips empty lines between answers, RFC 9112 2.2).

Two llhttp leniencies are on, both within RFC 9112: whitespace between a chunk size and its
``;extension`` (``BWS``), and ``Transfer-Encoding`` with ``Content-Length`` (the former frames;
the connection is then closed). Everything else llhttp refuses is refused.
"""

from __future__ import annotations

import string
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import httptools

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEAD_BYTES",
    "BadResponse",
    "ConnectTimeout",
    "ConnectionClosed",
    "ForeignHttpError",
    "HttpError",
    "HttpResponse",
    "ResponseParser",
    "StaleConnectionClosed",
    "describe_error",
    "encode_request",
]

#: A response head (status line and headers) larger than this is refused. What else is not body
#: (chunk-size lines, trailers) shares with the head a budget of twice this plus 1 KiB a chunk.
MAX_HEAD_BYTES: Final = 64 * 1024
#: A response body larger than this (as received, and after decoding) is refused.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
#: Framing bytes allowed per chunk (its size line and extensions), on top of the trailers'.
_PER_CHUNK_BYTES: Final = 1024
#: Headers the pool frames itself; a caller may not set them.
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})
#: RFC 9110 token characters, the only ones a header name may have.
_TOKEN_CHARS: Final = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
#: Header names already checked (the same few names go out with every request).
_checked_names: set[str] = set()
_DECODABLE: Final = frozenset({"gzip", "x-gzip", "deflate"})
_NO_CODING: Final = frozenset({"", "identity"})


class HttpError(Exception):
    """No usable HTTP answer (besides ``OSError``, which the event loop raises as it is).

    The transport-neutral failures: every transport of :mod:`poller.wire.client` raises these
    (or ``OSError``, or ``TimeoutError``), never its own library's exceptions.
    """


class BadResponse(HttpError):
    """The bytes received are not a well-formed HTTP/1.x answer."""


class ConnectionClosed(HttpError):
    """The connection ended before a complete answer arrived."""


class StaleConnectionClosed(ConnectionClosed):
    """A kept-alive connection (one that had carried an earlier exchange) ended, by EOF or a
    reset, after the request was written and before any byte of its answer arrived.

    The usual cause is the race with the server's idle timeout: it closed the connection as the
    pool reused it. Such a request was most likely never processed, so the caller may retry it
    at once on a new connection (re-signed: it is a new request); a connection that ends
    mid-answer, or a fresh connection that ends, raises plain :class:`ConnectionClosed`.
    """


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


class ResponseParser:
    """Parses the answer to one request; one parser per exchange.

    :meth:`feed` the bytes as they arrive until it returns the :class:`HttpResponse`; at end of
    stream call :meth:`feed_eof`, which completes a read-until-close answer.  Both raise
    :class:`BadResponse`.  Afterwards :attr:`reusable` tells whether the connection may carry
    another exchange, and :attr:`received` how many bytes of the answer arrived.
    ``head_request``: the answer to a ``HEAD`` has no body, whatever its headers say; it is
    complete with its head.
    """

    __slots__ = (
        "_body",
        "_body_size",
        "_chunks",
        "_codings",
        "_error",
        "_fed_in_head",
        "_final",
        "_head_size",
        "_headers",
        "_parser",
        "_response",
        "_status",
        "_until_close",
        "head_request",
        "received",
        "reusable",
    )

    def __init__(self, *, head_request: bool = False) -> None:
        parser = httptools.HttpResponseParser(self)
        parser.set_dangerous_leniencies(
            lenient_chunked_length=True, lenient_spaces_after_chunk_size=True
        )
        self._parser = parser
        self.reset(head_request=head_request)

    def reset(self, *, head_request: bool = False) -> None:
        """Ready for the next answer on the same connection; only after a complete answer
        that left the connection :attr:`reusable` and was not a ``HEAD``'s (llhttp is then at
        the start of the next message)."""
        self.head_request = head_request
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = self._head_size = self._chunks = self._status = 0
        self._fed_in_head = 0  # bytes fed before the final answer's head was complete
        self._codings: list[str] = []  # transfer, then content codings, in order of application
        self._final = False  # the final (not 1xx) answer's head is complete
        self._until_close = False
        self._error: BadResponse | None = None
        self._response: HttpResponse | None = None
        #: Bytes received so far.
        self.received = 0
        #: Whether the connection may carry another exchange (meaningful once complete).
        self.reusable = True

    # -- fed by the connection

    def feed(self, data: bytes) -> HttpResponse | None:
        """The complete answer once ``data`` completes it, else ``None``."""
        if self._response is not None:
            self.reusable = False  # bytes past the answer
            return self._response
        self.received += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete:
                self.reusable = False  # past the answer: a stray answer or garbage
            else:
                error = self._error or exc.__context__
                if isinstance(error, BadResponse):
                    self._error = error
                    raise error from None
                raise self._refuse(f"malformed answer: {exc}") from None
        if self._response is None:
            self._check_framing_bytes(len(data))
        return self._response

    @property
    def complete(self) -> bool:
        """Whether the whole answer has arrived."""
        return self._response is not None

    def feed_eof(self) -> HttpResponse | None:
        """The end of the stream: completes a read-until-close answer (``None`` otherwise:
        the answer is cut short)."""
        if self._response is None and self._until_close and self._error is None:
            self.reusable = False
            self._complete()
        return self._response

    def _check_framing_bytes(self, size: int) -> None:
        if not self._final:
            self._fed_in_head += size
            if self._fed_in_head > MAX_HEAD_BYTES:
                raise self._refuse(f"response head over {MAX_HEAD_BYTES} bytes")
        elif not self._until_close:
            overhead = self.received - self._body_size
            if overhead > 2 * MAX_HEAD_BYTES + _PER_CHUNK_BYTES * self._chunks:
                raise self._refuse(f"chunk framing or trailers over {MAX_HEAD_BYTES} bytes")

    def _refuse(self, message: str) -> BadResponse:
        self._error = error = BadResponse(message)
        return error

    # -- httptools' callbacks

    def on_message_begin(self) -> None:
        if self._response is not None:
            self.reusable = False
            raise self._refuse("bytes past the answer")  # stops llhttp; feed() ignores it
        self._head_size = 0

    def on_status(self, reason: bytes) -> None:
        self._head_size += len(reason) + 15

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._final:
            return  # a trailer: checked by size only
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD_BYTES:
            raise self._refuse(f"response head over {MAX_HEAD_BYTES} bytes")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip(" \t")
        headers = self._headers
        if key in headers:
            text = f"{headers[key]}, {text}"
        headers[key] = text

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise self._refuse("unexpected 101 Switching Protocols")
            self._headers = {}  # an interim answer (100 Continue, 103 Early Hints)
            return
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise self._refuse(f"not an HTTP/1.x answer: HTTP/{version}")
        self._final = True
        self._status = status
        headers = self._headers
        self.reusable = parser.should_keep_alive()
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is not None:
            self._transfer_codings(te, version)
            if cl is not None:
                self.reusable = False  # both framings: a smuggling risk, never reuse (RFC 9112)
        elif cl is not None:
            if len(cl) > 18 or int(cl) > MAX_BODY_BYTES:
                raise self._refuse(f"body over {MAX_BODY_BYTES} bytes")
        elif not self.head_request and status != 204 and status != 304:
            self._until_close = True
            self.reusable = False
        ce = headers.get("content-encoding")
        if ce is not None:
            self._codings += _codings(ce, "Content-Encoding")
        if self.head_request:
            self._complete()

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self.reusable = False  # a body after a HEAD's answer, or after the answer
            return
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            raise self._refuse(f"body over {MAX_BODY_BYTES} bytes")
        self._body.append(body)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_message_complete(self) -> None:
        if self._final and self._response is None:
            self._complete()

    # -- helpers

    def _transfer_codings(self, te: str, version: str) -> None:
        codings = _codings(te, "Transfer-Encoding", allow_chunked=True)
        if "chunked" in codings:
            if codings.index("chunked") != len(codings) - 1:
                raise self._refuse(f"chunked is not the final transfer coding in {te[:60]!r}")
            codings.pop()
        else:
            self._until_close = True  # llhttp reads such an answer until the connection closes
        if version == "1.0":
            self.reusable = False  # Transfer-Encoding in HTTP/1.0: faulty framing (RFC 9112)
        self._codings = codings

    def _complete(self) -> None:
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body = []
        if body and self._codings:
            try:
                for coding in reversed(self._codings):
                    body = _decode(coding, body)
            except BadResponse as exc:
                self._error = exc
                raise
        self._response = HttpResponse(self._status, self._headers, body)


def _codings(value: str, header: str, *, allow_chunked: bool = False) -> list[str]:
    """The codings named in ``value`` that need decoding, in order of application."""
    out: list[str] = []
    for part in value.split(","):
        coding = part.strip().lower()
        if coding in _NO_CODING:
            continue
        if coding in _DECODABLE or (allow_chunked and coding == "chunked"):
            out.append(coding)
        else:
            raise BadResponse(f"unsupported {header} {coding[:40]!r}")
    return out


def _decode(coding: str, body: bytes) -> bytes:
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
            raise BadResponse(f"{coding} body is truncated")
        return out
    raise BadResponse(f"body is not valid {coding}")
