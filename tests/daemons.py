"""A ``poller run`` daemon as a subprocess, for tests: its JSON logs, its records, signals.

The ``daemons`` fixture (``tests/conftest.py``) starts them and kills whatever a test leaves
running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from poller.emulator.process import EmulatorProcess

SECRET = "demo-secret"


class DaemonProcess:
    def __init__(self, tmp: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.config_path = tmp / "poller.toml"
        self.config_path.write_text(config, "utf-8")
        self.out = tmp / "out.jsonl"
        self.err_path = tmp / "daemon.log"
        self._err = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "poller", "run", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            # Each daemon its own state (a daemon keeps state across restarts in its state_dir).
            env={**os.environ, "STATE_DIRECTORY": str(tmp / "state"), **(env or {})},
        )

    def logs(self) -> list[dict[str, Any]]:
        lines = self.err_path.read_bytes().splitlines()
        return [json.loads(line) for line in lines if line.startswith(b"{")]

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        data = self.out.read_bytes()
        if self.proc.poll() is None:
            # Still running: a write may be under way (a reader can see part of a multi-page
            # write), so only whole lines count. Once it exited, the file must end in one.
            data = data[: data.rfind(b"\n") + 1]
        assert not data or data.endswith(b"\n"), "the output ends in a partial line"
        return [orjson.loads(line) for line in data.split(b"\n") if line]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.logs()
            if predicate(logs):
                return logs
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.stderr()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out; daemon log:\n{self.stderr()}")

    def sweep_count(self) -> int:
        """Sweeps the daemon has logged so far."""
        return sum(e["event"] == "sweep" for e in self.logs())

    def sweeps_done(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        return self.wait_for(lambda logs: sum(e["event"] == "sweep" for e in logs) >= n, timeout)

    def close(self) -> None:
        self._err.close()

    def stderr(self) -> str:
        return self.err_path.read_text("utf-8", "replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send one ``sig`` (if still running) and wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._err.close()
            assert SECRET not in self.stderr()


def sweeps_before(logs: list[dict[str, Any]], event: Callable[[dict[str, Any]], bool]) -> int:
    """How many sweeps had completed when the first matching log event was written."""
    count = 0
    for e in logs:
        if event(e):
            return count
        count += e["event"] == "sweep"
    raise AssertionError("event not found")


def base_config(emulator: EmulatorProcess, **daemon: Any) -> str:
    settings = {"interval_s": 0.5, "emit": "all", **daemon}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return (
        emulator.config_toml()
        + f'\n[daemon]\n{lines}\n\n[[sinks]]\nkind = "file"\npath = "out.jsonl"\n'
    )


def target(app: str, group: str, **extra: Any) -> str:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    return f'\n[[targets]]\napp_id = "{app}"\ngroup_id = "{group}"\n{lines}'


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``predicate`` until it returns something true (returned), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def http_get(url: str) -> tuple[int, bytes]:
    """GET ``url`` (a loopback listener): the status and body, an HTTP error's too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def http_json(url: str) -> tuple[int, dict[str, Any]]:
    status, body = http_get(url)
    return status, json.loads(body)


def readyz(metrics_url: str) -> tuple[int, dict[str, Any]]:
    """The daemon's /readyz answer, from the URL of its /metrics."""
    return http_json(metrics_url.replace("/metrics", "/readyz"))


class Flips:
    """Explicit presence flips of one emulator group's members, in the order they were made."""

    def __init__(self, emulator: EmulatorProcess, app: str, group: str) -> None:
        self.emulator, self.app, self.group = emulator, app, group
        self.made: list[tuple[str, bool]] = []

    def __call__(self, uid: str, online: bool) -> None:
        """``uid`` goes offline, or (re)joins the group (online, with a new join time)."""
        if online:
            self.emulator.change_members(self.app, self.group, join=[uid])
        else:
            self.emulator.change_members(self.app, self.group, offline=[uid])
        self.made.append((uid, online))
