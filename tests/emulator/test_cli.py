"""The command line: flag parsing into :class:`EmulatorConfig`, and the standalone server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp
import pytest

from poller.emulator import AccessKey, EmulatorConfig, FaultRates, GroupSpec, Latency
from poller.emulator.cli import main


def test_defaults() -> None:
    config = EmulatorConfig.from_args([])
    assert (config.host, config.port, config.qps) == ("127.0.0.1", 8780, 100)
    assert config.keys == (AccessKey("demo-key", "demo-secret"),)
    assert config.groups == (GroupSpec("demo-app", "demo-group", 1000),)
    assert (config.online_fraction, config.churn_per_s, config.hang_s) == (0.5, 0.0, 30.0)
    assert config.date_window_s == 900.0 and not config.faults and not config.latency
    assert config == EmulatorConfig()


def test_all_flags() -> None:
    config = EmulatorConfig.from_args(
        [
            "--host",
            "127.0.0.2",
            "--port",
            "0",
            "--qps",
            "7",
            "--access-key",
            "k1:s1",
            "--access-key",
            "k2:s2:app1,app2@acct2",
            "--sts-key",
            "STS.k:s3:tok:app1",
            "--group",
            "a/g:5",
            "--group",
            "b/h:0",
            "--online-fraction",
            "0.25",
            "--churn-per-s",
            "3",
            "--seed",
            "9",
            "--latency-ms",
            "50±10",
            "--faults",
            "500=0.1,hang=0.2",
            "--fault-seed",
            "4",
            "--hang-s",
            "1.5",
            "--date-window-s",
            "60",
        ],
        wall_clock=lambda: 5.0,
    )
    assert [k.key_id for k in config.keys] == ["k1", "k2", "STS.k"]
    assert config.keys[1].account == "acct2" and config.keys[1].apps == frozenset({"app1", "app2"})
    assert config.keys[2].security_token == "tok"
    assert config.groups == (GroupSpec("a", "g", 5), GroupSpec("b", "h", 0))
    assert config.latency == Latency(50, 10) and config.faults == FaultRates.parse(
        "500=0.1,hang=0.2"
    )
    assert (config.qps, config.seed, config.effective_fault_seed) == (7, 9, 4)
    assert (config.hang_s, config.date_window_s, config.online_fraction) == (1.5, 60.0, 0.25)
    assert config.wall_clock() == 5.0
    for secret in ("s1", "s2", "s3", "tok"):
        assert f"'{secret}'" not in repr(config)


@pytest.mark.parametrize(
    "argv",
    [
        ["--qps", "-1"],
        ["--faults", "500=2"],
        ["--access-key", "nosecret"],
        ["--group", "x"],
        ["--online-fraction", "1.5"],
        ["--latency-ms", "slow"],
        ["--port", "70000"],
        ["--bogus"],
        ["--access-key", "a:b", "--access-key", "a:c"],
        ["--log-level", "LOUD"],
    ],
)
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "poller emulator" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--access-key" in capsys.readouterr().out


async def test_standalone_server_prints_url_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "poller.emulator",
        "--port",
        "0",
        "--qps",
        "5",
        "--group",
        "demo-app/demo-group:3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        url = line.decode().strip()
        assert url.startswith("http://127.0.0.1:") and int(url.rsplit(":", 1)[1]) > 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/_emulator/config") as resp,
        ):
            assert (await resp.json())["qps"] == 5
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        assert await process.stdout.read() == b""  # nothing but the URL on stdout
        err = (await process.stderr.read()).decode()
        assert "listening on" in err and "demo-secret" not in err
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_port_in_use_exits_1() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "poller.emulator",
            "--port",
            str(port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 1 and out == b""
        assert b"cannot start" in err
    finally:
        server.close()
        await server.wait_closed()
