"""What the daemon does with a finished sweep: totals, metrics, readiness, the sweep's log line,
and the count of consecutive sweeps whose credentials were rejected."""

from __future__ import annotations

import logging

from poller.core.clock import Clock
from poller.core.errors import AuthError
from poller.core.records import TargetKey
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

    def sweep_done(
        self,
        stats: SweepStats,
        online: dict[TargetKey, int],
        changes: int,
        rejected: AuthError | None,
        max_auth_failures: int,
    ) -> bool:
        """Account for a sweep; ``False`` when the credentials were rejected too often."""
        self._totals.on_sweep(stats, changes)
        self._metrics.sweep_done(stats, online, changes)
        r = self._readiness
        r.last_sweep_at = self._clock.monotonic()
        keep_going = True
        if rejected is not None:
            keep_going = self._rejected(rejected, max_auth_failures)
        else:
            self.auth_failures = 0
            r.credentials_ok = True if stats.batches_ok else r.credentials_ok
            r.last_sweep_ok = stats.batches_ok > 0 or stats.requests == 0
            r.reason = "ok" if r.last_sweep_ok else "no request of the last sweep succeeded"
        log_event(
            log,
            logging.INFO,
            "sweep",
            **stats.summary(),
            changes=changes,
            online=sum(online.values()),
        )
        return keep_going

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
