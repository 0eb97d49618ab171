"""Exit codes, one table for every command (sysexits.h where one fits)."""

from __future__ import annotations

import signal
import sys
from typing import Final

from poller.core.errors import AuthError, TlsVerificationError
from poller.core.records import INVALID_USER_ID
from poller.core.stats import SweepStats

__all__ = [
    "EX_CONFIG",
    "EX_DATAERR",
    "EX_FAILURE",
    "EX_NOPERM",
    "EX_OK",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "exit_code_for",
    "print_error",
    "signal_exit_code",
]

#: Success (failed batches are reported as error records).
EX_OK: Final = 0
#: Anything else: a sink that cannot write, an unexpected failure.
EX_FAILURE: Final = 1
#: Bad command-line usage.
EX_USAGE: Final = 2
#: Nothing to poll: every input user ID was invalid (none was sent).
EX_DATAERR: Final = 65
#: The API was unavailable: no request succeeded after retries.
EX_UNAVAILABLE: Final = 69
#: Permission denied (Forbidden) for every request.
EX_NOPERM: Final = 77
#: Configuration error, credentials the cloud rejected, or a server certificate that failed
#: verification.
EX_CONFIG: Final = 78


def signal_exit_code(signum: int = signal.SIGINT) -> int:
    """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


def print_error(message: str) -> None:
    """One ``poller: error: ...`` line on stderr."""
    print(f"poller: error: {message}", file=sys.stderr, flush=True)


def exit_code_for(stats: SweepStats) -> int:
    """The exit code a one-shot sweep ends with."""
    if isinstance(stats.fatal, AuthError | TlsVerificationError):
        return EX_CONFIG
    if stats.fatal is not None:
        return EX_FAILURE
    if stats.requests and stats.forbidden_requests == stats.requests:
        return EX_NOPERM
    if not stats.requests and set(stats.records) == {INVALID_USER_ID}:
        return EX_DATAERR
    if stats.batches_failed and not stats.batches_ok and stats.requests:
        return EX_UNAVAILABLE
    return EX_OK
