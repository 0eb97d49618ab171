"""What every benchmark that starts processes shares: progress lines on stderr, and its child
processes (emulator, Redis, pollers, daemons) stopped on any exit, SIGTERM and SIGHUP included.

::

    from children import CHILDREN, log, stop_children_on_exit, workdir

    stop_children_on_exit()
    with workdir("poller-x-", keep=args.keep_tmp) as tmp:
        proc = subprocess.Popen(...)
        CHILDREN.add(proc)
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["CHILDREN", "kill_children", "log", "stop_children_on_exit", "workdir"]

#: Processes to kill if they are still running when the benchmark ends.
CHILDREN: set[subprocess.Popen[bytes]] = set()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def kill_children() -> None:
    for proc in list(CHILDREN):
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        CHILDREN.discard(proc)


def _on_signal(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds the with-blocks: every child is stopped


def stop_children_on_exit() -> None:
    """Kill the children at exit, and turn SIGTERM and SIGHUP into an orderly exit."""
    atexit.register(kill_children)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


@contextlib.contextmanager
def workdir(prefix: str, *, keep: bool) -> Iterator[Path]:
    """A temporary folder, removed at the end (``keep``: kept and named); the children are
    stopped first."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        kill_children()
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
