"""The cloud's error envelope and the catalogue of error codes the emulator answers with.

Every rejection the emulator makes is an :class:`ApiError`, rendered by :func:`error_body` as the
gateway's JSON envelope (protocol.md §6.2)::

    {"RequestId": "6EBD1AC4-...", "HostId": "127.0.0.1", "Code": "Throttling.User",
     "Message": "Request was denied due to user flow control.",
     "Recommend": "https://api.aliyun.com/troubleshoot?q=Throttling.User&product=live&requestId=..."}

Codes, HTTP statuses and messages follow protocol.md §6.3, using the recommended (bold) statuses
where the documentation disagrees. Codes that no source pins down (``InvalidVersion``,
``ContentMD5NotMatched``, the STS codes) use the closest documented wording.

The current interactive-messaging family (``…LiveMessage…`` actions) has its own business codes
(api-family.md): 400 ``InputInvalid``, 403 ``NoAuth``, 404 ``ResourceNotExist``, 500
``ServerError``. Their messages are the emulator's own wording (the reference gives none); the
gateway's common codes (signature, throttling, ``MissingParameter``) are shared by both families.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Final

import orjson

__all__ = [
    "JSON_CONTENT_TYPE",
    "ApiError",
    "RequestIds",
    "content_md5_mismatch",
    "error_body",
    "expired_timestamp",
    "forbidden",
    "host_id_from",
    "incomplete_signature",
    "input_invalid",
    "internal_error",
    "invalid_access_key",
    "invalid_action",
    "invalid_parameter",
    "invalid_timestamp_format",
    "invalid_version",
    "missing_parameter",
    "missing_security_token",
    "new_request_id",
    "no_auth",
    "nonce_used",
    "resource_not_exist",
    "security_token_mismatch",
    "server_error",
    "service_unavailable",
    "signature_mismatch",
    "throttled",
    "unsupported_method",
]

JSON_CONTENT_TYPE: Final = "application/json;charset=utf-8"
RECOMMEND_URL: Final = "https://api.aliyun.com/troubleshoot?q={code}&product=live&requestId={rid}"


class ApiError(Exception):
    """A rejection: cloud ``Code``, HTTP ``status``, ``Message`` and any extra response headers."""

    __slots__ = ("code", "headers", "message", "status")

    def __init__(
        self, code: str, status: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.headers = headers or {}


def new_request_id() -> str:
    """A request ID as the gateway writes it: an upper-case (version 4) UUID with dashes."""
    return str(uuid.uuid4()).upper()


class RequestIds:
    """Cheap unique request IDs of the gateway's shape: a random UUID-4 prefix + a counter.

    Calling an instance costs a fraction of :func:`new_request_id`; IDs are unique per emulator
    (the 12-hex-digit counter does not wrap in practice) and unpredictable across runs.
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        head = str(uuid.uuid4()).upper()
        self._prefix = head[:24]  # "XXXXXXXX-XXXX-4XXX-YXXX-"
        self._counter = itertools.count(int(head[24:], 16))

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012X}"


def host_id_from(host_header: str | None, default: str) -> str:
    """The ``HostId`` of the envelope: the Host header's host name, port removed."""
    if not host_header:
        return default
    if host_header.startswith("["):  # IPv6 literal, e.g. "[::1]:8780"
        end = host_header.find("]")
        return host_header[: end + 1] if end > 0 else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def error_body(request_id: str, host_id: str, code: str, message: str) -> bytes:
    """Serialise the error envelope (keys in the gateway's order)."""
    return orjson.dumps(
        {
            "RequestId": request_id,
            "HostId": host_id,
            "Code": code,
            "Message": message,
            "Recommend": RECOMMEND_URL.format(code=code, rid=request_id),
        }
    )


# --------------------------------------------------------------------------------------------
# The catalogue. Functions, not constants: an ApiError is an exception instance and carries
# per-request data (parameter names, retry-after, the server's string to sign).


def incomplete_signature() -> ApiError:
    return ApiError(
        "IncompleteSignature", 400, "The request signature does not conform to Aliyun standards."
    )


