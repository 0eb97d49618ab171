"""The one exception tree of poller.

Foreign exceptions (aiohttp, asyncio timeouts, orjson) are translated into this tree at a single
boundary, :mod:`poller.wire.client`; everything above it catches only :class:`PollerError`::

    PollerError                       retriable  fatal
    ├── ConfigError                       no      yes   bad config / input files (exit 78)
    │   └── CredentialsNotFound           no      yes   no credential anywhere in the chain
    ├── SinkError                         no      yes   a sink cannot write
    ├── TransportError                    yes     no    connection refused/reset, DNS, TLS
    │   ├── AttemptTimeout                yes     no    no complete answer within timeout_s
    │   ├── StaleConnection             at once   no    a reused connection died before answering
    │   └── TlsVerificationError          no      yes   the server's certificate failed
    │                                                    verification (also a ConfigError: exit 78)
    ├── MalformedResponse                 yes     no    not JSON, wrong shape, wrong types
    └── ApiError                          (by code)     the cloud answered with an error envelope
        ├── ThrottledError                yes     no    Throttling, Throttling.User, ...
        ├── ServerError                   yes     no    5xx, InternalError, ServiceUnavailable
        ├── NonceReusedError              yes     no    SignatureNonceUsed (re-signed retry)
        ├── AuthError                     no      yes   signature / key / token rejected (exit 78)
        │   └── ClockSkewError            no      yes   InvalidTimeStamp.*: the local clock is off
        │       └── ClockSkewCorrected  at once   no    ... and the server's Date corrected it
        ├── PermissionDenied              no      no    Forbidden*, NoPermission (exit 77 if all)
        ├── InvalidRequestError           no      no    InvalidParameter, MissingParameter, ...
        └── UnknownApiError               5xx only      any other code

Each class carries ``code`` (the cloud's ``Code`` or a local one) and ``retriable``; an
:class:`ApiError` also carries ``http_status``, ``request_id`` and, for throttling,
``retry_after_s``. Messages never contain secrets: the client scrubs them by value
(:mod:`poller.core.redact`).
"""

from __future__ import annotations

from typing import ClassVar, Final

__all__ = [
    "ApiError",
    "AttemptTimeout",
    "AuthError",
    "ClockSkewCorrected",
    "ClockSkewError",
    "ConfigError",
    "CredentialsNotFound",
    "InvalidRequestError",
    "MalformedResponse",
    "NonceReusedError",
    "PermissionDenied",
    "PollerError",
    "ServerError",
    "SinkError",
    "StaleConnection",
    "ThrottledError",
    "TlsVerificationError",
    "TransportError",
    "UnknownApiError",
    "collapse",
    "error_for_response",
    "transient_status",
]


class PollerError(Exception):
    """Root of every error poller raises."""

    #: Worth another attempt (re-signed, after backoff). An instance may override the class value.
    retriable: bool = False
    #: A fatal error stops the whole run (bad credentials, broken sink, bad config).
    fatal: ClassVar[bool] = False
    #: Send again at once: no backoff and no retry token (still a new, re-signed attempt that
    #: takes a rate slot, and still within ``max_attempts``).
    immediate: ClassVar[bool] = False
    default_code: ClassVar[str] = "Error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class ConfigError(PollerError):
    """Invalid configuration or input; names the file, line and key where it is known."""

    fatal = True
    default_code = "ConfigError"

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        where = []
        if source:
            where.append(source if line is None else f"{source}:{line}")
        if key:
            where.append(f"key {key!r}")
        full = f"{', '.join(where)}: {message}" if where else message
        super().__init__(full)
        #: The message without the location prefix.
        self.detail = message
        self.source = source
        self.key = key
        self.line = line


class CredentialsNotFound(ConfigError):
    default_code = "CredentialsNotFound"


class SinkError(PollerError):
    fatal = True
    default_code = "SinkError"


def transient_status(http_status: int) -> bool:
    """An HTTP status that says the failure is the server's or the connection's, not ours: 5xx,
    or 408 (the server gave up on the connection, possibly as we wrote to it)."""
    return http_status >= 500 or http_status == 408


class TransportError(PollerError):
    retriable = True
    default_code = "ConnectionError"


class AttemptTimeout(TransportError, TimeoutError):
    default_code = "Timeout"


class StaleConnection(TransportError):
    """A kept-alive connection died before any byte of the answer: the server closed it while
    idle as we sent. Worth sending again at once on a fresh connection (the call is a read)."""

    immediate = True


class TlsVerificationError(TransportError, ConfigError):
    """The server's TLS certificate failed verification (untrusted issuer, wrong host name,
    expired): retrying cannot help, and polling on would only fail the same way, so it stops
    the run. It is also a :class:`ConfigError` (``api.ca_file``, ``api.verify_tls``, or the
    endpoint or a proxy in between), so the commands exit 78 with its reason."""

    retriable = False
    fatal = True
    default_code = "TlsVerificationFailed"


