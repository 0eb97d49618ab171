"""Command line: ``poller demo | once | run | check-config | state | cluster | db | emulator``.

Records go to stdout (or ``--output``), logs and progress to stderr. Exit codes: 0 success,
2 usage, 77 permission denied for every request, 78 configuration or credentials rejected,
69 service unavailable after retries, 130/143 interrupted, 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from poller.config import PollerConfig, load_config, render_toml
from poller.core.apis import API_ACTIONS
from poller.core.errors import ConfigError, PollerError, SinkError

from .exits import (
    EX_CONFIG,
    EX_FAILURE,
    EX_OK,
    EX_UNAVAILABLE,
    EX_USAGE,
    print_error,
    signal_exit_code,
)

__all__ = ["main"]


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
    from .logs import install_redactor

    install_redactor(None)  # the redacting filter on the handler; the Poller's secrets follow


def _check_config(args: argparse.Namespace) -> int:
    """Print the effective config, then refuse (ConfigError, exit 78) what ``poller run`` would."""
    config = load_config(args.file)
    header = f"effective configuration of {args.file} (secrets masked)"
    print(render_toml(config, header=header), end="")
    from poller.wire.proxy import describe_proxy

    print(f"# {describe_proxy(config.api)}", flush=True)
    _check_runnable(config)
    return EX_OK


def _check_runnable(config: PollerConfig) -> None:
    """Raise the ConfigError ``poller run`` would stop on before its first sweep, in its order:
    the daemon's target plans (no ``[[targets]]``; a missing UID file without a good copy in the
    state directory), the credentials chain, a proxy the builtin transport cannot use, then
    what webhook and PostgreSQL sinks need from the environment (secrets, header variables, a
    CA bundle); the database itself is not contacted (``poller db init`` does)."""
    from poller.apps.daemon import daemon_plans
    from poller.engine.state import resolve_state_dir
    from poller.engine.work import WorkBuilder
    from poller.wire.credentials import resolve_credentials
    from poller.wire.proxy import check_builtin_transport

    state_dir = resolve_state_dir(config.daemon.state_dir)
    daemon_plans(config, WorkBuilder(copies_dir=state_dir / "uid-files"))
    resolve_credentials(config.credentials)
    check_builtin_transport(config.api)
    for i, sink in enumerate(config.sinks):
        if sink.kind in ("webhook", "postgres"):  # secrets from the environment, CA; unopened
            from poller.engine.sinks import sinks_from_config

            try:
                sinks_from_config([sink], emit=config.daemon.emit, state_dir=state_dir)
            except ConfigError as exc:
                key = (exc.key or "url").rpartition(".")[2]  # "sinks.ca_file" -> "ca_file"
                raise ConfigError(
                    exc.detail, source=config.source, key=f"sinks[{i}].{key}"
                ) from None


def _state_command(args: argparse.Namespace) -> int:
    """``poller state show|reset``: the daemon's saved state (see poller.engine.state)."""
    from poller.engine.state import StateStore, resolve_state_dir

    config = load_config(args.config)
    store = StateStore(resolve_state_dir(config.daemon.state_dir))
    try:
        if args.action == "reset":
            store.lock()  # refuses while a daemon holds it
            existed = store.reset()
            print(f"state cleared: {store.path}" if existed else f"no state at {store.path}")
            return EX_OK
        summary = store.summary()
        if summary is None:
            print(f"no state yet at {store.path}")
            return EX_OK
        sweep, targets = summary
        print(f"state file: {store.path}\nlast sweep: {sweep}\ntargets: {len(targets)}")
        for t in targets:
            api, app_id, group_id = t.key
            where = app_id if group_id is None else f"{app_id}/{group_id}"
            print(f"  {api} {where}: {t.uids} UIDs known, {t.online} online, last sweep {sweep}")
        return EX_OK
    finally:
        store.close()


def _cluster_command(args: argparse.Namespace) -> int:
    """``poller cluster status``: the fleet's members, budget use and shards, read from Redis."""
    config = load_config(args.config)
    cluster = config.cluster
    if cluster is None:
        raise ConfigError(
            "no [cluster] section: this poller is not part of a fleet", source=args.config
        )
    from poller.fleet import FleetUnavailable, account_of
    from poller.fleet.status import read_cluster, render_cluster
    from poller.wire.credentials import resolve_credentials
    from poller.wire.discovery import LIST_ACTION, LIVE_LIST_ACTION

    key_id = None if cluster.account else resolve_credentials(config.credentials).access_key_id
    account = account_of(cluster, key_id)
    try:
        view = asyncio.run(
            read_cluster(cluster, account, (*sorted(API_ACTIONS), LIST_ACTION, LIVE_LIST_ACTION))
        )
    except FleetUnavailable as exc:
        print_error(f"cannot read the fleet from Redis: {exc}")
        return EX_UNAVAILABLE
    print(render_cluster(view), end="")
    return EX_OK


