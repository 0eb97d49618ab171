"""Command line: ``poller demo | once | run | check-config | emulator``.

Records go to stdout (or ``--output``), logs and progress to stderr. Exit codes: 0 success,
2 usage, 77 permission denied for every request, 78 configuration or credentials rejected,
69 service unavailable after retries, 130/143 interrupted, 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

from poller.config import ApiConfig, PollerConfig, TargetConfig, load_config
from poller.core.errors import AuthError, ConfigError, PollerError, SinkError
from poller.core.records import Target
from poller.engine.poller import Poller, SweepStats, Work
from poller.engine.sinks import FileSink, Sink, StdoutSink, sinks_from_config
from poller.engine.sources import Stdin, UidFile, UidInput

__all__ = ["main"]

EX_OK: Final = 0
EX_FAILURE: Final = 1
EX_USAGE: Final = 2
EX_UNAVAILABLE: Final = 69
EX_NOPERM: Final = 77
EX_CONFIG: Final = 78

log = logging.getLogger("poller")


def _run(coro_factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run on uvloop where available; the library itself never picks a loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - non-POSIX
        return asyncio.run(coro_factory())
    return uvloop.run(coro_factory())


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _err(message: str) -> None:
    print(f"poller: error: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# once


def _once_work(
    args: argparse.Namespace, config: PollerConfig
) -> list[tuple[Target, UidInput | None]]:
    """The sweep's work; ``None`` as a source means "discover the members first"."""
    given: UidInput | None = None
    if args.uids is not None:
        given = args.uids.split(",")
    elif args.uids_file is not None:
        given = Stdin() if args.uids_file == "-" else UidFile(Path(args.uids_file))
    if args.target:
        app, sep, group = args.target.partition("/")
        if not sep or not app or not group:
            raise ConfigError(f"--target must be APP/GROUP, got {args.target!r}")
        targets = [TargetConfig(app_id=app, group_id=group)]
    else:
        targets = list(config.targets)
    if not targets:
        raise ConfigError("no target: add [[targets]] to the config or pass --target APP/GROUP")
    if given is not None:
        if len(targets) != 1:
            raise ConfigError("--uids/--uids-file need exactly one target; pass --target APP/GROUP")
        return [(Target(targets[0].app_id, targets[0].group_id), given)]
    work: list[tuple[Target, UidInput | None]] = []
    for i, t in enumerate(targets):
        source: UidInput | None
        if t.uids is not None:
            source = list(t.uids)
        elif t.uids_file is not None:
            source = UidFile(t.uids_file)
        elif t.discover:
            source = None
        else:
            raise ConfigError(
                "no UIDs: give uids, uids_file or discover = true", key=f"targets[{i}]"
            )
        work.append((Target(t.app_id, t.group_id), source))
    return work


async def _resolve_work(
    poller: Poller, config: PollerConfig, planned: list[tuple[Target, UidInput | None]]
) -> list[Work]:
    from poller.core.clock import LoopClock
    from poller.core.ratelimit import PacedRateLimiter
    from poller.wire.discovery import discover_members

    work: list[Work] = []
    meter = PacedRateLimiter(config.limits.discovery_qps)
    for target, source in planned:
        if source is None:
            if poller.client is None:  # pragma: no cover - the CLI always has a client
                raise ConfigError(f"cannot discover members of {target} without a client")
            source = await discover_members(poller.client, target, meter, LoopClock())
        work.append((target, source))
    return work


def _once_sinks(args: argparse.Namespace, config: PollerConfig) -> list[Sink]:
    if args.output:
        return [FileSink(args.output)] if args.output != "-" else [StdoutSink()]
    return sinks_from_config(config.sinks)


def _apply_overrides(args: argparse.Namespace, config: PollerConfig) -> PollerConfig:
    api = config.api
    changes: dict[str, Any] = {}
    if args.endpoint:
        changes["endpoint"] = args.endpoint
    if args.protocol:
        changes["protocol"] = args.protocol
    if changes:
        config = config.with_changes(api=dataclasses.replace(api, **changes))
    return config


async def _progress(
    stats_of: Callable[[], SweepStats | None], loop_time: Callable[[], float]
) -> None:
    """One ``\\r``-updated line on a terminal's stderr."""
    start = loop_time()
    try:
        while True:
            await asyncio.sleep(0.25)
            stats = stats_of()
            if stats is None:
                continue
            elapsed = max(loop_time() - start, 1e-9)
            sys.stderr.write(
                f"\r{stats.records_total} records, {stats.records_total / elapsed:,.0f} UIDs/s, "
                f"{stats.requests} requests, {stats.retries} retries, "
                f"{stats.throttled} throttled   "
            )
            sys.stderr.flush()
    finally:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def _summary_line(stats: SweepStats) -> str:
    rate = stats.records_total / stats.duration_s if stats.duration_s > 0 else 0.0
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(stats.records.items()))
    return (
        f"sweep {stats.sweep}: {stats.records_total} records ({statuses}) in "
        f"{stats.duration_s:.2f} s, {rate:,.0f} UIDs/s; {stats.requests} requests, "
        f"{stats.retries} retries, {stats.throttled} throttled"
    )


def exit_code_for(stats: SweepStats) -> int:
    if isinstance(stats.fatal, AuthError):
        return EX_CONFIG
    if stats.fatal is not None:
        return EX_FAILURE
    if stats.requests and stats.forbidden_requests == stats.requests:
        return EX_NOPERM
    if stats.batches_failed and not stats.batches_ok and stats.requests:
        return EX_UNAVAILABLE
    return EX_OK