class MalformedResponse(PollerError):
    """An answer we cannot read. Retried when it came with 200 (a damaged answer) or a
    transient status; a 4xx page that is not our API's envelope will not change on retry."""

    retriable = True
    default_code = "MalformedResponse"

    def __init__(
        self, message: str, *, http_status: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.request_id = request_id
        if http_status is not None:
            self.retriable = http_status == 200 or transient_status(http_status)


class ApiError(PollerError):
    """The cloud answered with an error envelope."""

    default_code = "UnknownError"

    def __init__(
        self,
        message: str,
        *,
        code: str,
        http_status: int,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.http_status = http_status
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.retriable = self._retriable_for(http_status)

    @classmethod
    def _retriable_for(cls, http_status: int) -> bool:
        return cls.retriable

    def __str__(self) -> str:
        return f"{self.code} (HTTP {self.http_status}): {self.message}"


class ThrottledError(ApiError):
    retriable = True


class ServerError(ApiError):
    retriable = True


class NonceReusedError(ApiError):
    """The nonce was seen before: an earlier copy probably reached the server; re-sign, retry."""

    retriable = True


class AuthError(ApiError):
    fatal = True


class ClockSkewError(AuthError):
    """The server rejected our timestamp; the local clock is probably off by > 15 minutes.

    ``offset_s`` is the offset (server time minus local time) the answer's ``Date`` header
    implied, when it had one."""

    offset_s: float | None = None


class ClockSkewCorrected(ClockSkewError):
    """A rejected timestamp whose answer told us the server's time: the clock is corrected, and
    the same request, signed again with the corrected time, is sent at once (once: a second
    rejection right after a correction is a plain, fatal :class:`ClockSkewError`)."""

    retriable = True
    fatal = False
    immediate = True

    @classmethod
    def after(cls, error: ClockSkewError, offset_s: float) -> ClockSkewCorrected:
        """The retriable twin of ``error``, whose answer implied the clock offset ``offset_s``."""
        retry = cls(
            f"{error.message}; corrected the clock by {offset_s:+.0f} s (the server's Date): "
            "signing again",
            code=error.code,
            http_status=error.http_status,
            request_id=error.request_id,
        )
        retry.offset_s = offset_s
        return retry


class PermissionDenied(ApiError):
    pass


class InvalidRequestError(ApiError):
    pass


class UnknownApiError(ApiError):
    """A code we do not know: retried only when the status says the fault is transient."""

    @classmethod
    def _retriable_for(cls, http_status: int) -> bool:
        return transient_status(http_status)


_EXACT: Final[dict[str, type[ApiError]]] = {
    "SignatureNonceUsed": NonceReusedError,
    "SignatureDoesNotMatch": AuthError,
    "IncompleteSignature": AuthError,
    "InvalidAccessKeySecret": AuthError,
    "MissingSecurityToken": AuthError,
    "InvalidTimeStamp.Expired": ClockSkewError,
    "InvalidTimeStamp.Format": ClockSkewError,
    "IllegalTimestamp": ClockSkewError,
    "InternalError": ServerError,
    "ServiceUnavailable": ServerError,
    "ServiceTimeout": ServerError,
    "NoPermission": PermissionDenied,
    # The current interactive-messaging family (CheckLiveMessageUsers*, ListLiveMessageGroupUsers)
    "NoAuth": PermissionDenied,
    "InputInvalid": InvalidRequestError,
    "ResourceNotExist": InvalidRequestError,
    "ServerError": ServerError,
    "UnsupportedHTTPMethod": InvalidRequestError,
}

_PREFIXES: Final[tuple[tuple[str, type[ApiError]], ...]] = (
    ("Throttling", ThrottledError),
    ("InvalidAccessKeyId", AuthError),
    ("InvalidSecurityToken", AuthError),
    ("Forbidden", PermissionDenied),
    ("InvalidParameter", InvalidRequestError),
    ("MissingParameter", InvalidRequestError),
    ("InvalidAction", InvalidRequestError),
    ("Missing", InvalidRequestError),
    ("Invalid", InvalidRequestError),
)


def error_for_response(
    *,
    http_status: int,
    code: str | None,
    message: str | None,
    request_id: str | None,
    retry_after_s: float | None = None,
) -> ApiError:
    """Map an error envelope to its class: by ``Code`` first (statuses differ between gateways)."""
    code = code or f"HTTP{http_status}"
    cls: type[ApiError] | None = _EXACT.get(code)
    if cls is None:
        cls = next((c for prefix, c in _PREFIXES if code.startswith(prefix)), None)
    if cls is None:
        if http_status == 429:
            cls = ThrottledError
        elif http_status >= 500:
            cls = ServerError
        else:
            cls = UnknownApiError
    text = message or "(no message)"
    if cls is ClockSkewError:
        text = f"clock skew: the server rejected our timestamp ({text}); check the local clock"
    return cls(
        text,
        code=code,
        http_status=http_status,
        request_id=request_id,
        retry_after_s=retry_after_s,
    )


def collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error that explains a failed task group, instead of its exception group: the
    only leaf, else the first :class:`PollerError` among the leaves, else the group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    if len(leaves) == 1:
        return leaves[0]
    return next((e for e in leaves if isinstance(e, PollerError)), group)
