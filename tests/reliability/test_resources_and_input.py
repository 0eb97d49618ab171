"""R10 (bad config files), R12 (a stalled sink pauses polling, memory stays bounded)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from poller.config import ApiConfig, LimitsConfig, PollerConfig, SweepConfig
from poller.core.records import Record, Target
from poller.emulator import EmulatorConfig, EmulatorServer, GroupSpec
from poller.engine.poller import Poller
from poller.engine.sinks import CallbackSink
from poller.wire.signing import SigningCredentials


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[limits]\nqps = "lots"\n', "limits.qps"),
        ("[limits]\nmax_in_flight = 1.5\n", "limits.max_in_flight"),
        ('[api]\nendpont = "x"\n', "api.endpont"),
        ("[deamon]\ninterval_s = 1\n", "deamon"),
        ('[daemon]\ninterval_s = 5\n[[sinks]]\nkind = "file"\n', "sinks[0].path"),
        ('[[targets]]\napp_id = "a"\n', "targets[0].group_id"),
        ("[daemon]\ninterval_s = 5\n", "targets"),
        ('[[targets]]\napp_id = "a"\ngroup_id = "g"\n', "targets[0]"),
    ],
)
def test_bad_config_files_exit_78_naming_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, "utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "poller", "run", "--config", str(path)],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 78, stderr
    assert "bad.toml" in stderr and key in stderr, stderr


async def stalled_sink_run() -> tuple[int, int, int, int]:
    emulator_config = EmulatorConfig(
        port=0, groups=(GroupSpec("demo-app", "demo-group", 2000),), qps=0
    )
    release = asyncio.Event()
    written: list[str] = []

    async def stalled(record: Record) -> None:
        await release.wait()
        written.append(record["uid"])

    async with EmulatorServer(emulator_config) as emulator:
        config = PollerConfig(
            api=ApiConfig(endpoint=emulator.endpoint, protocol="http"),
            limits=LimitsConfig(qps=10_000, max_in_flight=4),
            sweep=SweepConfig(queue_size=3),
        )
        uids = [f"user-{i:06d}" for i in range(1, 2001)]
        async with Poller(config, credentials=SigningCredentials("demo-key", "demo-secret")) as p:
            run = asyncio.create_task(
                p.run_once([(Target("demo-app", "demo-group"), uids)], [CallbackSink(stalled)])
            )
            for _ in range(200):  # let polling run into the stalled sink (bounded loop)
                await asyncio.sleep(0.01)
            stalled_requests = emulator.stats()["total"]["requests_total"]
            for _ in range(50):
                await asyncio.sleep(0.01)
            still_stalled = emulator.stats()["total"]["requests_total"]
            release.set()
            await asyncio.wait_for(run, 60)
        total = emulator.stats()["total"]["requests_total"]
    return stalled_requests, still_stalled, total, len(written)


def test_a_stalled_sink_pauses_polling_and_loses_nothing() -> None:
    stalled, still, total, written = asyncio.run(stalled_sink_run())
    # One batch at the sink, 3 queued, 4 in flight waiting to queue: polling stops there.
    assert stalled == still <= 1 + 3 + 4 + 1
    assert total == 100 and written == 2000
