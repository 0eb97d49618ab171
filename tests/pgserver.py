"""A real PostgreSQL server for tests: a fresh cluster in a folder it is given, unix socket only.

The ``postgres_server`` fixture (``tests/conftest.py``) starts one per test and stops it afterwards.

The cluster is made by ``initdb`` (trust authentication, superuser ``poller``, UTF8, locale C) and
the ``postgres`` binary runs as a child of the test process, listening on a unix socket only
(``listen_addresses=''``), with a database ``poller``. ``fsync`` and full-page writes are off for
speed: that loses data only when the machine itself crashes, so a ``kill()`` (SIGKILL of the
postmaster) followed by ``start()`` is a real crash and crash recovery; ``synchronous_commit`` stays
on, so what was committed before the kill is there afterwards.

PostgreSQL refuses to run as root: as root, ``initdb`` and ``postgres`` run as ``nobody`` in a
private ``/tmp/pg-*`` folder (every folder above the test's own is usually closed to ``nobody``),
removed by ``close()``; the server log stays in the given folder either way.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import quote

# sockaddr_un.sun_path holds 108 bytes on Linux, one of them the terminating NUL.
_SUN_PATH_MAX = 107
_BINARIES = ("initdb", "pg_ctl", "postgres")
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
# Settings for a throwaway test server. None of them weakens what a process crash does.
_SETTINGS = {
    "fsync": "off",  # only an OS crash or power loss could lose written data
    "full_page_writes": "off",  # torn pages need an OS crash too
    "synchronous_commit": "on",  # a commit is in the WAL (OS cache) before the client hears of it
    "jit": "off",
    "logging_collector": "off",  # the log goes to stderr: our log file
    "max_connections": "50",
}


def _has_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in _BINARIES)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name))


def find_postgres_bindir() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: ``pg_config --bindir`` if it
    has them, else the highest ``/usr/lib/postgresql/<version>/bin`` (Debian's place, not on
    PATH), else the folder of ``initdb`` on PATH; None if there is none."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and _has_binaries(Path(out)):
            return Path(out)
    if _DEBIAN_ROOT.is_dir():
        versions = [
            entry / "bin"
            for entry in _DEBIAN_ROOT.iterdir()
            if re.fullmatch(r"\d+(\.\d+)*", entry.name) and _has_binaries(entry / "bin")
        ]
        if versions:
            return max(versions, key=lambda p: _version_key(p.parent))
    initdb = shutil.which("initdb")
    if initdb is not None:
        # Resolve symlinks: the other binaries sit next to the real initdb.
        for candidate in (Path(initdb).parent, Path(initdb).resolve().parent):
            if _has_binaries(candidate):
                return candidate
    return None


def _free_port() -> int:
    """A port number nobody listens on at 127.0.0.1. The server opens no TCP socket: the number
    names its unix socket (``.s.PGSQL.<port>``) and seeds its shared-memory key."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_state(pid: int) -> str | None:
    """The state letter of process ``pid`` from /proc (``Z`` for a zombie), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s children (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry))
    return found


def _socket_accepts(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(path))
            return True
    except OSError:
        return False


class PostgresServer:
    """A ``postgres`` child process with its own fresh cluster, on a unix socket only.

    ``start()`` makes the cluster on first use (``initdb`` plus the database ``poller``), then
    starts the server on it; ``stop()`` is a fast shutdown, ``kill()`` a crash (SIGKILL of the
    postmaster), and ``start()`` after either comes back on the same data and socket (after a
    kill, through crash recovery). Every wait is bounded by ``timeout`` seconds.
    """

    def __init__(
        self,
        directory: Path,
        bindir: Path | None = None,
        timeout: float = 30.0,
        user: str = "poller",
        database: str = "poller",
        settings: dict[str, str] | None = None,
        run_as: str = "nobody",
    ) -> None:
        found = bindir or find_postgres_bindir()
        if found is None:
            raise FileNotFoundError("PostgreSQL (initdb, pg_ctl, postgres) not found")
        self.bindir = found
        self.directory = directory
        self.timeout = timeout
        self.user = user
        self.database = database
        self.settings = {**_SETTINGS, **(settings or {})}
        self.run_as = run_as  # the unprivileged account used when we are root
        self.log_path = directory / "postgres.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._private_dir: Path | None = None  # made by us, removed by close()
        self._data_dir: Path | None = None
        self._socket_dir: Path | None = None
        self._uid: int | None = None
        self._gid: int | None = None

    # -- where things are ---------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise RuntimeError("the PostgreSQL server was never started")
        return self._data_dir

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            raise RuntimeError("the PostgreSQL server was never started")
        return self._socket_dir

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port}"

    @property
    def dsn(self) -> str:
        """``postgresql://poller@/poller?host=<socket dir>&port=<port>``, for asyncpg or libpq."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{self.user}@/{self.database}?host={host}&port={self.port}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return None if self.proc is None else self.proc.pid

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server (making the cluster first, on first use) and wait until it accepts
        connections: after a :meth:`kill`, that includes crash recovery."""
        if self.proc is not None:
            raise RuntimeError("the PostgreSQL server is already running")
        if self._data_dir is None:
            try:
                self._prepare()
            except BaseException:
                self._forget_folders()
                raise
        argv = [str(self.bindir / "postgres"), *self._server_args()]
        with self.log_path.open("ab") as log:
            self.proc = self._popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + self.timeout
        while not self._ready(self.proc.pid):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"postgres exited {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self._halt(signal.SIGQUIT)
                raise TimeoutError(
                    f"postgres did not accept connections within {self.timeout} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit); :meth:`start`
        brings the same data back."""
        self._halt(signal.SIGINT)

    def kill(self) -> None:
        """Crash: SIGKILL the postmaster, then wait until its orphaned backends have noticed and
        exited (a new postmaster refuses shared memory they still hold). :meth:`start` then runs
        crash recovery."""
        proc, self.proc = self.proc, None
        if proc is None:
            raise RuntimeError("the PostgreSQL server is not running")
        children = _children(proc.pid)
        proc.kill()
        proc.wait(timeout=self.timeout)
        deadline = time.monotonic() + self.timeout
        # Orphans are reparented; one that is a zombie has exited (and detached its memory).
        while alive := [pid for pid in children if _proc_state(pid) not in (None, "Z")]:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"postgres backends {alive} still running {self.timeout} s after the "
                    f"postmaster was killed:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def restart(self) -> None:
        """Fast shutdown, then start again on the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server if it runs and remove the private folder made when running as root
        or for a short socket path (the log stays in ``directory``). Meant as the end."""
        self._halt(signal.SIGINT)
        if self._private_dir is not None:
            self._forget_folders()

    def log(self) -> str:
        """The server's log so far (``initdb``'s output included)."""
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

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

    # -- internals ----------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Choose the folders, ``initdb`` the cluster and create the database."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(self.run_as)
            except KeyError:
                raise RuntimeError(
                    f"PostgreSQL will not run as root and there is no user {self.run_as!r}"
                ) from None
            self._uid = account.pw_uid
            try:
                self._gid = grp.getgrnam("nogroup").gr_gid
            except KeyError:
                self._gid = account.pw_gid
            # The folders above the test's own are usually closed to that user: use a private
            # one in the system temp folder (short enough for the socket path too).
            self._private_dir = Path(tempfile.mkdtemp(prefix="pg-"))
            os.chown(self._private_dir, self._uid, self._gid)
            root = self._private_dir
        else:
            root = self.directory
        self._data_dir = root / "data"
        socket_dir = root
        if len(os.fsencode(socket_dir / f".s.PGSQL.{self.port}.lock")) > _SUN_PATH_MAX:
            self._private_dir = Path(tempfile.mkdtemp(prefix="pg-"))
            socket_dir = self._private_dir
        self._socket_dir = socket_dir
        self._run(
            [
                str(self.bindir / "initdb"),
                "--pgdata", str(self._data_dir),
                "--auth=trust",
                "--username", self.user,
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            what="initdb",
        )  # fmt: skip
        if self.database != "postgres":
            # Single-user mode, before the server ever listens: needs no client binaries.
            self._run(
                [
                    str(self.bindir / "postgres"),
                    "--single",
                    "-D", str(self._data_dir),
                    *(f"-c{name}={value}" for name, value in self.settings.items()),
                    "template1",
                ],
                what="CREATE DATABASE",
                stdin=f'CREATE DATABASE "{self.database}";\n'.encode(),
            )  # fmt: skip

    def _forget_folders(self) -> None:
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
        self._private_dir = None
        self._data_dir = None
        self._socket_dir = None
        self._uid = self._gid = None

    def _server_args(self) -> list[str]:
        settings = {
            **self.settings,
            "listen_addresses": "",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
        }
        return [
            "-D",
            str(self.data_dir),
            *(f"-c{name}={value}" for name, value in settings.items()),
        ]

    def _ready(self, pid: int) -> bool:
        """Whether the postmaster ``pid`` says it accepts connections (line 8 of postmaster.pid,
        as ``pg_ctl -w`` checks) and its socket takes a connect."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return False
        if len(lines) < 8 or lines[0].strip() != str(pid) or lines[7].strip() != "ready":
            return False
        return _socket_accepts(self.socket_path)

    def _run(self, argv: list[str], what: str, stdin: bytes = b"") -> None:
        """Run a setup command as the server's user; its output goes to the log."""
        with self.log_path.open("ab") as log:
            log.write(f"== {what}\n".encode())
            log.flush()
            proc = self._popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
            try:
                out, _ = proc.communicate(stdin, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise TimeoutError(
                    f"{what} took more than {self.timeout} s:\n{self.log_tail()}"
                ) from None
            log.write(out + b"\n")
        # Single-user mode exits 0 even when the statement fails.
        if proc.returncode != 0 or b"ERROR:" in out:
            raise RuntimeError(f"{what} failed ({proc.returncode}):\n{self.log_tail()}")

    def _popen(
        self,
        argv: list[str],
        *,
        stdout: int | IO[bytes],
        stderr: int | IO[bytes],
        stdin: int = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        # PG* variables (PGDATA, PGPORT, PGOPTIONS, ...) would change what the binaries do.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._uid is None:
            return subprocess.Popen(
                argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=self.directory
            )
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=self.data_dir.parent,  # a folder that user may enter
            user=self._uid,
            group=self._gid,
            extra_groups=[],
        )

    def _halt(self, first: signal.Signals) -> None:
        """Send ``first`` (SIGINT: fast, SIGQUIT: immediate shutdown) and wait; escalate to
        SIGQUIT, then SIGKILL, if the server does not exit in time."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig in (first, signal.SIGQUIT):
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            try:
                proc.wait(timeout=self.timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        if proc.poll() is None:
            proc.kill()
        proc.wait()
