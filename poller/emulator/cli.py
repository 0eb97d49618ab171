"""``poller emulator``: run the emulator as a standalone server until SIGTERM/SIGINT.

The first line of stdout is exactly the base URL (``http://127.0.0.1:41234``), flushed, so a
parent process can read it to learn the port; logs go to stderr. Exit status: 0 after a signal,
2 for bad flags, 1 if the server cannot start (e.g. the port is taken).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from .config import EmulatorConfig, build_parser
from .server import EmulatorServer

__all__ = ["main", "serve"]

logger = logging.getLogger("poller.emulator")


async def serve(config: EmulatorConfig, stop: asyncio.Event | None = None) -> int:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives; print the URL when listening."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
    try:
        async with EmulatorServer(config) as server:
            print(server.url, flush=True)
            logger.info(
                "emulator listening on %s: qps=%d, live-message-qps=%d, %d key(s), %d group(s), "
                "%d current-family app(s), latency=%sms, faults=%s",
                server.url,
                config.qps,
                config.live_message_qps,
                len(config.keys),
                len(config.groups),
                len(config.apps),
                config.latency,
                config.faults or "none",
            )
            if config.clock_offset_s:
                logger.info("the gateway clock is %+g s off the wall clock", config.clock_offset_s)
            await stop.wait()
            logger.info("shutting down")
    except OSError as exc:
        logger.error("cannot start the emulator: %s", exc)
        return 1
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    return 0


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        config = EmulatorConfig.from_namespace(args, parser)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(f"poller emulator: unknown log level {args.log_level!r}", file=sys.stderr)
        return 2
    logging.basicConfig(
        stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return _run(serve(config))
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C during shutdown
        return 130
