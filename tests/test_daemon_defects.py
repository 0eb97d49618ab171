"""Daemon defects of issue 12, item 10: ``check-config`` refuses what ``run`` refuses, a failing
sink's exit code, a bounded status label, and ``poller run`` with its standard output closed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from poller.apps.metrics import MAX_STATUS_LABELS, Metrics
from poller.config import load_config
from poller.core.stats import SweepStats
from poller.emulator.process import EmulatorProcess
from poller.engine.poller import Poller
from poller.engine.state import resolve_state_dir
from poller.engine.work import WorkBuilder, plan_targets
from tests.daemons import SECRET, DaemonProcess, base_config, target

# `exec 1>&-` closes fd 1 before Python starts (subprocess.DEVNULL would be an open fd).
CLOSED_STDOUT = ("sh", "-c", 'exec 1>&- ; exec "$0" "$@"', sys.executable, "-m", "poller")


# -- a sink that cannot be written ---------------------------------------------------------------


@pytest.mark.slow
def test_a_sink_that_cannot_write_exits_1_and_the_stopped_line_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file, not a directory\n", "utf-8")
    sink_path = blocker / "out.jsonl"  # its parent is a file: root cannot create it either
    with EmulatorProcess() as emulator:
        config = base_config(emulator).replace('path = "out.jsonl"', f'path = "{sink_path}"')
        daemon = DaemonProcess(tmp_path, config + target("demo-app", "demo-group", uids=["u1"]))
        try:
            code = daemon.proc.wait(60)
        finally:
            daemon.stop()
    assert code == 1, daemon.stderr()
    stopped = [e for e in daemon.logs() if e["event"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["exit_code"] == 1, daemon.stderr()
    assert str(sink_path) in daemon.stderr()


# -- poller_uids_total{status} stays bounded -----------------------------------------------------


def test_uids_total_has_at_most_max_status_labels_series_plus_other() -> None:
    metrics = Metrics()
    for sweep in range(1, 4):  # the same 100 codes again: no new series, and "other" keeps up
        stats = SweepStats(sweep=sweep)
        stats.records.update({"presence": 5, **{f"Code.{i:03d}": 1 for i in range(100)}})
        metrics.sweep_done(stats, {}, 0)
    samples = {
        s.labels["status"]: s.value
        for family in metrics.registry.collect()
        if family.name == "poller_uids"
        for s in family.samples
        if s.name == "poller_uids_total"
    }
    assert len(samples) == MAX_STATUS_LABELS + 1
    assert "other" in samples and samples["presence"] == 15
    assert sum(samples.values()) == 3 * 105  # nothing lost, only folded into "other"
    assert samples["other"] == 3 * (100 + 1 - MAX_STATUS_LABELS)
    rendered = metrics.render().decode()
    assert rendered.count("poller_uids_total{") == MAX_STATUS_LABELS + 1


# -- check-config refuses what `poller run` refuses -------------------------------------------


def _no_credentials_env(tmp_path: Path) -> dict[str, str]:
    """The environment without any credentials: no variables, no ~/.alibabacloud file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
    return {**env, "HOME": str(tmp_path / "home"), "STATE_DIRECTORY": str(tmp_path / "state")}


