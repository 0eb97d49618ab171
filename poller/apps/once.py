"""``poller once``: one sweep over the configured targets or the given UIDs, records to stdout
or a file, progress on a terminal's stderr, a summary line, and an exit code that says how it
went (see :mod:`poller.apps.exits`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from poller.config import PollerConfig, TargetConfig, load_config
from poller.core.apis import LEGACY_API, api_spec
from poller.core.clock import Clock, system_clock
from poller.core.errors import AuthError, ConfigError, SinkError
from poller.core.stats import SweepStats
from poller.engine.poller import Poller
from poller.engine.sinks import FileSink, Sink, StdoutSink, sinks_from_config
from poller.engine.sources import Stdin, UidFile, UidInput
from poller.engine.state import resolve_state_dir
from poller.engine.work import Plan, WorkBuilder, plan_targets

from .exits import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOPERM,
    EX_OK,
    EX_UNAVAILABLE,
    exit_code_for,
    print_error,
    signal_exit_code,
)
from .logs import install_redactor
from .signals import StopSignals

__all__ = ["run_once_command"]

log = logging.getLogger("poller")


def _plans(args: argparse.Namespace, config: PollerConfig) -> list[Plan]:
    """The sweep's plan: the given UIDs for one target, else every target's own source."""
    given: UidInput | None = None
    if args.uids is not None:
        given = args.uids.split(",")
    elif args.uids_file is not None:
        given = Stdin() if args.uids_file == "-" else UidFile(Path(args.uids_file))
    if args.target:
        targets: list[TargetConfig] = [_target(args)]
    elif args.api or args.data_center:
        raise ConfigError("--api and --data-center describe --target: pass --target too")
    else:
        targets = list(config.targets)
    if not targets:
        raise ConfigError("no target: add [[targets]] to the config or pass --target APP/GROUP")
    if given is None:
        return plan_targets(targets, source=config.source)
    if len(targets) != 1:
        raise ConfigError("--uids/--uids-file need exactly one target; pass --target APP/GROUP")
    return [Plan(targets[0].target, given)]


def _target(args: argparse.Namespace) -> TargetConfig:
    """``--target APP/GROUP`` (``APP`` for an app-wide API) with ``--api``, ``--data-center``."""
    api = args.api or LEGACY_API
    app, sep, group = args.target.partition("/")
    if api_spec(api).app_wide:
        if sep or not app:
            raise ConfigError(f"--target must be APP for {api} (no group), got {args.target!r}")
        return TargetConfig(app_id=app, api=api, data_center=args.data_center)
    if not sep or not app or not group:
        raise ConfigError(f"--target must be APP/GROUP, got {args.target!r}")
    try:
        return TargetConfig(app_id=app, group_id=group, api=api, data_center=args.data_center)
    except ConfigError as exc:  # e.g. a data center for the legacy API
        raise ConfigError(f"--{(exc.key or 'target').replace('_', '-')}: {exc.message}") from None


def _sinks(args: argparse.Namespace, config: PollerConfig) -> list[Sink]:
    if args.output:
        return [FileSink(args.output)] if args.output != "-" else [StdoutSink()]
    return sinks_from_config(config.sinks, state_dir=resolve_state_dir(config.daemon.state_dir))


def _apply_overrides(args: argparse.Namespace, config: PollerConfig) -> PollerConfig:
    changes: dict[str, Any] = {}
    if args.endpoint:
        changes["endpoint"] = args.endpoint
    if args.protocol:
        changes["protocol"] = args.protocol
    if changes:
        config = config.with_changes(api=dataclasses.replace(config.api, **changes))
    return config


async def _progress(stats_of: Callable[[], SweepStats | None], clock: Clock) -> None:
    """One ``\\r``-updated line on a terminal's stderr."""
    start = clock.monotonic()
    try:
        while True:
            await clock.sleep(0.25)
            stats = stats_of()
            if stats is None:
                continue
            elapsed = max(clock.monotonic() - start, 1e-9)
            sys.stderr.write(
                f"\r{stats.records_total} records, {stats.records_total / elapsed:,.0f} UIDs/s, "
                f"{stats.requests} requests, {stats.retries} retries, "
                f"{stats.throttled} throttled   "
            )
            sys.stderr.flush()
    finally:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def summary_line(stats: SweepStats) -> str:
    rate = stats.records_total / stats.duration_s if stats.duration_s > 0 else 0.0
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(stats.records.items()))
    return (
        f"sweep {stats.sweep}: {stats.records_total} records ({statuses}) in "
        f"{stats.duration_s:.2f} s, {rate:,.0f} UIDs/s; {stats.requests} requests, "
        f"{stats.retries} retries, {stats.throttled} throttled"
    )


async def _sweep(poller: Poller, plans: list[Plan], sinks: list[Sink]) -> SweepStats | None:
    """The sweep's counters; ``None`` when the credentials were rejected before it began."""
    try:
        work = await WorkBuilder().build(poller, plans)
        return await poller.run_once(work, sinks)
    except AuthError as exc:
        if poller.last is None:  # rejected while discovering members, before any sweep
            print_error(f"credentials rejected by the API: {exc}")
            return None
        return poller.last


async def run_once_command(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else PollerConfig()
    config = _apply_overrides(args, config)
    plans = _plans(args, config)
    sinks = _sinks(args, config)
    clock = system_clock()
    progress: asyncio.Task[None] | None = None
    async with Poller(config) as poller:
        install_redactor(poller.client.redactor if poller.client else None)

        def on_stop(signum: int) -> None:
            log.warning("signal %d: finishing in-flight requests, then exiting", signum)
            poller.request_stop()

        with StopSignals(on_stop) as signals:
            if sys.stderr.isatty() and not args.quiet:
                progress = asyncio.create_task(_progress(lambda: poller.current, clock))
            try:
                stats = await _sweep(poller, plans, sinks)
            finally:
                if progress is not None:
                    progress.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await progress
                for sink in sinks:
                    with contextlib.suppress(SinkError):
                        await sink.aclose()
    if stats is None:
        return EX_CONFIG
    return _report(args, stats, signals.first)


def _report(args: argparse.Namespace, stats: SweepStats, signum: int | None) -> int:
    if not args.quiet:
        print(f"poller: {summary_line(stats)}", file=sys.stderr, flush=True)
    if isinstance(stats.fatal, AuthError):
        print_error(f"credentials rejected by the API: {stats.fatal}")
    code = exit_code_for(stats)
    if code == EX_NOPERM:
        print_error("permission denied (Forbidden) for every request: check the key's RAM policy")
    elif code == EX_UNAVAILABLE:
        print_error("the API was unavailable: no request succeeded after retries")
    elif code == EX_DATAERR:
        print_error("nothing to poll: every user ID was invalid (see the error records)")
    if signum is not None and code == EX_OK:
        return signal_exit_code(signum)
    return code
