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
* state: each UID's last known state, its change version and the sweep counter are loaded from
  ``[daemon] state_dir`` at start (locked: a second daemon on it exits 78) and saved after each
  sweep, once the sinks flushed its records (:mod:`poller.engine.state`); so after a restart
  the first sweep reports what changed meanwhile, with versions and sweep numbers continuing
  (:class:`~poller.apps.changes.LocalChanges`);
* a sharded fleet (``[cluster] shard_targets``, :mod:`poller.apps.sharded`): sweeps aligned to
  the fleet's clock, only this member's shards polled, transitions decided in Redis; SIGTERM
  hands the shards over before the drain.
* ``[query] listen``: ``GET /v1/presence`` answers from the last known state, or with
  ``fresh=1`` through coalesced lookups (:mod:`poller.apps.query`); it listens once the poller
  is open and closes before it. Its bearer token (``[query] token_env``) is read at start: an
  unset variable is a config error (exit 78).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from poller.config import PollerConfig, env_secret, load_config
from poller.core.clock import Clock, system_clock
from poller.core.errors import AuthError, ConfigError, PollerError
from poller.core.redact import Redactor
from poller.core.stats import Attempt, Totals
from poller.engine.poller import Poller
from poller.engine.sinks import (
    Sink,
    metered_sinks,
    reopen_sinks,
    sinks_from_config,
    wants_presence,
)
from poller.engine.state import StateStore, resolve_state_dir
from poller.engine.work import Plan, WorkBuilder, plan_targets

from .changes import Changes, LocalChanges
from .exits import EX_CONFIG, EX_FAILURE, EX_OK
from .logs import install_redactor, log_event
from .metrics import HealthServer, Metrics, Readiness
from .query import PATH as QUERY_PATH
from .query import QueryServer
from .report import SweepReport
from .sdnotify import notify, reloading_message, watchdog_interval_s
from .signals import StopSignals

if TYPE_CHECKING:  # imports redis: only with [cluster] shard_targets
    from .sharded import FleetSweeps

__all__ = ["Daemon"]

log = logging.getLogger("poller.daemon")

#: The query endpoint's bearer token is refused when shorter.
MIN_TOKEN_CHARS: Final = 16


def daemon_plans(config: PollerConfig, work: WorkBuilder) -> list[Plan]:
    """The targets' plans; a UID file must exist unless a good copy of it is kept."""
    if not config.targets:
        raise ConfigError("no [[targets]]: the daemon has nothing to poll", source=config.source)
    return plan_targets(
        config.targets, source=config.source, check_files=True, known_good=work.has_copy
    )


def _ready_max_age(config: PollerConfig) -> float:
    return config.metrics.ready_max_age_s or 3 * config.daemon.interval_s + 60.0