async def _once(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else PollerConfig()
    config = _apply_overrides(args, config)
    planned = _once_work(args, config)
    sinks = _once_sinks(args, config)
    loop = asyncio.get_running_loop()
    progress: asyncio.Task[None] | None = None
    interrupted: list[int] = []
    async with Poller(config) as poller:

        def on_signal(signum: int) -> None:
            if interrupted:  # second signal: leave at once
                os._exit(128 + signum)
            interrupted.append(signum)
            log.warning("signal %d: finishing in-flight requests, then exiting", signum)
            poller.request_stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig)
        if sys.stderr.isatty() and not args.quiet:
            progress = asyncio.create_task(_progress(lambda: poller.current, loop.time))
        stats: SweepStats | None = None
        try:
            work = await _resolve_work(poller, config, planned)
            stats = await poller.run_once(work, sinks)
        except AuthError as exc:
            stats = poller.last
            if stats is None:  # rejected while discovering members, before any sweep
                _err(f"credentials rejected by the API: {exc}")
                return EX_CONFIG
        finally:
            if progress is not None:
                progress.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await progress
            for sink in sinks:
                with contextlib.suppress(SinkError):
                    await sink.aclose()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
    if not args.quiet:
        print(f"poller: {_summary_line(stats)}", file=sys.stderr, flush=True)
    if isinstance(stats.fatal, AuthError):
        _err(f"credentials rejected by the API: {stats.fatal}")
    code = exit_code_for(stats)
    if code == EX_NOPERM:
        _err("permission denied (Forbidden) for every request: check the key's RAM policy")
    elif code == EX_UNAVAILABLE:
        _err("the API was unavailable: no request succeeded after retries")
    if interrupted and code == EX_OK:
        return 128 + interrupted[0]
    return code


# ----------------------------------------------------------------------------------------------
# check-config


def _check_config(args: argparse.Namespace) -> int:
    from poller.wire.credentials import mask

    config = load_config(args.file)
    creds = config.credentials
    lines = [f"# effective configuration of {args.file} (secrets masked)"]
    api: ApiConfig = config.api
    lines += ["[api]", *(f"{k} = {_toml(getattr(api, k))}" for k in api.__dataclass_fields__)]
    lines += [
        "",
        "[credentials]",
        f"access_key_id = {_toml(creds.access_key_id)}",
        f"access_key_secret = {_toml(mask(creds.access_key_secret))}",
        f"security_token = {_toml(mask(creds.security_token))}",
    ]
    for name in ("limits", "retry", "sweep", "daemon"):
        section = getattr(config, name)
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_toml(getattr(section, k))}" for k in section.__dataclass_fields__]
    for t in config.targets:
        lines += ["", "[[targets]]"]
        lines += [
            f"{k} = {_toml(getattr(t, k))}"
            for k in t.__dataclass_fields__
            if getattr(t, k) is not None
        ]
    for s in config.sinks:
        lines += ["", "[[sinks]]"]
        lines += [
            f"{k} = {_toml(getattr(s, k))}"
            for k in s.__dataclass_fields__
            if getattr(s, k) is not None
        ]
    print("\n".join(lines))
    return EX_OK


def _toml(value: object) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


# ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poller",
        description="Presence of ApsaraVideo Live message-group users at the API's QPS ceiling.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the pipeline against an in-process emulator")
    demo.add_argument("--sweeps", type=int, default=4, help="number of sweeps (default 4)")
    demo.add_argument("--interval", type=float, default=1.5, help="seconds between sweeps")
    demo.add_argument("--members", type=int, default=1000, help="members of the demo group")
    demo.add_argument("--churn", type=float, default=40.0, help="members flipping per second")
    demo.add_argument("--seed", type=int, default=7)

    once = sub.add_parser("once", help="one sweep over the configured targets or given UIDs")
    once.add_argument("--config", help="TOML config file (default: built-in defaults)")
    src = once.add_mutually_exclusive_group()
    src.add_argument("--uids", help="comma-separated user IDs")
    src.add_argument("--uids-file", help="file with one user ID per line, or - for stdin")
    once.add_argument("--target", help="APP/GROUP to poll (default: the configured target)")
    once.add_argument("--output", help="append JSON Lines to this file instead of stdout")
    once.add_argument("--endpoint", help="override api.endpoint (host[:port])")
    once.add_argument("--protocol", choices=("https", "http"), help="override api.protocol")
    once.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")

    run = sub.add_parser("run", help="the daemon: sweep every interval until SIGTERM")
    run.add_argument("--config", required=True, help="TOML config file")

    check = sub.add_parser("check-config", help="validate a config and print it, secrets masked")
    check.add_argument("file")

    sub.add_parser(
        "emulator",
        help="run the cloud emulator (see 'poller emulator --help')",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulator":
        from poller.emulator.cli import main as emulator_main

        return emulator_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "run":
        from poller.apps.logs import setup_json_logging

        setup_json_logging(args.verbose)
    else:
        _setup_logging(args.verbose)
    try:
        if args.command == "run":
            from poller.apps.daemon import Daemon

            return _run(lambda: Daemon(args.config).run())
        if args.command == "demo":
            from poller.apps.demo import run_demo

            return _run(lambda: run_demo(args))
        if args.command == "once":
            return _run(lambda: _once(args))
        if args.command == "check-config":
            return _check_config(args)
    except ConfigError as exc:
        _err(str(exc))
        return EX_CONFIG
    except SinkError as exc:
        _err(str(exc))
        return EX_FAILURE
    except PollerError as exc:
        _err(str(exc))
        return EX_FAILURE
    except KeyboardInterrupt:
        return 130
    return EX_USAGE