def invalid_access_key() -> ApiError:
    return ApiError("InvalidAccessKeyId.NotFound", 404, "Specified access key is not found.")


def signature_mismatch(string_to_sign: str) -> ApiError:
    return ApiError(
        "SignatureDoesNotMatch",
        400,
        "Specified signature is not matched with our calculation. "
        f"server string to sign is:{string_to_sign}",
    )


def content_md5_mismatch() -> ApiError:
    return ApiError(
        "ContentMD5NotMatched", 400, "Specified content md5 is not matched with your request body."
    )


def invalid_timestamp_format() -> ApiError:
    return ApiError(
        "InvalidTimeStamp.Format", 400, "Specified time stamp or date value is not well formatted."
    )


def expired_timestamp() -> ApiError:
    return ApiError(
        "InvalidTimeStamp.Expired", 400, "Specified time stamp or date value is expired."
    )


def nonce_used() -> ApiError:
    return ApiError("SignatureNonceUsed", 400, "Specified signature nonce was used already.")


def missing_security_token() -> ApiError:
    return ApiError(
        "MissingSecurityToken",
        400,
        'The input parameter "SecurityToken" that is mandatory for processing this request '
        "is not supplied.",
    )


def security_token_mismatch() -> ApiError:
    return ApiError(
        "InvalidSecurityToken.MismatchWithAccessKey",
        400,
        "Specified SecurityToken mismatch with the AccessKey.",
    )


def missing_parameter(name: str) -> ApiError:
    return ApiError(
        "MissingParameter",
        400,
        f'The input parameter "{name}" that is mandatory for processing this request '
        "is not supplied.",
    )


def invalid_parameter(name: str) -> ApiError:
    return ApiError("InvalidParameter", 400, f'The specified parameter "{name}" is not valid.')


def invalid_action() -> ApiError:
    return ApiError(
        "InvalidAction.NotFound",
        404,
        "Specified api is not found, please check your url and method.",
    )


def invalid_version() -> ApiError:
    return ApiError("InvalidVersion", 400, "Specified parameter Version is not valid.")


def unsupported_method() -> ApiError:
    return ApiError("UnsupportedHTTPMethod", 403, "This http method not supported.")


def forbidden() -> ApiError:
    return ApiError("Forbidden", 403, "User not authorized to operate on the specified resource.")


def throttled(retry_after_ms: int, limit: int) -> ApiError:
    """``Throttling.User`` plus the headers current and older SDKs read to back off."""
    retry_after_ms = max(1, retry_after_ms)
    return ApiError(
        "Throttling.User",
        400,
        "Request was denied due to user flow control.",
        {
            "x-acs-retry-after": str(retry_after_ms),
            "x-ratelimit-user-api": f"Limit:{limit},Remain:0,TimeLeft:{retry_after_ms}",
        },
    )


def internal_error() -> ApiError:
    return ApiError(
        "InternalError", 500, "The request processing has failed due to some unknown error."
    )


def service_unavailable() -> ApiError:
    return ApiError(
        "ServiceUnavailable",
        503,
        "The request has failed due to a temporary failure of the server.",
    )


# --------------------------------------------------------------------------------------------
# The current interactive-messaging family (CheckLiveMessageUsers*, ListLiveMessageGroupUsers).


def input_invalid(message: str) -> ApiError:
    """400 ``InputInvalid``: a parameter is invalid (too many IDs, wrong data center, ...)."""
    return ApiError("InputInvalid", 400, message)


def no_auth() -> ApiError:
    """403 ``NoAuth``: the caller is not granted the app."""
    return ApiError("NoAuth", 403, "You are not authorized to operate on the specified resource.")


def resource_not_exist(kind: str, name: str) -> ApiError:
    """404 ``ResourceNotExist``: the app (or the group) does not exist."""
    return ApiError("ResourceNotExist", 404, f"The specified {kind} {name!r} does not exist.")


def server_error() -> ApiError:
    """500 ``ServerError``: an unknown server error; retry later."""
    return ApiError("ServerError", 500, "An unknown server error occurred. Try again later.")
