"""The exception tree: mapping the cloud's error envelopes, and ConfigError's wording."""

from __future__ import annotations

import pytest

from poller.core.errors import (
    ApiError,
    AuthError,
    ClockSkewError,
    ConfigError,
    CredentialsNotFound,
    InvalidRequestError,
    NonceReusedError,
    PermissionDenied,
    PollerError,
    ServerError,
    ThrottledError,
    UnknownApiError,
    error_for_response,
)


def api(code: str | None, status: int = 400, message: str | None = "msg") -> ApiError:
    return error_for_response(
        http_status=status, code=code, message=message, request_id="REQ-9", retry_after_s=None
    )


@pytest.mark.parametrize(
    ("code", "status", "cls", "retriable", "fatal"),
    [
        ("Throttling.User", 400, ThrottledError, True, False),
        ("Throttling", 503, ThrottledError, True, False),
        ("Throttling.Api", 429, ThrottledError, True, False),
        ("SignatureDoesNotMatch", 400, AuthError, False, True),
        ("IncompleteSignature", 400, AuthError, False, True),
        ("InvalidAccessKeyId.NotFound", 404, AuthError, False, True),
        ("InvalidAccessKeyId.Inactive", 400, AuthError, False, True),
        ("InvalidSecurityToken.Expired", 400, AuthError, False, True),
        ("InvalidTimeStamp.Expired", 400, ClockSkewError, False, True),
        ("InvalidTimeStamp.Format", 400, ClockSkewError, False, True),
        ("SignatureNonceUsed", 400, NonceReusedError, True, False),
        ("Forbidden", 403, PermissionDenied, False, False),
        ("Forbidden.RAM", 403, PermissionDenied, False, False),
        ("NoPermission", 403, PermissionDenied, False, False),
        ("InvalidParameter", 400, InvalidRequestError, False, False),
        ("InvalidParameter.UserIds", 400, InvalidRequestError, False, False),
        ("MissingParameter", 400, InvalidRequestError, False, False),
        ("MissingAppId", 400, InvalidRequestError, False, False),
        ("InternalError", 500, ServerError, True, False),
        ("ServiceUnavailable", 503, ServerError, True, False),
        ("SomethingNew", 502, ApiError, True, False),
        ("SomethingNew", 500, ApiError, True, False),
        ("SomethingNew", 409, UnknownApiError, False, False),
        ("SomethingNew", 400, UnknownApiError, False, False),
        (None, 429, ThrottledError, True, False),
        (None, 503, ApiError, True, False),
        (None, 404, UnknownApiError, False, False),
        (None, 408, UnknownApiError, True, False),
    ],
)
def test_error_for_response_classes(
    code: str | None, status: int, cls: type[ApiError], retriable: bool, fatal: bool
) -> None:
    err = api(code, status)
    assert isinstance(err, cls)
    assert isinstance(err, ApiError)
    assert isinstance(err, PollerError)
    assert err.retriable is retriable
    assert err.fatal is fatal
    assert err.http_status == status
    assert err.request_id == "REQ-9"
    assert err.code == (code or f"HTTP{status}")


def test_code_decides_over_status() -> None:
    # Gateways differ in statuses; the Code is what identifies the error.
    assert isinstance(api("Throttling.User", 400), ThrottledError)
    assert isinstance(api("Forbidden.RAM", 500), PermissionDenied)
    assert isinstance(api("InternalError", 400), ServerError)


def test_clock_skew_message() -> None:
    err = api("InvalidTimeStamp.Expired", 400, "Specified time stamp or date value is expired.")
    assert isinstance(err, ClockSkewError)
    assert isinstance(err, AuthError)
    assert "clock skew" in err.message
    assert "clock" in str(err)
    assert "Specified time stamp or date value is expired." in err.message


def test_str_shows_code_status_and_message() -> None:
    err = api("Forbidden", 403, "User not authorized to operate on the specified resource.")
    assert str(err) == (
        "Forbidden (HTTP 403): User not authorized to operate on the specified resource."
    )
    assert err.message == "User not authorized to operate on the specified resource."


def test_missing_message() -> None:
    assert api("InternalError", 500, None).message == "(no message)"


def test_retry_after_is_carried() -> None:
    err = error_for_response(
        http_status=400,
        code="Throttling.User",
        message="Request was denied due to user flow control.",
        request_id=None,
        retry_after_s=0.25,
    )
    assert isinstance(err, ThrottledError)
    assert err.retry_after_s == 0.25
    assert err.request_id is None


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"source": "poller.toml", "line": 12, "key": "x"}, "poller.toml:12, key 'x': bad"),
        ({"source": "poller.toml", "key": "limits.qps"}, "poller.toml, key 'limits.qps': bad"),
        ({"source": "uids.txt", "line": 3}, "uids.txt:3: bad"),
        ({"source": "poller.toml"}, "poller.toml: bad"),
        ({"key": "targets[0].app_id"}, "key 'targets[0].app_id': bad"),
        ({}, "bad"),
    ],
)
def test_config_error_format(kwargs: dict[str, object], expected: str) -> None:
    err = ConfigError("bad", **kwargs)  # type: ignore[arg-type]
    assert str(err) == expected
    assert err.message == expected
    assert err.fatal
    assert not err.retriable
    assert err.code == "ConfigError"
    assert (err.source, err.key, err.line) == (
        kwargs.get("source"),
        kwargs.get("key"),
        kwargs.get("line"),
    )


def test_credentials_not_found_is_a_config_error() -> None:
    err = CredentialsNotFound("no credentials")
    assert isinstance(err, ConfigError)
    assert err.fatal
    assert err.code == "CredentialsNotFound"
