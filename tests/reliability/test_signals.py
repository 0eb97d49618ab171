"""R8, R9: SIGTERM (and SIGHUP) at random moments of a 5,000-UID sweep lose nothing."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from poller.emulator.process import EmulatorProcess
from tests.daemons import DaemonProcess, base_config, target

pytestmark = pytest.mark.slow

RUNS = 20


def test_sigterm_at_random_offsets_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    uids = tmp_path / "uids.txt"
    uids.write_text("\n".join(f"user-{i:06d}" for i in range(1, 5001)), "utf-8")
    rng = random.Random(2026)
    summary = Counter[str]()
    with EmulatorProcess("--qps", "0", "--group", "demo-app/demo-group:5000") as emulator:
        for run in range(RUNS):
            workdir = tmp_path / f"run{run}"
            workdir.mkdir()
            emulator.reset()
            config = (
                base_config(emulator, interval_s=60, drain_timeout_s=5.0)
                + "\n[limits]\nqps = 500\n"
                + target("demo-app", "demo-group", uids_file=str(uids))
            )
            daemon = DaemonProcess(workdir, config)
            try:
                daemon.wait_for(lambda logs: any(e["event"] == "started" for e in logs))
                offset = rng.uniform(0.0, 0.9)  # the sweep takes ~0.5 s at 500 requests/s
                if run % 3 == 1:  # a reload request mid-sweep must not lose anything either
                    time.sleep(offset / 2)
                    daemon.proc.send_signal(signal.SIGHUP)
                    time.sleep(offset / 2)
                else:
                    time.sleep(offset)
                code = daemon.stop(signal.SIGTERM)
            finally:
                daemon.close()
            ok_answers = emulator.stats()["total"]["responses_by_code"].get("OK", 0)
            assert code == 0, daemon.stderr()
            records = daemon.records()  # every line parses; the file ends with a newline
            keys = Counter((r["sweep"], r["uid"]) for r in records)
            assert not keys or max(keys.values()) == 1, "duplicate record"
            first = [r for r in records if r["sweep"] == 1]
            presence = sum(r["type"] == "presence" for r in first)
            if first:
                assert len(first) == 5000, "a UID of the interrupted sweep got no record"
            assert presence == 20 * ok_answers, "a completed batch is missing"
            summary["runs"] += 1
            summary["presence"] += presence
            summary["cancelled"] += sum(r.get("code") == "Cancelled" for r in first)
    assert summary["runs"] == RUNS
    assert summary["cancelled"] > 0 and summary["presence"] > 0  # offsets really hit mid-sweep
    print(f"\n{dict(summary)}")
