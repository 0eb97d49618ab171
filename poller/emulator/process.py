"""Test helpers for poller and for services that embed it.

:class:`EmulatorProcess` runs ``python -m poller.emulator`` as a child process on a free
loopback port (its own interpreter, so its CPU does not compete with the code under test for
the GIL) and offers its inspection API synchronously::

    with EmulatorProcess("--qps", "100", "--group", "app/group:500") as emulator:
        config = emulator.poller_config()
        ...
        assert emulator.stats()["total"]["throttled_total"] == 0

For the current interactive-messaging family declare the app and its data center, e.g.
``EmulatorProcess("--app", "live:cn-shanghai", "--group", "live/room:500")``, and read that
action's meter with ``emulator.action_stats("CheckLiveMessageUsersInGroup")``.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from poller.config import ApiConfig, CredentialsConfig, PollerConfig, render_toml

__all__ = ["EmulatorProcess"]


class EmulatorProcess:
    """The emulator in a subprocess; a context manager that always stops it.

    For HTTPS pass ``"--tls-cert", CERT, "--tls-key", KEY`` and ``ca_file=`` the CA that
    signed them: the inspection calls and :meth:`poller_config` then trust it.
    """

    def __init__(
        self,
        *args: str,
        python: str = sys.executable,
        startup_timeout_s: float = 20.0,
        stderr_path: Path | None = None,
        env: dict[str, str] | None = None,
        ca_file: Path | None = None,
        command_prefix: Sequence[str] = (),
        module: str = "poller.emulator",
    ) -> None:
        self.args: Sequence[str] = args
        #: The CA that signed the emulator's certificate (HTTPS inspection and poller_config).
        self.ca_file = ca_file
        #: Prepended to the command line, e.g. ``("taskset", "-c", "1")`` to pin a core.
        self.command_prefix = tuple(command_prefix)
        self.module = module
        self._python = python
        self._timeout = startup_timeout_s
        self._stderr_path = stderr_path
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_file: Any = None
        self.url = ""

    @property
    def endpoint(self) -> str:
        return self.url.removeprefix("http://").removeprefix("https://")

    @property
    def protocol(self) -> Literal["https", "http"]:
        return "https" if self.url.startswith("https://") else "http"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running child, if any."""
        return self._proc

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> Self:
        stderr: Any = subprocess.DEVNULL
        if self._stderr_path is not None:
            self._stderr_file = self._stderr_path.open("ab")
            stderr = self._stderr_file
        env = dict(os.environ if self._env is None else self._env)
        self._proc = subprocess.Popen(
            [*self.command_prefix, self._python, "-m", self.module, "--port", "0", *self.args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        assert self._proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self._proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self._timeout
        line = b""
        try:
            while not line.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise RuntimeError("the emulator did not print its URL in time")
                chunk = os.read(self._proc.stdout.fileno(), 4096)
                if not chunk:
                    status = self._proc.wait()
                    tail = ""
                    if self._stderr_path is not None:
                        tail = ": " + self._stderr_path.read_text(errors="replace")[-800:]
                    raise RuntimeError(f"the emulator exited early (status {status}){tail}")
                line += chunk
        except BaseException:
            self.stop()
            raise
        finally:
            sel.close()
        self.url = line.decode().splitlines()[0].strip()
        return self

    def stop(self, timeout_s: float = 10.0) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if self._stderr_file is not None:
            self._stderr_file.close()
        return proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        context = None
        if self.ca_file is not None:
            context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/_emulator/stats")
        return result

    def action_stats(self, action: str, account: str | None = None) -> dict[str, Any]:
        """The statistics of one action (``BatchGetOnlineUsers``, ``CheckLiveMessageUsersInGroup``
        ...) over every account, or of one (account, action) pair: the limiter's unit. Each has
        ``max_requests_in_any_1s_window``, ``max_admitted_in_any_1s_window``,
        ``throttled_total`` and the other counters; the first form also ``qps``, its limit."""
        block: dict[str, Any] = self.stats()["actions"][action]
        if account is None:
            return block
        empty = {"requests_total": 0, "throttled_total": 0, "max_requests_in_any_1s_window": 0}
        result: dict[str, Any] = block["accounts"].get(account, empty)
        return result

    def reset(self, *, nonces: bool = False) -> None:
        self._request("POST", "/_emulator/reset", {"nonces": True} if nonces else {})

    def set_faults(self, faults: str, seed: int | None = None) -> None:
        body: dict[str, Any] = {"faults": faults}
        if seed is not None:
            body["seed"] = seed
        self._request("POST", "/_emulator/faults", body)

    def set_clock_offset(self, seconds: float) -> float:
        """Step the emulator's gateway clock to ``seconds`` off the wall clock (date checks and
        the ``Date`` header); returns the offset now in force."""
        result = self._request("POST", "/_emulator/clock", {"offset_s": seconds})
        return float(result["offset_s"])

    def clock_offset(self) -> float:
        """The gateway clock's offset from the wall clock, in seconds."""
        return float(self._request("GET", "/_emulator/clock")["offset_s"])

    def members(self, app_id: str, group_id: str) -> Any:
        return self._request("GET", f"/_emulator/members?app_id={app_id}&group_id={group_id}")

    def change_members(self, app_id: str, group_id: str, **changes: list[str]) -> Any:
        return self._request(
            "POST", "/_emulator/members", {"app_id": app_id, "group_id": group_id, **changes}
        )

    def poller_config(
        self, key_id: str = "demo-key", secret: str = "demo-secret", **changes: Any
    ) -> PollerConfig:
        """A config pointing at this emulator, over HTTPS (trusting ``ca_file``) or HTTP."""
        return PollerConfig(
            api=ApiConfig(
                endpoint=self.endpoint,
                protocol=self.protocol,
                ca_file=self.ca_file,
            ),
            credentials=CredentialsConfig(access_key_id=key_id, access_key_secret=secret),
            **changes,
        )

    def config_toml(self, key_id: str = "demo-key", secret: str = "demo-secret") -> str:
        """The ``[api]`` and ``[credentials]`` tables of :meth:`poller_config` as TOML text, for
        the CLI; append the other tables (``[daemon]``, ``[[targets]]``, ...) to it."""
        return render_toml(
            self.poller_config(key_id, secret),
            mask_secrets=False,
            sections=("api", "credentials"),
        )
