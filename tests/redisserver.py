"""A real ``redis-server`` for tests: unix socket only, no persistence, in a folder it is given.

The ``redis_server`` fixture (``tests/conftest.py``) starts one per test and stops it afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

# sockaddr_un.sun_path holds 108 bytes on Linux, one of them the terminating NUL.
_SUN_PATH_MAX = 107
_SOCKET_NAME = "redis.sock"


def find_redis_server() -> str | None:
    """The ``redis-server`` binary: on PATH, else where Debian puts it; None if there is none."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server"):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _pings(path: Path) -> bool:
    """Whether a server on the unix socket ``path`` answers PING with +PONG."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            # Up and answering, whether or not it wants a password first.
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` child process listening only on ``<directory>/redis.sock`` (or, if that
    path is too long for a unix socket, on a socket in a short ``/tmp/pr-*`` folder).

    No persistence: ``restart()`` brings it back empty on the same socket path.
    """

    def __init__(
        self,
        directory: Path,
        binary: str | None = None,
        timeout: float = 10.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise FileNotFoundError("redis-server not found")
        self.binary = found
        self.directory = directory
        self.timeout = timeout
        self.extra_args = extra_args  # e.g. ("--requirepass", "...")
        self.log_path = directory / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._socket_path: Path | None = None
        self._short_dir: Path | None = None

    @property
    def socket_path(self) -> Path:
        if self._socket_path is None:
            raise RuntimeError("the Redis server was never started")
        return self._socket_path

    @property
    def url(self) -> str:
        """``unix://<socket path>``, for ``redis.asyncio.Redis.from_url``."""
        return f"unix://{self.socket_path}"

    def start(self) -> None:
        """Start the server and wait (at most ``timeout`` seconds) until it answers PING."""
        if self.proc is not None:
            raise RuntimeError("the Redis server is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._socket_path is None:
            self._socket_path = self._choose_socket_path()
        argv = [
            self.binary,
            "--port", "0",
            "--unixsocket", str(self._socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            *self.extra_args,
        ]  # fmt: skip
        # Errors before the log file is opened (a bad option) go to stderr: the same file.
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + self.timeout
        while not _pings(self._socket_path):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"redis-server exited {code}:\n{self.log()}")
            if time.monotonic() > deadline:
                self._terminate()
                raise TimeoutError(f"redis-server did not answer PING:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); :meth:`start` brings it back, empty, on the
        same socket path ("Redis down for a while")."""
        self._terminate()

    def restart(self) -> None:
        """Stop and start again on the same socket path: "Redis restarted empty"."""
        self._terminate()
        self.start()

    def close(self) -> None:
        """Stop the server and remove the short socket folder, if one was made."""
        self._terminate()
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None
            self._socket_path = None

    def log(self) -> str:
        """The server's log so far."""
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _choose_socket_path(self) -> Path:
        path = self.directory / _SOCKET_NAME
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            return path
        self._short_dir = Path(tempfile.mkdtemp(prefix="pr-"))
        return self._short_dir / _SOCKET_NAME

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()
