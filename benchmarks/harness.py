"""What the benchmarks that start processes share: progress lines on stderr, their child
processes (emulator, Redis, pollers, daemons) stopped on any exit, SIGTERM and SIGHUP included,
each core's busy share (the work of other processes on the machine shows there), and the
Markdown tables of the reports.

::

    from harness import CHILDREN, log, scratch_dir, stop_children_on_exit

    stop_children_on_exit()
    with scratch_dir("poller-x-", keep=args.keep_tmp) as tmp:
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

__all__ = [
    "CHILDREN",
    "busy_share",
    "cell",
    "core_times",
    "kill_children",
    "log",
    "scratch_dir",
    "stop_children_on_exit",
    "table",
]

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
def scratch_dir(prefix: str, *, keep: bool) -> Iterator[Path]:
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


def core_times() -> dict[int, tuple[int, int]]:
    """``core -> (total, idle + iowait)`` jiffies from ``/proc/stat`` (empty if unreadable)."""
    out: dict[int, tuple[int, int]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            values = [int(x) for x in fields[:8]]
            out[int(name[3:])] = (sum(values), values[3] + values[4])
    return out


def busy_share(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> str:
    """Each core's busy share between two :func:`core_times` readings, e.g. ``0: 35%, 1: 20%``:
    the work of other processes on the machine shows here."""
    parts = []
    for core, (total, idle) in sorted(after.items()):
        t0, i0 = before.get(core, (total, idle))
        if total > t0:
            parts.append(f"{core}: {1 - (idle - i0) / (total - t0):.0%}")
    return ", ".join(parts) or "-"


def cell(x: Any, decimals: int = 2) -> str:
    """One table cell: ``-`` for ``None``, thousands separators, ``|`` escaped."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{decimals}f}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return str(x).replace("|", "\\|")


def table(header: str, rows: list[tuple[Any, ...]], *, decimals: int = 2) -> str:
    """A Markdown table: ``header`` is the columns joined by ``|``; ``None`` shows as ``-``,
    numbers with thousands separators (floats with ``decimals`` places)."""
    columns = header.split("|")
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    lines += ["| " + " | ".join(cell(x, decimals) for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
