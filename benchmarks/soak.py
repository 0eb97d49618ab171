"""Soak: the daemon against a churning, faulty emulator for a long time (default 10 minutes).

While it runs, every minute it

* replaces the UID file the way a deploy does (a new file renamed over it; every other minute the
  file is first left missing for ~2 s, timed to span the start of a sweep),
* rotates the records file the way logrotate does (``mv out.jsonl out.jsonl.N`` + SIGHUP),
* and once steps the emulator's clock (-3600 s, a minute later back to 0),

with the usual fault mix injected all along. ``emit = "all"``, so every sweep must hold exactly
one presence or error record per UID of the list it read. At the end it reads every rotated
file and reports:

* the daemon's exit code;
* per sweep: lost and duplicated records against the UID list the sweep used (zero expected),
  records of one sweep interleaved with another's, files not ending in a whole line;
* RSS one minute into the run against the end (growth must stay under 5 %), and the peak;
* open file descriptors (sockets included) after the first sweep against the end (back at
  baseline) and the peak;
* the emulator's requests, answers by code, throttles and injected faults, and the budget
  (``max_requests_in_any_1s_window``); the daemon's own counters.

Not part of CI::

    python benchmarks/soak.py [--minutes 10] [--uids 20000] [--interval 40]
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from poller.emulator.process import EmulatorProcess

FAULTS = (
    "500=0.03,503=0.02,throttle=0.01,hang=0.005,reset_before=0.005,reset_after=0.005,"
    "malformed=0.005,partial=0.005"
)
SLACK = 500
"""Each UID file generation is ``--uids - SLACK`` consecutive members, shifted each time."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> dict[str, int]:
    """Open descriptors by kind: ``socket``, ``pipe``, ``anon_inode:...`` or the file's name."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if target.startswith(("socket:", "pipe:")) else target
        kinds[Path(kind).name if kind.startswith("/") else kind] += 1
    return dict(sorted(kinds.items()))


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def log_events(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]  # the daemon may be writing its last line
    return [json.loads(x) for x in data.splitlines() if x.startswith(b"{")]


@dataclass
class Soak:
    tmp: Path
    uids: int
    interval: float
    daemon: subprocess.Popen[bytes] | None = None
    generations: list[frozenset[str]] = field(default_factory=list)
    rotated: list[Path] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    t0: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.tmp / "daemon.log"

    @property
    def uid_file(self) -> Path:
        return self.tmp / "uids.txt"

    def note(self, action: str, **fields: Any) -> None:
        entry = {"t_s": round(time.monotonic() - self.t0, 1), "action": action, **fields}
        self.actions.append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)

    def uid_list(self, generation: int) -> list[str]:
        shift = (generation * 97) % SLACK
        return [f"user-{i:06d}" for i in range(1 + shift, self.uids - SLACK + 1 + shift)]

    def write_uid_file(self) -> None:
        """A new generation written beside the UID file and renamed over it (atomic)."""
        generation = len(self.generations)
        uids = self.uid_list(generation)
        new = self.uid_file.with_name("uids.txt.new")
        new.write_text("\n".join(uids) + "\n", "utf-8")
        os.replace(new, self.uid_file)
        self.generations.append(frozenset(uids))

    def sweeps_logged(self) -> list[dict[str, Any]]:
        return [e for e in log_events(self.log_path) if e["event"] == "sweep"]

    def wait_for_sweep(self) -> list[dict[str, Any]]:
        """Wait (bounded) until one more sweep was logged; the sweeps logged by then."""
        seen = len(self.sweeps_logged())
        deadline = time.monotonic() + 3 * self.interval + 60
        while len(sweeps := self.sweeps_logged()) == seen and time.monotonic() < deadline:
            if self.daemon is not None and self.daemon.poll() is not None:
                break
            time.sleep(0.1)
        return sweeps

    def schedule(self, duration: float) -> list[tuple[float, str, float]]:
        """What to do when: ``(seconds into the run, action, value)``, in time order."""
        events: list[tuple[float, str, float]] = []
        for minute in range(1, int(duration // 60) + 1):
            at = minute * 60.0
            if at + 20 < duration:  # the UID file at :00; every other time missing for ~2 s
                events.append((at, "uids", 2.0 if minute % 2 else 0.0))
            if at + 30 + 5 < duration:  # the records file at :30
                events.append((at + 30, "rotate", 0.0))
        down = min(150.0, 0.3 * duration)
        events.append((down, "clock", -3600.0))
        events.append((down + min(60.0, 0.2 * duration), "clock", 0.0))
        return sorted(events)

    def replace_uid_file(self, *, gap_s: float) -> None:
        if gap_s <= 0:
            self.write_uid_file()
            self.note("uid file replaced", generation=len(self.generations) - 1)
            return
        # Time the gap to span the next sweep's start (when the daemon copies the file).
        sweeps = self.wait_for_sweep()
        ended_at = time.monotonic()
        duration = float(sweeps[-1]["duration_s"]) if sweeps else 0.0
        next_start = ended_at - duration + self.interval
        if next_start - gap_s / 2 > ended_at:
            time.sleep(max(0.0, next_start - gap_s / 2 - time.monotonic()))
        self.uid_file.unlink()
        self.note("uid file removed", gap_s=gap_s)
        time.sleep(gap_s)
        self.write_uid_file()
        self.note("uid file back", generation=len(self.generations) - 1)

    def rotate(self) -> None:
        assert self.daemon is not None
        dest = self.tmp / f"out.jsonl.{len(self.rotated) + 1}"
        os.rename(self.tmp / "out.jsonl", dest)  # logrotate's mv
        self.rotated.append(dest)
        self.daemon.send_signal(signal.SIGHUP)  # logrotate's postrotate
        self.note("output rotated", to=dest.name)


def check_records(files: list[Path], generations: list[frozenset[str]]) -> dict[str, Any]:
    """Per sweep, lost and duplicated records against the UID generation the sweep read."""
    per_sweep: dict[int, Counter[str]] = {}
    order: list[int] = []  # sweep numbers in file order, one entry per run of records
    files_report = []
    torn = 0
    change_keys: Counter[tuple[str, str, str, str, int]] = Counter()
    for path in files:
        data = path.read_bytes()
        whole = not data or data.endswith(b"\n")
        torn += not whole
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        sweeps_here: set[int] = set()
        for line in lines:
            r = orjson.loads(line)
            if r["type"] == "change":
                key = (r["api"], r["app_id"], r["group_id"], r["uid"], r["version"])
                change_keys[key] += 1
                continue
            sweep = int(r["sweep"])
            sweeps_here.add(sweep)
            if not order or order[-1] != sweep:
                order.append(sweep)
            per_sweep.setdefault(sweep, Counter())[r["uid"]] += 1
        files_report.append(
            {
                "file": path.name,
                "lines": len(lines),
                "ends_in_newline": whole,
                "sweeps": [min(sweeps_here), max(sweeps_here)] if sweeps_here else None,
            }
        )
    interleaved = len(order) - len(set(order))
    sweeps: list[dict[str, Any]] = []
    for sweep in sorted(per_sweep):
        counts = per_sweep[sweep]
        got = set(counts)
        best = min(range(len(generations)), key=lambda g: len(got ^ generations[g]))
        expected = generations[best]
        sweeps.append(
            {
                "sweep": sweep,
                "generation": best,
                "records": sum(counts.values()),
                "lost": len(expected - got),
                "unexpected": len(got - expected),
                "duplicated": sum(n - 1 for n in counts.values() if n > 1),
            }
        )
    numbers = sorted(per_sweep)
    missing_sweeps = (
        sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers)) if numbers else []
    )
    return {
        "files": files_report,
        "files_not_ending_in_a_whole_line": torn,
        "sweeps_checked": len(sweeps),
        "sweep_numbers_missing": missing_sweeps,
        "sweeps_interleaved": interleaved,
        "lost_total": sum(s["lost"] for s in sweeps),
        "unexpected_total": sum(s["unexpected"] for s in sweeps),
        "duplicated_total": sum(s["duplicated"] for s in sweeps),
        "bad_sweeps": [s for s in sweeps if s["lost"] or s["unexpected"] or s["duplicated"]],
        "generations_seen": sorted({s["generation"] for s in sweeps}),
        "change_records": sum(change_keys.values()),
        "change_versions_duplicated": sum(n - 1 for n in change_keys.values() if n > 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="run length (default 10)")
    parser.add_argument("--uids", type=int, default=20_000, help="group members (default 20000)")
    parser.add_argument(
        "--interval",
        type=float,
        default=40.0,
        help="daemon interval_s (default 40: a sweep of 19,500 UIDs under the fault mix takes"
        " 20-35 s, and the missing UID file must span the start of a sweep, after an idle spell)",
    )
    args = parser.parse_args()
    duration = args.minutes * 60

    with tempfile.TemporaryDirectory(prefix="poller-soak-") as tmp_dir:
        soak = Soak(Path(tmp_dir), args.uids, args.interval)
        tmp = soak.tmp
        soak.write_uid_file()
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
                + f'\n[daemon]\ninterval_s = {args.interval}\nemit = "all"\n'
                + '\n[metrics]\nlisten = "127.0.0.1:0"\n'
                + '\n[[targets]]\napp_id = "demo-app"\ngroup_id = "demo-group"\n'
                + 'uids_file = "uids.txt"\n'
                + '\n[[sinks]]\nkind = "file"\npath = "out.jsonl"\n',
                "utf-8",
            )
            with soak.log_path.open("wb") as log:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "poller", "run", "--config", str(tmp / "poller.toml")],
                    stderr=log,
                    stdout=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                    cwd=tmp,
                    env={**os.environ, "STATE_DIRECTORY": str(tmp / "state")},
                )
                soak.daemon = daemon
                try:
                    url = ""
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline:
                        events = log_events(soak.log_path)
                        url = next((e["url"] for e in events if "url" in e), url)
                        if url and any(e["event"] == "sweep" for e in events):
                            break
                        if daemon.poll() is not None:
                            raise RuntimeError(f"the daemon exited {daemon.returncode} at start")
                        time.sleep(0.2)
                    start_rss = rss_mb(daemon.pid)
                    start_fds = peak_fds = open_fds(daemon.pid)
                    start_fd_kinds = fd_kinds(daemon.pid)
                    rss_1min: float | None = None
                    soak.t0 = started = time.monotonic()
                    peak = start_rss
                    schedule = soak.schedule(duration)
                    while time.monotonic() - started < duration:
                        if daemon.poll() is not None:
                            soak.note("daemon exited early", code=daemon.returncode)
                            break
                        elapsed = time.monotonic() - started
                        if rss_1min is None and elapsed >= 60:
                            rss_1min = rss_mb(daemon.pid)
                            soak.note("rss at 1 min", rss_mb=round(rss_1min, 1))
                        while schedule and elapsed >= schedule[0][0]:
                            _, action, value = schedule.pop(0)
                            if action == "clock":
                                now = emulator.set_clock_offset(value)
                                soak.note("emulator clock stepped", offset_s=now)
                            elif action == "uids":
                                soak.replace_uid_file(gap_s=value)
                            else:
                                soak.rotate()
                        time.sleep(0.5)
                        if daemon.poll() is None:
                            peak = max(peak, rss_mb(daemon.pid))
                            peak_fds = max(peak_fds, open_fds(daemon.pid))
                    # Measure the end where the start was measured: just after a sweep ended,
                    # between sweeps (no UID-file copy open); at most three sweeps tried.
                    for _ in range(3):
                        soak.wait_for_sweep()
                        end_rss = rss_mb(daemon.pid)
                        end_fds = open_fds(daemon.pid)
                        end_fd_kinds = fd_kinds(daemon.pid)
                        if not any(k.startswith("uids-") for k in end_fd_kinds):
                            break
                    metrics = scrape(url) if url else {}
                    daemon.send_signal(signal.SIGTERM)
                    code = daemon.wait(60)
                finally:
                    if daemon.poll() is None:
                        daemon.kill()
                        daemon.wait()
            stats = emulator.stats()
        events = log_events(soak.log_path)
        files = [*soak.rotated, tmp / "out.jsonl"]
        check = check_records([f for f in files if f.exists()], soak.generations)
    sweeps = [e for e in events if e["event"] == "sweep"]
    stopped = next((e for e in events if e["event"] == "stopped"), {})
    by_level = Counter(e["level"] for e in events)
    notable = Counter(e["event"] for e in events if e["level"] in ("warning", "error", "critical"))
    total: dict[str, Any] = stats["total"]
    rss_base = rss_1min if rss_1min is not None else start_rss
    growth_pct = 100 * (end_rss - rss_base) / rss_base
    report = {
        "minutes": args.minutes,
        "uids_per_sweep": args.uids - SLACK,
        "sweeps": len(sweeps),
        "exit_code": code,
        "records": check,
        "rss_mb": {
            "after_first_sweep": round(start_rss, 1),
            "at_1_min": None if rss_1min is None else round(rss_1min, 1),
            "end": round(end_rss, 1),
            "peak": round(peak, 1),
            "growth_pct_1min_to_end": round(growth_pct, 2),
        },
        "open_fds": {
            "after_first_sweep": start_fds,
            "end": end_fds,
            "peak": peak_fds,
            "kinds_after_first_sweep": start_fd_kinds,
            "kinds_end": end_fd_kinds,
        },
        "emulator": {
            "requests_total": total["requests_total"],
            "responses_by_code": total["responses_by_code"],
            "throttled_total": total["throttled_total"],
            "max_requests_in_any_1s_window": total["max_requests_in_any_1s_window"],
            "faults_injected": stats["faults_injected"],
        },
        "daemon_summary": {k: v for k, v in stopped.items() if k not in ("ts", "logger")},
        "daemon_metrics": {
            k: v
            for k, v in metrics.items()
            if k.startswith(
                (
                    "poller_requests_total",
                    "poller_retries_total",
                    "poller_uids_total",
                    "poller_changes_total",
                    "poller_throttled_total",
                    "poller_clock_offset_seconds",
                    "poller_http_connections_opened_total",
                )
            )
        },
        "log_levels": dict(by_level),
        "warnings_and_errors": dict(notable),
        "actions": Counter(a["action"] for a in soak.actions),
        "sweep_duration_s": {
            "min": min((s["duration_s"] for s in sweeps), default=None),
            "max": max((s["duration_s"] for s in sweeps), default=None),
        },
    }
    failures = []
    if code != 0:
        failures.append(f"exit code {code}")
    for key in ("lost_total", "unexpected_total", "duplicated_total", "sweeps_interleaved"):
        if check[key]:
            failures.append(f"{key} = {check[key]}")
    if check["files_not_ending_in_a_whole_line"] or check["sweep_numbers_missing"]:
        failures.append("torn files or missing sweeps")
    if growth_pct >= 5:
        failures.append(f"RSS grew {growth_pct:.1f} % from 1 min to the end")

    # Back at baseline: every descriptor but the pooled keep-alive sockets exactly as after the
    # first sweep (a UID-file copy is open only while a sweep reads it); sockets within the pool.
    def steady(kinds: dict[str, int]) -> dict[str, int]:
        return {k: n for k, n in kinds.items() if k != "socket" and not k.startswith("uids-")}

    if steady(end_fd_kinds) != steady(start_fd_kinds):
        failures.append(f"open fds {start_fd_kinds} -> {end_fd_kinds}")
    if end_fd_kinds.get("socket", 0) > start_fd_kinds.get("socket", 0) + 8:
        failures.append(f"sockets {start_fd_kinds.get('socket')} -> {end_fd_kinds.get('socket')}")
    gaps = sum(a["action"] == "uid file removed" for a in soak.actions)
    if gaps and not notable.get("UID file unreadable"):
        failures.append("no missing-UID-file gap spanned a sweep start (sweeps back to back?)")
    report["verdict"] = "PASS" if not failures else "FAIL: " + "; ".join(failures)
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
