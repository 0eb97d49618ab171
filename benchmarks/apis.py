"""Each presence API at its own ceiling, and two of them side by side, with ``poller once``.

::

    python benchmarks/apis.py [--legacy-uids 20000] [--newer-uids 5000] [--out results/apis.md]

One emulator (``--qps 100`` for the legacy action, ``--live-message-qps 50`` for each action of
the current family) with a legacy app ``lapp`` (group ``lg``) and an app of the current service
``napp`` in ``cn-shanghai`` (group ``ng``). Runs, each a fresh ``poller once`` process over a
UID file (``--uids-file``), the emulator's counters reset before each:

* ``BatchGetOnlineUsers`` alone (legacy UIDs), ``CheckLiveMessageUsersInGroup`` alone and
  ``CheckLiveMessageUsersOnline`` alone (newer UIDs);
* ``BatchGetOnlineUsers`` and ``CheckLiveMessageUsersInGroup`` in one config, one sweep.

Per action: UIDs/s (records over the span of their ``polled_at``, plus one request's share)
as a fraction of its ceiling (IDs per request x its limit), the emulator's max requests in
any 1-s window of that action, throttled answers, and the CPU (user + sys of the ``poller once``
process, less that of a one-UID run: start-up and imports) per 1,000 requests of the run.
Targets: the newer action alone >= 97 % of 500 UIDs/s with a window <= 50; the legacy action
>= 95 % of 2,000 UIDs/s while the newer one runs beside it; 0 throttled everywhere.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from poller.core.apis import API_SPECS  # noqa: E402
from poller.emulator.process import EmulatorProcess  # noqa: E402

LEGACY, IN_GROUP, APP_ONLINE = (
    "BatchGetOnlineUsers",
    "CheckLiveMessageUsersInGroup",
    "CheckLiveMessageUsersOnline",
)
TARGETS = {
    LEGACY: '[[targets]]\napp_id = "lapp"\ngroup_id = "lg"\nuids_file = "{file}"\n',
    IN_GROUP: (
        '[[targets]]\napp_id = "napp"\ngroup_id = "ng"\napi = "CheckLiveMessageUsersInGroup"\n'
        'data_center = "cn-shanghai"\nuids_file = "{file}"\n'
    ),
    APP_ONLINE: (
        '[[targets]]\napp_id = "napp"\napi = "CheckLiveMessageUsersOnline"\n'
        'data_center = "cn-shanghai"\nuids_file = "{file}"\n'
    ),
}


def ceiling(action: str) -> float:
    spec = API_SPECS[action]
    return spec.batch_size * spec.qps


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(
    emu: EmulatorProcess,
    tmp: Path,
    name: str,
    actions: list[str],
    files: dict[str, Path],
    startup_cpu_s: float = 0.0,
) -> list[dict[str, Any]]:
    """One ``poller once`` run of ``actions``; a row per action."""
    config = tmp / f"{name}.toml"
    config.write_text(
        emu.config_toml()
        + "\n"
        + "\n".join(TARGETS[a].format(file=files[a]) for a in actions)
        + '\n[[sinks]]\nkind = "file"\npath = "'
        + str(tmp / f"{name}.jsonl")
        + '"\n'
    )
    out = tmp / f"{name}.jsonl"
    out.unlink(missing_ok=True)
    emu.reset()
    before = cpu_of_children()
    proc = subprocess.run(
        [sys.executable, "-m", "poller", "once", "--config", str(config), "-q"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    cpu = cpu_of_children() - before - startup_cpu_s
    if proc.returncode != 0:
        raise SystemExit(f"{name}: poller once exited {proc.returncode}: {proc.stderr[-2000:]}")
    polled: dict[str, list[int]] = collections.defaultdict(list)
    statuses: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in out.read_bytes().splitlines():
        rec = json.loads(line)
        polled[rec["api"]].append(rec["polled_at"])
        statuses[rec["api"]][rec["type"] if rec["type"] == "presence" else rec["code"]] += 1
    stats = emu.stats()["actions"]
    requests = sum(stats[a]["requests_total"] for a in actions)
    rows = []
    for action in actions:
        times = polled[action]
        spec = API_SPECS[action]
        span = (max(times) - min(times)) / 1000.0 + 1.0 / spec.qps
        rate = len(times) / span
        rows.append(
            {
                "run": name,
                "action": action,
                "uids": len(times),
                "statuses": dict(statuses[action]),
                "uids_per_s": rate,
                "of_ceiling": rate / ceiling(action),
                "max_window": stats[action]["max_requests_in_any_1s_window"],
                "limit": spec.qps,
                "throttled": stats[action]["throttled_total"],
                "requests": stats[action]["requests_total"],
                "cpu_s_per_1000_requests": cpu / requests * 1000.0,
            }
        )
    return rows


def cpu_of_run(emu: EmulatorProcess, tmp: Path, files: dict[str, Path]) -> float:
    """The CPU seconds of a ``poller once`` run of the legacy file in ``files``."""
    before = cpu_of_children()
    run(emu, tmp, "start-up", [LEGACY], files)
    return cpu_of_children() - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--legacy-uids", type=int, default=20_000)
    parser.add_argument("--newer-uids", type=int, default=5_000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "apis.md")
    args = parser.parse_args()
    n_legacy, n_newer = args.legacy_uids, args.newer_uids
    with (
        tempfile.TemporaryDirectory() as folder,
        EmulatorProcess(
            "--qps",
            "100",
            "--live-message-qps",
            "50",
            "--app",
            "napp:cn-shanghai",
            "--group",
            f"lapp/lg:{n_legacy}",
            "--group",
            f"napp/ng:{n_newer}",
        ) as emu,
    ):
        tmp = Path(folder)
        files = {}
        for action, n in ((LEGACY, n_legacy), (IN_GROUP, n_newer), (APP_ONLINE, n_newer)):
            files[action] = tmp / f"{action}.txt"
            files[action].write_text("".join(f"user-{i:06d}\n" for i in range(1, n + 1)))
        # The CPU of start-up and imports: a run of one UID, subtracted from the others.
        one = {LEGACY: tmp / "one.txt"}
        one[LEGACY].write_text("user-000001\n")
        startup = min(cpu_of_run(emu, tmp, one) for _ in range(3))
        rows = []
        for action in (LEGACY, IN_GROUP, APP_ONLINE):
            rows += run(emu, tmp, f"{action} alone", [action], files, startup)
        rows += run(emu, tmp, "legacy + in-group together", [LEGACY, IN_GROUP], files, startup)
    checks = []
    for row in rows:
        alone = row["run"].endswith("alone")
        if row["action"] == IN_GROUP and alone:
            checks.append((f"{IN_GROUP} alone >= 97 % of 500 UIDs/s", row["of_ceiling"] >= 0.97))
            checks.append((f"{IN_GROUP} alone: window <= 50", row["max_window"] <= 50))
        if row["action"] == LEGACY and not alone:
            checks.append(
                ("legacy beside in-group >= 95 % of 2,000 UIDs/s", row["of_ceiling"] >= 0.95)
            )
        checks.append((f"{row['run']}: {row['action']} 0 throttled", row["throttled"] == 0))
    lines = [
        "# Presence APIs at their ceilings (`benchmarks/apis.py`)",
        "",
        f"{os.cpu_count()} cores; emulator `--qps 100 --live-message-qps 50`; one `poller once`"
        f" per run; CPU without start-up and imports ({startup:.2f} s, the least of three runs"
        " of one UID, subtracted).",
        "",
        "| run | action | UIDs | UIDs/s | of ceiling | max window / limit | throttled |"
        " CPU s per 1,000 requests |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['action']} | {r['uids']:,} | {r['uids_per_s']:,.0f} |"
            f" {r['of_ceiling']:.1%} | {r['max_window']} / {r['limit']:g} | {r['throttled']} |"
            f" {r['cpu_s_per_1000_requests']:.3f} |"
        )
    lines += ["", "| target | result |", "|---|---|"]
    lines += [f"| {name} | {'pass' if ok else 'MISS'} |" for name, ok in checks]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
