"""Soak: the daemon against a churning, faulty emulator for a long time (default 10 minutes).

Reports the daemon's RSS and open file descriptors (sockets included) after its first sweep, at
their peak and at the end, the emulator's answers by code,
the daemon's own counters, and whether the budget held (``max_requests_in_any_1s_window``).
Not part of CI::

    python benchmarks/soak.py [--duration 600] [--uids 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from poller.emulator.process import EmulatorProcess

FAULTS = (
    "500=0.03,503=0.02,throttle=0.01,hang=0.005,reset_before=0.005,reset_after=0.005,"
    "malformed=0.005,partial=0.005"
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--uids", type=int, default=20_000, help="UIDs polled per sweep")
    parser.add_argument("--interval", type=float, default=15.0, help="daemon interval_s")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="poller-soak-") as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "uids.txt").write_text(
            "\n".join(f"user-{i:06d}" for i in range(1, args.uids + 1)), "utf-8"
        )
        emu_args = (
            "--qps",
            "100",
            "--group",
            f"demo-app/demo-group:{args.uids}",
            "--churn-per-s",
            "20",
            "--faults",
            FAULTS,
            "--seed",
            "11",
            "--hang-s",
            "15",
        )
        with EmulatorProcess(*emu_args) as emulator:
            (tmp / "poller.toml").write_text(
                emulator.config_toml()
                + f'\n[daemon]\ninterval_s = {args.interval}\nemit = "changes"\n'
                + '\n[metrics]\nlisten = "127.0.0.1:0"\n'
                + '\n[[targets]]\napp_id = "demo-app"\ngroup_id = "demo-group"\n'
                + 'uids_file = "uids.txt"\n'
                + '\n[[sinks]]\nkind = "file"\npath = "out.jsonl"\n',
                "utf-8",
            )
            log_path = tmp / "daemon.log"
            with log_path.open("wb") as log:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "poller", "run", "--config", str(tmp / "poller.toml")],
                    stderr=log,
                    stdout=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                )
                try:
                    url = ""
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline:
                        events = [
                            json.loads(x)
                            for x in log_path.read_bytes().splitlines()
                            if x.startswith(b"{")
                        ]
                        url = next((e["url"] for e in events if "url" in e), url)
                        if url and any(e["event"] == "sweep" for e in events):
                            break
                        time.sleep(0.2)
                    start_rss = rss_mb(daemon.pid)
                    start_fds = peak_fds = open_fds(daemon.pid)
                    started = time.monotonic()
                    peak = start_rss
                    while time.monotonic() - started < args.duration:
                        time.sleep(5)
                        peak = max(peak, rss_mb(daemon.pid))
                        peak_fds = max(peak_fds, open_fds(daemon.pid))
                    end_rss = rss_mb(daemon.pid)
                    end_fds = open_fds(daemon.pid)
                    metrics = scrape(url) if url else {}
                    daemon.send_signal(signal.SIGTERM)
                    code = daemon.wait(60)
                finally:
                    if daemon.poll() is None:
                        daemon.kill()
                        daemon.wait()
            stats = emulator.stats()
        events = [json.loads(x) for x in log_path.read_bytes().splitlines() if x.startswith(b"{")]
        sweeps = [e for e in events if e["event"] == "sweep"]
        lines = (tmp / "out.jsonl").read_bytes().count(b"\n")
    total: dict[str, Any] = stats["total"]
    report = {
        "duration_s": args.duration,
        "uids_per_sweep": args.uids,
        "sweeps": len(sweeps),
        "exit_code": code,
        "rss_mb": {
            "after_first_sweep": round(start_rss, 1),
            "end": round(end_rss, 1),
            "peak": round(peak, 1),
            "growth": round(end_rss - start_rss, 1),
        },
        "open_fds": {"after_first_sweep": start_fds, "end": end_fds, "peak": peak_fds},
        "emulator": {
            "requests_total": total["requests_total"],
            "responses_by_code": total["responses_by_code"],
            "throttled_total": total["throttled_total"],
            "max_requests_in_any_1s_window": total["max_requests_in_any_1s_window"],
            "faults_injected": stats["faults_injected"],
        },
        "daemon": {
            k: v
            for k, v in metrics.items()
            if k.startswith(
                (
                    "poller_requests_total",
                    "poller_retries_total",
                    "poller_uids_total",
                    "poller_changes_total",
                )
            )
        },
        "records_written": lines,
        "sweep_duration_s": {
            "min": min((s["duration_s"] for s in sweeps), default=None),
            "max": max((s["duration_s"] for s in sweeps), default=None),
        },
        "pid": os.getpid(),
    }
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
