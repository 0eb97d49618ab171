"""What the daemon does with a finished sweep: totals, metrics, readiness, the sweep's log line,
and the count of consecutive sweeps whose credentials were rejected.

A :class:`~poller.core.errors.ClockSkewError` (the cloud rejected our timestamp even after the
clock was corrected from its ``Date`` header, or it sent none) is not a rejected credential: it
is logged as clock skew, with the offset, and the daemon keeps polling."""

from __future__ import annotations

import logging

from poller.core.clock import Clock
from poller.core.errors import AuthError, ClockSkewError, ConfigError, PollerError
from poller.core.records import Target, TargetKey
from poller.core.stats import SweepStats, Totals

from .logs import log_event
from .metrics import Metrics, Readiness

__all__ = ["SweepReport"]

log = logging.getLogger("poller.daemon")


class SweepReport:
    def __init__(
        self, metrics: Metrics, readiness: Readiness, totals: Totals, clock: Clock
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._totals = totals
        self._clock = clock
        self.auth_failures = 0
        self._problems: list[str] = []

    def sweep_done(
        self,
        stats: SweepStats,
        online: dict[TargetKey, int],
        changes: int,
        rejected: AuthError | None,
        max_auth_failures: int,
        *,
        clock_offset_s: float | None = None,
    ) -> bool:
        """Account for a sweep; ``False`` when the credentials were rejected too often.

        ``clock_offset_s`` is the poller's learned clock offset (``poller.clock.offset_s``)."""
        self._totals.on_sweep(stats, changes)
        self._metrics.sweep_done(stats, online, changes)
        if clock_offset_s is not None:
            self._metrics.clock_offset.set(clock_offset_s)
        r = self._readiness
        r.last_sweep_at = self._clock.monotonic()
        keep_going = True
        if isinstance(rejected, ClockSkewError):
            self._clock_skew(rejected)
        elif rejected is not None:
            keep_going = self._rejected(rejected, max_auth_failures)
        else:
            self.auth_failures = 0
            r.credentials_ok = True if stats.batches_ok else r.credentials_ok
            r.last_sweep_ok = stats.batches_ok > 0 or stats.requests == 0
            r.reason = "ok" if r.last_sweep_ok else "no request of the last sweep succeeded"
        if self._problems:  # e.g. a UID file that could not be read: ready again once it can
            r.last_sweep_ok = False
            r.reason = "; ".join(self._problems)
            self._problems.clear()
        log_event(
            log,
            logging.INFO,
            "sweep",
            **stats.summary(),
            changes=changes,
            online=sum(online.values()),
        )
        return keep_going

    def problem(self, reason: str) -> None:
        """Something in this sweep's input went wrong (readiness says so after the sweep)."""
        self._problems.append(reason)

    def source_failed(self, target: Target, exc: ConfigError, kept: bool) -> None:
        """A UID file could not be read (``kept``: its last good copy is used instead)."""
        self._metrics.uid_file_errors.inc()
        self.problem(f"UID file of {target} unreadable: {exc.detail}")
        log_event(
            log,
            logging.ERROR,
            "UID file unreadable",
            target=str(target),
            error=str(exc),
            using="the last good copy" if kept else "nothing: the target is skipped this sweep",
        )

    def discovery_failed(self, target: Target, exc: PollerError, known: list[str] | None) -> None:
        """Listing a group's members failed (e.g. a super group the cloud will not list): the
        last list is used, and the metrics and readiness say so."""
        self._metrics.discovery_errors.inc()
        self.problem(f"listing the members of {target} failed: {exc.message}")
        log_event(
            log,
            logging.WARNING,
            "discovery failed",
            target=str(target),
            error=str(exc),
            using="the last member list" if known is not None else "nothing",
        )

    def _clock_skew(self, error: ClockSkewError) -> None:
        """Not the credentials: the count of rejected sweeps is left as it was."""
        r = self._readiness
        r.last_sweep_ok = False
        r.reason = f"clock skew: the API rejected our timestamp ({error.code})"
        if error.offset_s is not None:
            self._metrics.clock_offset.set(error.offset_s)
        log_event(
            log,
            logging.ERROR,
            "clock skew: the API rejected our timestamp; check the local clock (NTP)",
            code=error.code,
            offset_s=None if error.offset_s is None else round(error.offset_s, 1),
        )

    def _rejected(self, error: AuthError, limit: int) -> bool:
        self.auth_failures += 1
        r = self._readiness
        r.credentials_ok = False
        r.last_sweep_ok = False
        r.reason = f"credentials rejected: {error.code}"
        log_event(
            log,
            logging.ERROR,
            "credentials rejected by the API",
            code=error.code,
            consecutive=self.auth_failures,
            limit=limit,
        )
        if self.auth_failures < limit:
            return True
        log_event(
            log,
            logging.ERROR,
            "giving up: the credentials were rejected in every recent sweep; fix them and restart",
            sweeps=self.auth_failures,
        )
        return False