def _poller(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "poller", *args],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def _error_of_run(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The message ``poller run`` stopped with: its "configuration error" log or error line."""
    for line in proc.stderr.decode().splitlines():
        if line.startswith("{") and orjson.loads(line)["event"] == "configuration error":
            return str(orjson.loads(line)["error"])
        if line.startswith("poller: error: "):
            return line.removeprefix("poller: error: ")
    raise AssertionError(proc.stderr.decode())


CREDS = '[credentials]\naccess_key_id = "AKID"\naccess_key_secret = "' + SECRET + '"\n'
TARGET = '\n[[targets]]\napp_id = "a"\ngroup_id = "g"\n'


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "toml", "expected"),
    [
        ("no credentials", TARGET + 'uids = ["u1"]\n', "no credentials"),
        ("no UID file", CREDS + TARGET + 'uids_file = "missing.txt"\n', "UID file not found"),
        ("no targets", CREDS, "no [[targets]]"),
    ],
)
def test_check_config_exits_78_where_run_would_with_its_message(
    tmp_path: Path, case: str, toml: str, expected: str
) -> None:
    path = tmp_path / "poller.toml"
    path.write_text('[metrics]\nlisten = "127.0.0.1:0"\n' + toml, "utf-8")
    env = _no_credentials_env(tmp_path)
    check = _poller(env, "check-config", str(path))
    run = _poller(env, "run", "--config", str(path))
    assert (check.returncode, run.returncode) == (78, 78), (check.stderr, run.stderr)
    stdout, stderr = check.stdout.decode(), check.stderr.decode()
    assert "[metrics]" in stdout and 'listen = "127.0.0.1:0"' in stdout  # printed first
    assert stdout.rstrip("\n").rsplit("\n", 1)[-1].startswith("# ")  # then the proxy line
    message = _error_of_run(run)
    assert expected in message
    assert stderr == f"poller: error: {message}\n", case
    assert SECRET not in stdout + stderr


@pytest.mark.slow
def test_check_config_accepts_a_missing_uid_file_with_a_good_copy_kept(tmp_path: Path) -> None:
    uids = tmp_path / "uids.txt"
    uids.write_text("u1\n", "utf-8")
    path = tmp_path / "poller.toml"
    state = tmp_path / "daemon-state"
    path.write_text(
        f'{CREDS}[daemon]\nstate_dir = "{state}"\n{TARGET}uids_file = "{uids}"\n', "utf-8"
    )
    env = _no_credentials_env(tmp_path)
    assert _poller(env, "check-config", str(path)).returncode == 0
    config = load_config(path)
    builder = WorkBuilder(copies_dir=resolve_state_dir(config.daemon.state_dir) / "uid-files")
    # What a daemon's sweep leaves behind: the good copy (no discovery, so no poller is used).
    asyncio.run(builder.build(cast(Poller, None), plan_targets(config.targets)))
    uids.unlink()
    assert builder.has_copy(config.targets[0].target, uids)
    kept = _poller(env, "check-config", str(path))
    assert kept.returncode == 0, kept.stderr
    (state / "uid-files").rename(state / "elsewhere")  # no copy: the same file is an error now
    gone = _poller(env, "check-config", str(path))
    assert gone.returncode == 78 and b"UID file not found" in gone.stderr


# -- poller run with standard output closed ------------------------------------------------------


def _run_closed_stdout(tmp_path: Path, config: str) -> subprocess.Popen[bytes]:
    path = tmp_path / "poller.toml"
    path.write_text(config, "utf-8")
    return subprocess.Popen(
        [*CLOSED_STDOUT, "run", "--config", str(path)],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")},
    )


@pytest.mark.slow
def test_run_with_stdout_closed_refuses_a_stdout_sink_and_runs_with_a_file_sink(
    tmp_path: Path,
) -> None:
    with EmulatorProcess() as emulator:
        to_file = base_config(emulator) + target("demo-app", "demo-group", uids=["user-000001"])
        to_stdout = to_file.replace('kind = "file"\npath = "out.jsonl"', 'kind = "stdout"')
        refused = _run_closed_stdout(tmp_path, to_stdout)
        _, err = refused.communicate(timeout=60)
        assert refused.returncode == 78, err
        assert b"stdout is closed" in err and b"Assertion" not in err

        daemon = _run_closed_stdout(tmp_path, to_file)
        out = tmp_path / "out.jsonl"
        try:
            deadline = time.monotonic() + 60
            while not (out.exists() and out.read_bytes().endswith(b"\n")):
                assert daemon.poll() is None, daemon.communicate()[1]
                assert time.monotonic() < deadline, "no record written"
                time.sleep(0.05)
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=60)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    assert daemon.returncode == 0, err
    first: dict[str, Any] = orjson.loads(out.read_bytes().split(b"\n")[0])
    assert first["uid"] == "user-000001" and first["type"] == "presence"