class Daemon:
    def __init__(
        self,
        config_path: str | Path,
        config: PollerConfig | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.config = config or load_config(self.config_path)
        self._clock = clock or system_clock()
        self._stopping = False
        self._reload = False
        self._wake = asyncio.Event()
        self._poller: Poller | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._metrics = Metrics(clock=self._clock)
        self._readiness = Readiness(max_age_s=_ready_max_age(self.config))
        self._totals = Totals()
        self._report = SweepReport(self._metrics, self._readiness, self._totals, self._clock)
        self._work = WorkBuilder(
            on_discovery_error=self._report.discovery_failed,
            copies_dir=resolve_state_dir(self.config.daemon.state_dir) / "uid-files",
            on_source_error=self._report.source_failed,
        )
        self._plans = daemon_plans(self.config, self._work)
        self._sinks: list[Sink] = []
        self._changes: Changes | None = None  # set by _open_state or _join_shards
        self._fleet_sweeps: FleetSweeps | None = None
        self._query: QueryServer | None = None
        self._signals = StopSignals(self._on_stop_signal, on_hup=self._on_hup)

    # -- signals ---------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int) -> None:
        log_event(
            log,
            logging.INFO,
            "stopping: no new requests; draining in-flight ones",
            signal=signal.Signals(signum).name,
            drain_timeout_s=self.config.daemon.drain_timeout_s,
        )
        notify("STOPPING=1")
        self._stopping = True
        self._wake.set()
        poller = self._poller
        if poller is not None:
            poller.request_stop()
            self._spawn(self._abort_after_drain(poller), "poller-drain")
        if self._fleet_sweeps is not None:  # hand the shards over before draining
            self._spawn(self._fleet_sweeps.leave(), "poller-fleet-leave")

    async def _abort_after_drain(self, poller: Poller) -> None:
        await self._clock.sleep(self.config.daemon.drain_timeout_s)
        poller.abort_in_flight()

    def _on_hup(self) -> None:
        log_event(log, logging.INFO, "SIGHUP: the config will be re-read before the next sweep")
        self._reload = True
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """A stop signal arrived (set from a signal handler while a sweep runs)."""
        return self._stopping

    def _on_attempt(self, event: Attempt) -> None:
        self._metrics.on_attempt(event)
        self._totals.on_attempt(event)

    # -- main loop -------------------------------------------------------------------------

    async def run(self) -> int:
        exit_code = EX_FAILURE  # what the summary says if something unexpected escapes
        self._sinks = self._make_sinks(self.config)
        try:
            async with contextlib.AsyncExitStack() as stack:
                stack.enter_context(self._signals)
                stack.push_async_callback(self._close_sinks)
                token = self._query_token()  # before anything starts: a missing one is fatal
                await self._start_metrics(stack)
                self._metrics.watch_sinks(lambda: metered_sinks(self._sinks))
                first_sweep = await self._open_state(stack)
                self._poller = await stack.enter_async_context(
                    Poller(
                        self.config,
                        clock=self._clock,
                        on_attempt=self._on_attempt,
                        first_sweep=first_sweep,
                    )
                )
                install_redactor(self._poller.client.redactor if self._poller.client else None)
                if self._poller.fleet is not None:
                    install_redactor(Redactor(self._poller.fleet.secrets()))
                    self._metrics.watch_fleet(self._poller.fleet)
                    self._readiness.fleet = self._poller.fleet
                    await self._join_shards(stack)
                await self._start_query(stack, token)  # closed before the poller
                stack.push_async_callback(self._cancel_background)
                self._start_watchdog()
                notify("READY=1\nSTATUS=polling")
                log_event(
                    log,
                    logging.INFO,
                    "started",
                    targets=len(self.config.targets),
                    interval_s=self.config.daemon.interval_s,
                    emit=self.config.daemon.emit,
                )
                exit_code = await self._loop()
        except ConfigError as exc:
            log_event(log, logging.ERROR, "configuration error", error=str(exc))
            exit_code = EX_CONFIG
        finally:
            notify("STOPPING=1")
            self._log_stopped(exit_code)
        return exit_code

    def _make_sinks(self, config: PollerConfig) -> list[Sink]:
        return sinks_from_config(
            config.sinks,
            emit=config.daemon.emit,
            state_dir=resolve_state_dir(config.daemon.state_dir),
            clock=self._clock,
        )

    async def _join_shards(self, stack: contextlib.AsyncExitStack) -> None:
        """With ``[cluster] shard_targets``: take this member's shards (handed over at the end)."""
        cluster = self.config.cluster
        if cluster is None or not cluster.shard_targets or self._poller is None:
            return
        from .sharded import FleetSweeps  # imports redis

        sweeps = FleetSweeps(self._poller, self.config, self._work, self._metrics, self._readiness)
        replay = await sweeps.start()
        stack.push_async_callback(sweeps.leave)
        self._fleet_sweeps = self._changes = sweeps
        if replay:  # decided before a restart, perhaps never flushed: at least once
            for sink in self._sinks:
                await sink.write(replay)
                await sink.flush()
            log_event(
                log,
                logging.INFO,
                "wrote again the change records decided before the restart",
                records=len(replay),
            )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cancel_background(self) -> None:
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _close_sinks(self) -> None:
        for sink in self._sinks:
            try:
                await sink.aclose()
            except PollerError as exc:
                log_event(log, logging.ERROR, "closing a sink failed", error=str(exc))

    async def _open_state(self, stack: contextlib.AsyncExitStack) -> int:
        """Lock ``state_dir`` and, unless a sharded fleet keeps the state in Redis, load the
        saved state; the first sweep's number."""
        store = StateStore(resolve_state_dir(self.config.daemon.state_dir))
        store.lock()  # StateError (exit 78) when another daemon uses the directory
        stack.callback(store.close)
        cluster = self.config.cluster
        if cluster is not None and cluster.shard_targets:
            log_event(log, logging.INFO, "state kept by the fleet in Redis", path=str(store.path))
            return 1  # sweeps are numbered on the fleet's clock (see _join_shards)
        emit = self.config.daemon.emit
        local = LocalChanges(emit, store, presence=wants_presence(self.config.sinks, emit))
        self._changes = local
        return await local.load()

    async def _start_metrics(self, stack: contextlib.AsyncExitStack) -> None:
        listen = self.config.metrics.listen
        if not listen:
            return
        health = HealthServer(listen, self._metrics, self._readiness, clock=self._clock)
        await self._listen(stack, health, "metrics", "/metrics")

    def _query_token(self) -> str | None:
        """The bearer token of the query endpoint, from ``[query] token_env`` (``None``: no
        listener, or no token asked for); never logged, only scrubbed."""
        query = self.config.query
        if not query.listen or not query.token_env:
            return None
        try:
            token = env_secret(query.token_env, key="query.token_env").strip()
        except ConfigError as exc:
            raise ConfigError(exc.detail, source=self.config.source, key=exc.key) from None
        if len(token) < MIN_TOKEN_CHARS:  # short ones are guessable (and escape the redactor)
            raise ConfigError(
                f"the token in environment variable {query.token_env} is {len(token)}"
                f" characters long; use at least {MIN_TOKEN_CHARS} (e.g. openssl rand -hex 16)",
                source=self.config.source,
                key="query.token_env",
            )
        install_redactor(Redactor([token]))
        return token

    async def _start_query(self, stack: contextlib.AsyncExitStack, token: str | None) -> None:
        if not self.config.query.listen or self._poller is None or self._changes is None:
            return
        server = QueryServer(self.config, self._poller, self._changes, self._metrics, token=token)
        await self._listen(stack, server, "query", QUERY_PATH, token=token is not None)
        self._query = server

    async def _listen(
        self,
        stack: contextlib.AsyncExitStack,
        server: HealthServer | QueryServer,
        section: str,
        path: str,
        **fields: object,
    ) -> None:
        """Start ``server`` on ``[section] listen`` (closed with ``stack``); a port that cannot
        be bound is a config error on that key."""
        listen: str = getattr(self.config, section).listen
        try:
            await server.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {listen}: {exc.strerror or exc}",
                source=self.config.source,
                key=f"{section}.listen",
            ) from exc
        stack.push_async_callback(server.close)
        url = f"http://{listen.rpartition(':')[0]}:{server.port}{path}"
        log_event(log, logging.INFO, f"{section} listening", url=url, **fields)

    def _start_watchdog(self) -> None:
        interval = watchdog_interval_s()
        if interval:
            self._spawn(self._watchdog(interval), "poller-watchdog")

    async def _watchdog(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await self._clock.sleep(interval)

    def _log_stopped(self, exit_code: int) -> None:
        t = self._totals
        first = self._signals.first
        log_event(
            log,
            logging.INFO,
            "stopped",
            signal=signal.Signals(first).name if first is not None else None,
            sweeps=t.sweeps,
            records=t.records,
            changes=t.changes,
            requests=t.requests,
            retries=t.retries,
            throttled=t.throttled,
            failed_batches=t.failed_batches,
            exit_code=exit_code,
        )

    async def _loop(self) -> int:
        if self._fleet_sweeps is not None:
            return await self._aligned_loop(self._fleet_sweeps)
        clock = self._clock
        next_start = clock.monotonic() + random.uniform(0, self.config.daemon.start_jitter_s)
        while True:
            await self._sleep_until(next_start)  # returns early for a stop or a reload
            if self._stopping:
                return EX_OK
            if self._reload:
                await self._apply_reload()
                if clock.monotonic() < next_start:
                    continue  # keep the schedule: a reload never starts a sweep early
            started = clock.monotonic()
            if not await self._sweep():
                return EX_CONFIG
            if self.stopping:
                return EX_OK
            next_start += self.config.daemon.interval_s
            now = clock.monotonic()
            if now > next_start:
                log_event(
                    log,
                    logging.WARNING,
                    "the sweep took longer than the interval; starting the next one now",
                    sweep_s=round(now - started, 3),
                    interval_s=self.config.daemon.interval_s,
                )
                next_start = now

    async def _aligned_loop(self, fleet: FleetSweeps) -> int:
        """Sweeps at multiples of ``interval_s`` on the fleet's clock, numbered by them."""
        last: int | None = None
        number, start = fleet.next_sweep(last)
        while True:
            await self._sleep_until(start)  # returns early for a stop or a reload
            if self._stopping:
                return EX_OK
            if self._reload:
                await self._apply_reload()
                number, start = fleet.next_sweep(last)
                continue
            if not await self._sweep(number):
                return EX_CONFIG
            if self.stopping:
                return EX_OK
            last = number
            number, start = fleet.next_sweep(last)
            if number > last + 1:
                log_event(
                    log,
                    logging.WARNING,
                    "the sweep took longer than the interval; skipping to the next aligned start",
                    skipped=number - last - 1,
                    interval_s=self.config.daemon.interval_s,
                )

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` (monotonic), or until a stop or reload signal."""
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0 or self._stopping or self._reload:
            return
        self._wake.clear()
        sleeper = asyncio.ensure_future(self._clock.sleep(remaining))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (sleeper, waker):
                fut.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fut

    async def _apply_reload(self) -> None:
        self._reload = False
        notify(reloading_message(self._clock))
        poller = self._poller
        assert poller is not None
        try:
            new = load_config(self.config_path)
            plans = daemon_plans(new, self._work)
            await poller.reconfigure(new)
            install_redactor(poller.client.redactor if poller.client else None)  # new keys
        except ConfigError as exc:
            log_event(
                log, logging.ERROR, "reload rejected: keeping the running config", error=str(exc)
            )
            notify("READY=1\nSTATUS=reload rejected; running the previous config")
            return
        if new.sinks != self.config.sinks:
            await self._close_sinks()  # everything written so far is flushed, nothing dropped
            self._sinks = self._make_sinks(new)
        else:
            await self._reopen_sinks()  # log rotation: files moved away get new ones
        assert self._changes is not None
        emit = new.daemon.emit
        self._changes.set_emit(emit, presence=wants_presence(new.sinks, emit))
        if self._fleet_sweeps is not None:
            self._fleet_sweeps.reconfigure(new)
        if new.daemon.state_dir != self.config.daemon.state_dir:
            log_event(log, logging.WARNING, "a new [daemon] state_dir applies after a restart")
        old_query, new_query = self.config.query, new.query
        if (new_query.listen, new_query.token_env) != (old_query.listen, old_query.token_env):
            log_event(
                log, logging.WARNING, "a new [query] listen or token_env applies after a restart"
            )
        if self._query is not None:
            self._query.reconfigure(new)
        self.config, self._plans = new, plans
        self._readiness.max_age_s = _ready_max_age(new)
        log_event(log, logging.INFO, "reloaded", targets=len(new.targets))
        notify("READY=1\nSTATUS=polling")

    async def _reopen_sinks(self) -> None:
        try:
            await reopen_sinks(self._sinks)
        except PollerError as exc:  # the next write fails loudly; a reload must not
            log_event(log, logging.ERROR, "reopening a sink failed", error=str(exc))

    async def _sweep(self, number: int | None = None) -> bool:
        """One sweep (number ``number``, else the next) written to the sinks; ``False`` when
        the daemon must give up."""
        poller, decider = self._poller, self._changes
        assert poller is not None and decider is not None
        keep = await decider.begin(number)  # a fleet member polls its shards only
        work = await self._work.build(poller, self._plans)
        fatal: AuthError | None = None
        changes_before = decider.changes
        try:
            batches = poller.sweep_batches(work, number=number, keep=keep)
            async with contextlib.aclosing(batches):
                async for records in batches:
                    out = await decider.process(records)
                    if out:
                        for sink in self._sinks:
                            await sink.write(out)
        except AuthError as exc:
            fatal = exc
        finally:
            for sink in self._sinks:
                await sink.flush()
        stats = poller.last
        if stats is None:
            return True
        online = await decider.end(stats.sweep, sorted({t.key for t, _ in work}, key=str))
        changes = decider.changes - changes_before
        return self._report.sweep_done(
            stats,
            online,
            changes,
            fatal,
            self.config.daemon.max_auth_failures,
            clock_offset_s=poller.clock.offset_s,
        )
