"""``poller run``: sweeps every ``interval_s``, change events, signals, reload, metrics.

Lifecycle:

* start: read config, resolve credentials, open sinks and the metrics listener, ``READY=1``;
* every ``interval_s`` (measured from sweep start, so no drift; a sweep longer than the interval
  starts the next one at once and says so): discover members of ``discover`` targets, poll every
  target with their batches interleaved, turn presence into change records, write, flush;
* SIGHUP: re-read the config between sweeps; an invalid one is logged and the old one keeps
  running; buffered records are never dropped (``RELOADING=1`` ... ``READY=1``);
* SIGTERM/SIGINT: no new request starts; in-flight ones get ``drain_timeout_s``, then are
  cancelled (their UIDs get ``Cancelled`` records, as do the unsent ones); sinks are flushed and
  closed; ``STOPPING=1``; a one-line summary; exit 0. A second signal exits at once (130/143).
* credentials rejected in ``max_auth_failures`` consecutive sweeps: stop, exit 78.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from poller.apps.logs import log_event
from poller.apps.metrics import HealthServer, Metrics, Readiness
from poller.apps.sdnotify import notify, reloading_message, watchdog_interval_s
from poller.config import PollerConfig, TargetConfig, load_config
from poller.core.changes import ChangeTracker
from poller.core.clock import LoopClock
from poller.core.errors import AuthError, ConfigError, PollerError
from poller.core.ratelimit import PacedRateLimiter
from poller.core.records import Target
from poller.engine.poller import Poller, SweepStats, Work
from poller.engine.sinks import Sink, sinks_from_config
from poller.engine.sources import UidFile, UidInput
from poller.wire.discovery import discover_members

__all__ = ["Daemon"]

log = logging.getLogger("poller.daemon")

EX_OK = 0
EX_CONFIG = 78


@dataclass(slots=True)
class _Totals:
    sweeps: int = 0
    records: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    changes: int = 0
    failed_batches: int = 0


def _check_targets(config: PollerConfig) -> None:
    if not config.targets:
        raise ConfigError("no [[targets]]: the daemon has nothing to poll", source=config.source)
    for i, t in enumerate(config.targets):
        if t.uids is None and t.uids_file is None and not t.discover:
            raise ConfigError(
                "needs uids, uids_file or discover = true",
                source=config.source,
                key=f"targets[{i}]",
            )
        if t.uids_file is not None and not t.uids_file.is_file():
            raise ConfigError(
                f"UID file not found: {t.uids_file}",
                source=config.source,
                key=f"targets[{i}].uids_file",
            )


class Daemon:
    def __init__(self, config_path: str | Path, config: PollerConfig | None = None) -> None:
        self.config_path = Path(config_path)
        self.config = config or load_config(self.config_path)
        _check_targets(self.config)
        self._clock = LoopClock()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._signals: list[int] = []
        self._poller: Poller | None = None
        self._drain_handle: asyncio.TimerHandle | None = None
        self._metrics = Metrics()
        self._readiness = Readiness(max_age_s=self._ready_max_age(self.config))
        self._totals = _Totals()
        self._members: dict[Target, list[str]] = {}
        self._auth_failures = 0
        self._exit_code = EX_OK
        self._sinks: list[Sink] = []
        self._discovery_meter: tuple[float, PacedRateLimiter] | None = None

    @staticmethod
    def _ready_max_age(config: PollerConfig) -> float:
        return config.metrics.ready_max_age_s or 3 * config.daemon.interval_s + 60.0

    # -- signals ---------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int) -> None:
        if self._signals:
            log_event(log, logging.WARNING, "second signal: exiting at once", signal=signum)
            os._exit(128 + signum)
        self._signals.append(signum)
        log_event(
            log,
            logging.INFO,
            "stopping: no new requests; draining in-flight ones",
            signal=signal.Signals(signum).name,
            drain_timeout_s=self.config.daemon.drain_timeout_s,
        )
        notify("STOPPING=1")
        self._stop.set()
        poller = self._poller
        if poller is not None:
            poller.request_stop()
            loop = asyncio.get_running_loop()
            self._drain_handle = loop.call_later(
                self.config.daemon.drain_timeout_s, poller.abort_in_flight
            )

    def _on_hup(self) -> None:
        log_event(log, logging.INFO, "SIGHUP: the config will be re-read before the next sweep")
        self._reload.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    # -- main loop -------------------------------------------------------------------------

    async def run(self) -> int:
        self._install_signals()
        health: HealthServer | None = None
        watchdog: asyncio.Task[None] | None = None
        self._sinks = sinks_from_config(self.config.sinks)
        tracker = ChangeTracker(self.config.daemon.emit)
        try:
            if self.config.metrics.listen:
                health = HealthServer(self.config.metrics.listen, self._metrics, self._readiness)
                try:
                    await health.start()
                except OSError as exc:
                    health = None
                    raise ConfigError(
                        f"cannot listen on {self.config.metrics.listen}: {exc.strerror or exc}",
                        source=self.config.source,
                        key="metrics.listen",
                    ) from exc
                log_event(
                    log,
                    logging.INFO,
                    "metrics listening",
                    url=f"http://{self.config.metrics.listen.rpartition(':')[0]}:{health.port}/metrics",
                )
            self._poller = await self._open_poller(self.config, None)
            interval = watchdog_interval_s()
            if interval:
                watchdog = asyncio.create_task(self._watchdog(interval), name="poller-watchdog")
            notify("READY=1\nSTATUS=polling")
            log_event(
                log,
                logging.INFO,
                "started",
                targets=len(self.config.targets),
                interval_s=self.config.daemon.interval_s,
                emit=self.config.daemon.emit,
            )
            await self._loop(tracker)
        except ConfigError as exc:
            log_event(log, logging.ERROR, "configuration error", error=str(exc))
            self._exit_code = EX_CONFIG
        finally:
            notify("STOPPING=1")
            if self._drain_handle is not None:
                self._drain_handle.cancel()
            for sink in self._sinks:
                try:
                    await sink.aclose()
                except PollerError as exc:
                    log_event(log, logging.ERROR, "closing a sink failed", error=str(exc))
            if self._poller is not None:
                await self._poller.__aexit__(None, None, None)
            if watchdog is not None:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
            if health is not None:
                await health.close()
            self._remove_signals()
            t = self._totals
            log_event(
                log,
                logging.INFO,
                "stopped",
                signal=self._signal_name(),
                sweeps=t.sweeps,
                records=t.records,
                changes=t.changes,
                requests=t.requests,
                retries=t.retries,
                throttled=t.throttled,
                failed_batches=t.failed_batches,
                exit_code=self._exit_code,
            )
        return self._exit_code

    def _signal_name(self) -> str | None:
        return signal.Signals(self._signals[0]).name if self._signals else None

    async def _open_poller(self, config: PollerConfig, previous: Poller | None) -> Poller:
        meter = None
        if previous is not None and previous.config.limits == config.limits:
            meter = previous.rate_meter  # keep the window history: no burst across a reload
        elif previous is not None:
            await asyncio.sleep(1.0 + config.limits.window_margin_ms / 1000.0)
        poller = Poller(config, observer=self._metrics, rate_meter=meter)
        await poller.__aenter__()
        return poller

    async def _loop(self, tracker: ChangeTracker) -> None:
        loop = asyncio.get_running_loop()
        next_start = loop.time() + random.uniform(0, self.config.daemon.start_jitter_s)
        while True:
            await self._sleep_until(next_start)  # returns early for a stop or a reload
            if self._stop.is_set():
                return
            if self._reload.is_set():
                tracker = await self._apply_reload(tracker)
                if loop.time() < next_start:
                    continue  # keep the schedule: a reload never starts a sweep early
            started = loop.time()
            await self._sweep(self._sinks, tracker)
            if self._stop.is_set() or self._exit_code != EX_OK:
                return
            next_start += self.config.daemon.interval_s
            now = loop.time()
            if now > next_start:
                log_event(
                    log,
                    logging.WARNING,
                    "the sweep took longer than the interval; starting the next one now",
                    sweep_s=round(now - started, 3),
                    interval_s=self.config.daemon.interval_s,
                )
                next_start = now

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` (loop time), or until a stop or reload signal."""
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            try:
                await asyncio.wait(
                    {stop, reload}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for fut in (stop, reload):
                    fut.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await fut
            if self._reload.is_set() and not self._stop.is_set():
                return  # the loop applies the reload, then keeps the schedule

    async def _apply_reload(self, tracker: ChangeTracker) -> ChangeTracker:
        self._reload.clear()
        notify(reloading_message())
        try:
            new = load_config(self.config_path)
            _check_targets(new)
        except ConfigError as exc:
            log_event(
                log, logging.ERROR, "reload rejected: keeping the running config", error=str(exc)
            )
            notify("READY=1\nSTATUS=reload rejected; running the previous config")
            return tracker
        old = self.config
        if new.sinks != old.sinks:
            for sink in self._sinks:
                await sink.aclose()  # everything written so far is flushed, nothing dropped
            self._sinks = sinks_from_config(new.sinks)
        if new.daemon.emit != old.daemon.emit:
            tracker.emit = new.daemon.emit
        if (new.api, new.credentials, new.limits, new.retry, new.sweep) != (
            old.api,
            old.credentials,
            old.limits,
            old.retry,
            old.sweep,
        ):
            previous = self._poller
            assert previous is not None
            try:
                self._poller = await self._open_poller(new, previous)
            except ConfigError as exc:
                log_event(
                    log,
                    logging.ERROR,
                    "reload rejected: keeping the running config",
                    error=str(exc),
                )
                notify("READY=1")
                return tracker
            await previous.__aexit__(None, None, None)
        else:
            assert self._poller is not None
            self._poller.config = new
        self.config = new
        self._readiness.max_age_s = self._ready_max_age(new)
        log_event(log, logging.INFO, "reloaded", targets=len(new.targets))
        notify("READY=1\nSTATUS=polling")
        return tracker

    async def _work(self) -> list[Work]:
        assert self._poller is not None
        work: list[Work] = []
        discover = [t for t in self.config.targets if t.discover]
        if discover:
            await self._discover(discover)
        for t in self.config.targets:
            source: UidInput
            if t.discover:
                members = self._members.get(t.target)
                if members is None:
                    continue
                source = members
            elif t.uids is not None:
                source = list(t.uids)
            else:
                assert t.uids_file is not None
                source = UidFile(t.uids_file)
            work.append((t.target, source))
        return work

    async def _discover(self, targets: Sequence[TargetConfig]) -> None:
        poller = self._poller
        assert poller is not None
        client = poller.client
        if client is None:
            return
        qps = self.config.limits.discovery_qps
        if self._discovery_meter is None or self._discovery_meter[0] != qps:
            # One meter for the daemon's life (a new one only when a reload changes the rate).
            self._discovery_meter = (qps, PacedRateLimiter(qps, clock=self._clock))
        meter = self._discovery_meter[1]

        async def one(t: TargetConfig) -> None:
            try:
                members = await discover_members(client, t.target, meter, self._clock)
            except PollerError as exc:
                known = self._members.get(t.target)
                log_event(
                    log,
                    logging.WARNING,
                    "discovery failed",
                    target=str(t.target),
                    error=str(exc),
                    using="the last member list" if known is not None else "nothing",
                )
                return
            self._members[t.target] = members

        async with asyncio.TaskGroup() as tg:
            for t in targets:
                tg.create_task(one(t))

    async def _sweep(self, sinks: list[Sink], tracker: ChangeTracker) -> None:
        poller = self._poller
        assert poller is not None
        work = await self._work()
        fatal: PollerError | None = None
        changes_before = tracker.changes
        try:
            async with contextlib.aclosing(poller.sweep_batches(work)) as batches:
                async for records in batches:
                    out = tracker.process(records)
                    if out:
                        for sink in sinks:
                            await sink.write(out)
        except AuthError as exc:
            fatal = exc
        finally:
            for sink in sinks:
                await sink.flush()
        stats = poller.last
        if stats is None:
            return
        online = tracker.end_sweep(stats.sweep, {t for t, _ in work})
        changes = tracker.changes - changes_before
        self._account(stats, online, changes, fatal)

    def _account(
        self, stats: SweepStats, online: dict[Target, int], changes: int, fatal: PollerError | None
    ) -> None:
        t = self._totals
        t.sweeps += 1
        t.records += stats.records_total
        t.requests += stats.requests
        t.retries += stats.retries
        t.throttled += stats.throttled
        t.changes += changes
        t.failed_batches += stats.batches_failed
        self._metrics.sweep_done(stats, online, changes)
        r = self._readiness
        r.last_sweep_at = self._clock.monotonic()
        if isinstance(fatal, AuthError):
            self._auth_failures += 1
            r.credentials_ok = False
            r.last_sweep_ok = False
            r.reason = f"credentials rejected: {fatal.code}"
            log_event(
                log,
                logging.ERROR,
                "credentials rejected by the API",
                code=fatal.code,
                consecutive=self._auth_failures,
                limit=self.config.daemon.max_auth_failures,
            )
            if self._auth_failures >= self.config.daemon.max_auth_failures:
                log_event(
                    log,
                    logging.ERROR,
                    "giving up: the credentials were rejected in every recent sweep; "
                    "fix them and restart",
                    sweeps=self._auth_failures,
                )
                self._exit_code = EX_CONFIG
        else:
            self._auth_failures = 0
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

    async def _watchdog(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)