def _db_command(args: argparse.Namespace) -> int:
    """``poller db init``: create or migrate the tables of every postgres sink of the config."""
    config = load_config(args.config)
    found = [(i, sink) for i, sink in enumerate(config.sinks) if sink.kind == "postgres"]
    if not found:
        raise ConfigError(
            'no [[sinks]] entry with kind = "postgres"', source=config.source, key="sinks"
        )
    try:
        from poller.engine.postgres import init_schema
    except ImportError as exc:
        if exc.name != "asyncpg":
            raise
        raise ConfigError(
            "a postgres sink needs asyncpg: pip install 'poller[postgres]'", source=config.source
        ) from None
    from poller.config.model import mask_dsn
    from poller.engine.postgres import postgres_dsn

    for i, sink in found:
        try:
            where = f"{mask_dsn(postgres_dsn(sink))} schema {sink.schema}"
            before, after = asyncio.run(init_schema(sink))
        except ConfigError as exc:
            key = (exc.key or "dsn").rpartition(".")[2]
            raise ConfigError(exc.detail, source=config.source, key=f"sinks[{i}].{key}") from None
        except SinkError as exc:
            print_error(str(exc))
            return EX_UNAVAILABLE
        if before == after:
            print(f"sinks[{i}] {where}: already at version {after}")
        elif before == 0:
            print(f"sinks[{i}] {where}: created (version {after})")
        else:
            print(f"sinks[{i}] {where}: migrated from version {before} to {after}")
    return EX_OK


_STD_STREAMS = ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w"))


def _open_closed_std_fds() -> frozenset[int]:
    """Open ``/dev/null`` onto each of fds 0, 1 and 2 that is closed; the ones that were.

    libuv aborts the process (``uv__close`` asserts ``fd > STDERR_FILENO``) when it gets a
    standard fd number for a socket or pipe of its own. Python left ``sys.stdout`` (etc.) as
    ``None`` for a closed fd; it is bound to the new fd, so errors never go to the wrong stream.
    """
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                continue
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)
            closed.add(fd)
    for fd, name, mode in _STD_STREAMS:
        if fd in closed and getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, encoding="utf-8", closefd=False))  # noqa: SIM115
    return frozenset(closed)


def _refuse_closed_stdout(args: argparse.Namespace) -> None:
    """Raise ConfigError when the command would write records to a stdout that was closed
    (now ``/dev/null``): ``once`` without ``--output FILE`` and with no file sinks, ``run``
    with a stdout sink."""

    def to_stdout(config: PollerConfig) -> bool:
        return not config.sinks or any(c.kind == "stdout" for c in config.sinks)

    if args.command == "once":
        if args.output and args.output != "-":
            return
        config = load_config(args.config) if args.config else PollerConfig()
        if args.output == "-" or to_stdout(config):
            raise ConfigError("stdout is closed; use --output FILE")
    elif args.command == "run":
        config = load_config(args.config)
        if to_stdout(config):
            raise ConfigError(
                "stdout is closed but records go to stdout: configure a file sink",
                source=config.source,
                key="sinks",
            )


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
    once.add_argument(
        "--target", help="APP/GROUP to poll, APP for an app-wide --api (default: the config's)"
    )
    once.add_argument(
        "--api",
        choices=sorted(API_ACTIONS),
        help="the presence action of --target (default BatchGetOnlineUsers)",
    )
    once.add_argument(
        "--data-center", help="the app's data center for the current API family, e.g. cn-shanghai"
    )
    once.add_argument("--output", help="append JSON Lines to this file instead of stdout")
    once.add_argument("--endpoint", help="override api.endpoint (host[:port])")
    once.add_argument("--protocol", choices=("https", "http"), help="override api.protocol")
    once.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")

    run = sub.add_parser("run", help="the daemon: sweep every interval until SIGTERM")
    run.add_argument("--config", required=True, help="TOML config file")

    check = sub.add_parser("check-config", help="validate a config and print it, secrets masked")
    check.add_argument("file")

    state = sub.add_parser("state", help="show or reset the daemon's saved state")
    state.add_argument("action", choices=("show", "reset"))
    state.add_argument("--config", required=True, help="TOML config file (for [daemon] state_dir)")

    cluster = sub.add_parser("cluster", help="the fleet sharing this account's budget (Redis)")
    cluster.add_argument("action", choices=("status",))
    cluster.add_argument("--config", required=True, help="TOML config file with [cluster]")

    db = sub.add_parser("db", help="create or migrate the tables of the postgres sinks")
    db.add_argument("action", choices=("init",))
    db.add_argument("--config", required=True, help="TOML config file with postgres [[sinks]]")

    sub.add_parser(
        "emulator",
        help="run the cloud emulator (see 'poller emulator --help')",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    closed = _open_closed_std_fds()  # before any event loop: libuv aborts on a closed std fd
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
        if 1 in closed:
            _refuse_closed_stdout(args)
        if args.command == "run":
            from poller.apps.daemon import Daemon

            return _run(lambda: Daemon(args.config).run())
        if args.command == "demo":
            from poller.apps.demo import run_demo

            return _run(lambda: run_demo(args))
        if args.command == "once":
            from .once import run_once_command

            return _run(lambda: run_once_command(args))
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "state":
            return _state_command(args)
        if args.command == "cluster":
            return _cluster_command(args)
        if args.command == "db":
            return _db_command(args)
    except ConfigError as exc:
        print_error(str(exc))
        return EX_CONFIG
    except SinkError as exc:
        print_error(str(exc))
        return EX_FAILURE
    except PollerError as exc:
        print_error(str(exc))
        return EX_FAILURE
    except KeyboardInterrupt:
        return signal_exit_code()
    return EX_USAGE
