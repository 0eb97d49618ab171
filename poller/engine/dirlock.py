"""One process per directory: an exclusive ``fcntl.flock`` on a lock file holding the pid.

Used by the daemon's ``state_dir`` (:mod:`poller.engine.state`) and by a webhook's spool
(:mod:`poller.engine.spool`). The lock goes with the process (``kill -9`` included): the
kernel releases it when the file descriptor is closed.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["DirectoryBusy", "lock_directory"]


class DirectoryBusy(Exception):
    """Another process holds the directory's lock; ``pid`` is what it wrote ("?" if nothing)."""

    def __init__(self, pid: str) -> None:
        super().__init__(f"locked by pid {pid}")
        self.pid = pid


def lock_directory(directory: Path, lock_name: str) -> int:
    """Create ``directory`` (mode 0700), lock ``directory/lock_name`` and write our pid into it;
    returns the lock's file descriptor (close it to release the lock).

    Raises :class:`DirectoryBusy` when another process holds it, ``OSError`` when the
    directory or the lock file cannot be made."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / lock_name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise DirectoryBusy(pid) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
