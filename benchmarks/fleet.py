"""Several ``poller once`` processes sharing one account's budget through Redis (``[cluster]``).

::

    python benchmarks/fleet.py [--uids 20000] [--members 1,2,4] [--out results/fleet.md]

For each member count M: one emulator at ``--qps 100`` and one ``redis-server`` (unix socket,
no persistence); M ``poller once`` processes started at the same moment, each with its own
config file (``[cluster]``: the same Redis and ``account``, distinct ``member``) and each polling
the same ``--uids`` UIDs. Then the same M processes without ``[cluster]`` (the baseline: M
independent meters at 100 requests/s each, so windows over 100 and throttles are expected).
Finally M = 2 with two *different* access keys registered on the emulator as one account
(``--access-key ID:SECRET@ACCOUNT``) and the same ``[cluster] account``, with its baseline.

Reported per run: wall time from the first start to the last exit; aggregate UIDs/s over the
wall time and over the active span (the first to the last record's ``polled_at``, so process
start-up and the fleet's first-window wait are left out); its share of the 2,000 UIDs/s
ceiling; the emulator's ``max_requests_in_any_1s_window`` and throttled count; presence and
error records; CPU seconds of the poller processes per 1,000 requests (``getrusage`` of the
children, which include nothing else during a run); Redis script calls (``eval``/``evalsha``
in ``INFO commandstats``) per request. Targets for the shared budget (the issue's): max window
≤ 100, throttled = 0, aggregate ≥ 90 % of 2,000 UIDs/s (goal 95 %), marked PASS/MISS.

The emulator and Redis run on one core (``taskset``/``sched_setaffinity``), this harness and the
pollers it starts on another; ``--no-pin`` (or fewer than 2 cores) pins nothing. Everything
binds and connects to 127.0.0.1 or unix sockets; every child is bounded in time and stopped on
any exit (SIGTERM/SIGHUP included). Prints a Markdown report and writes it to ``--out``; exit
status 1 on a MISS.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from poller.emulator.process import EmulatorProcess

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # ``python benchmarks/fleet.py`` puts only benchmarks/ on the path
    sys.path.insert(0, str(REPO))

from harness import (  # noqa: E402
    CHILDREN,
    busy_share,
    core_times,
    log,
    scratch_dir,
    stop_children_on_exit,
    table,
)

from tests.redisserver import RedisServer  # noqa: E402  (needs REPO on sys.path)

APP_ID, GROUP_ID = "demo-app", "demo-group"
QPS_LIMIT = 100
IDS_PER_REQUEST = 20
CEILING_UIDS_PER_S = QPS_LIMIT * IDS_PER_REQUEST
TARGET_SHARE = 0.90
GOAL_SHARE = 0.95
ACCOUNT = "acct"  # [cluster] account, and the emulator account of the two-key run
KEYS = (("demo-key", "demo-secret"), ("other-key", "other-secret"))
REDIS_CLI = "/usr/bin/redis-cli"
SCRIPT_COMMANDS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")


# -- results ---------------------------------------------------------------------------------


@dataclass
class Member:
    """One ``poller once`` process: its exit, its records and its own summary line."""

    name: str
    exit_code: int | None  # None: killed at the deadline
    records: int = 0
    presence: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    first_ms: int | None = None
    last_ms: int | None = None
    requests: int | None = None  # from the summary line on stderr
    throttled: int | None = None
    summary: str = ""


@dataclass
class Run:
    label: str
    members: int
    keys: int
    cluster: bool
    uids: int  # per member
    started_ms: int  # epoch ms when the first process was started
    wall_s: float
    cpu_s: float
    emulator: dict[str, Any]
    per_member: list[Member]
    redis_scripts: int | None  # eval/evalsha calls; None without [cluster]
    timed_out: bool
    cores_busy: str = "-"

    @property
    def requests(self) -> int:
        return int(self.emulator["requests_total"])

    @property
    def throttled(self) -> int:
        return int(self.emulator["throttled_total"])

    @property
    def max_window(self) -> int:
        return int(self.emulator["max_requests_in_any_1s_window"])

    @property
    def total_uids(self) -> int:
        return self.members * self.uids

    @property
    def presence(self) -> int:
        return sum(m.presence for m in self.per_member)

    @property
    def errors(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for m in self.per_member:
            out.update(m.errors)
        return out

    @property
    def missing(self) -> int:
        return self.total_uids - sum(m.records for m in self.per_member)

    @property
    def active_s(self) -> float | None:
        firsts = [m.first_ms for m in self.per_member if m.first_ms is not None]
        lasts = [m.last_ms for m in self.per_member if m.last_ms is not None]
        if not firsts or not lasts:
            return None
        return max(1e-3, (max(lasts) - min(firsts)) / 1000.0)

    @property
    def rate_wall(self) -> float:
        return self.presence / self.wall_s

    @property
    def rate_active(self) -> float | None:
        active = self.active_s
        return None if active is None else self.presence / active

    @property
    def cpu_per_1000(self) -> float:
        return 1000.0 * self.cpu_s / max(1, self.requests)

    @property
    def scripts_per_request(self) -> float | None:
        if self.redis_scripts is None:
            return None
        return self.redis_scripts / max(1, self.requests)


# -- processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pinning:
    client: int | None
    server: int | None

    @classmethod
    def choose(cls, enabled: bool) -> Pinning:
        cores = sorted(os.sched_getaffinity(0))
        if not enabled or len(cores) < 2:
            return cls(None, None)
        return cls(cores[0], cores[1])

    def server_prefix(self) -> tuple[str, ...]:
        if self.server is None or shutil.which("taskset") is None:
            return ()
        return ("taskset", "-c", str(self.server))


@contextlib.contextmanager
def emulator(
    uids: int, pin: Pinning, workdir: Path, keys: Sequence[str]
) -> Iterator[EmulatorProcess]:
    args = ["--host", "127.0.0.1", "--log-level", "WARNING", "--qps", str(QPS_LIMIT)]
    args += ["--group", f"{APP_ID}/{GROUP_ID}:{uids}", *keys]
    emu = EmulatorProcess(
        *args,
        startup_timeout_s=30.0,
        stderr_path=workdir / "emulator.stderr",
        command_prefix=pin.server_prefix(),
    )
    with emu:
        yield emu


@contextlib.contextmanager
def redis_server(pin: Pinning, workdir: Path) -> Iterator[RedisServer]:
    with RedisServer(workdir / "redis") as server:
        if pin.server is not None and server.proc is not None:
            os.sched_setaffinity(server.proc.pid, {pin.server})
        yield server


def script_calls(server: RedisServer) -> int:
    """``eval``/``evalsha`` (and friends) calls so far, from ``INFO commandstats``."""
    cli = shutil.which("redis-cli") or (REDIS_CLI if os.access(REDIS_CLI, os.X_OK) else None)
    if cli is not None:
        out = subprocess.run(
            [cli, "-s", str(server.socket_path), "INFO", "commandstats"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        calls = {m[1]: int(m[2]) for m in re.finditer(r"^cmdstat_([\w|]+):calls=(\d+)", out, re.M)}
    else:
        import redis

        client = redis.Redis(unix_socket_path=str(server.socket_path), socket_timeout=10)
        try:
            stats: dict[str, Any] = client.info("commandstats")
        finally:
            client.close()
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    return sum(calls.get(name, 0) for name in SCRIPT_COMMANDS)


def write_config(
    path: Path, emu: EmulatorProcess, key: tuple[str, str], redis_url: str | None, member: str
) -> Path:
    text = emu.config_toml(*key)
    if redis_url is not None:
        text += f'\n[cluster]\nredis_url = "{redis_url}"\nmember = "{member}"\n'
        text += f'account = "{ACCOUNT}"\n'
    path.write_text(text, "utf-8")
    return path


SUMMARY = re.compile(r"(\d+) requests, (\d+) retries, (\d+) throttled")


def read_member(name: str, code: int | None, out: Path, err: Path) -> Member:
    member = Member(name, code)
    first: int | None = None
    last: int | None = None
    with out.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            rec = orjson.loads(line)
            if rec.get("type") not in ("presence", "error"):
                continue
            member.records += 1
            if rec["type"] == "presence":
                member.presence += 1
            else:
                member.errors[str(rec.get("code") or rec.get("error") or "?")] += 1
            at = rec.get("polled_at")
            if isinstance(at, int):
                first = at if first is None else min(first, at)
                last = at if last is None else max(last, at)
    member.first_ms, member.last_ms = first, last
    text = err.read_text("utf-8", "replace") if err.exists() else ""
    lines = [x for x in text.splitlines() if x.startswith("poller: sweep")]
    if lines:
        member.summary = lines[-1]
        if m := SUMMARY.search(lines[-1]):
            member.requests, member.throttled = int(m[1]), int(m[3])
    return member


def run_members(
    label: str,
    emu: EmulatorProcess,
    configs: list[Path],
    uids_file: Path,
    uids: int,
    *,
    keys: int,
    server: RedisServer | None,
    workdir: Path,
) -> Run:
    """Start one ``poller once`` per config at once, wait for all (bounded), gather the figures."""
    members = len(configs)
    emu.reset(nonces=True)
    scripts_before = script_calls(server) if server is not None else 0
    bound_s = 60.0 + 4.0 * members * uids / CEILING_UIDS_PER_S  # 4x the time at the ceiling
    runs_dir = workdir / re.sub(r"\W+", "-", label)
    runs_dir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes], Path, Path]] = []
    killed: set[str] = set()
    log(f"{label}: {members} x {uids} UIDs (bound {bound_s:.0f} s)")
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cores0 = core_times()
    t0 = time.monotonic()
    started_ms = int(time.time() * 1000)
    try:
        for i, config in enumerate(configs, 1):
            out, err = runs_dir / f"m{i}.jsonl", runs_dir / f"m{i}.stderr"
            argv = [sys.executable, "-m", "poller", "once", "--config", str(config)]
            argv += ["--target", f"{APP_ID}/{GROUP_ID}", "--uids-file", str(uids_file)]
            with out.open("wb") as fo, err.open("wb") as fe:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)
            CHILDREN.add(proc)
            procs.append((f"m{i}", proc, out, err))
        for name, proc, _, _ in procs:
            try:
                proc.wait(max(0.0, t0 + bound_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed.add(name)
                proc.kill()
                proc.wait()
        wall = time.monotonic() - t0
    finally:
        for _, proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            CHILDREN.discard(proc)
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cores_busy = busy_share(cores0, core_times())
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    stats = emu.stats()["total"]
    scripts = script_calls(server) - scripts_before if server is not None else None
    per_member = [
        read_member(name, None if name in killed else proc.returncode, o, e)
        for name, proc, o, e in procs
    ]
    return Run(
        label=label,
        members=members,
        keys=keys,
        cluster=server is not None,
        uids=uids,
        started_ms=started_ms,
        wall_s=wall,
        cpu_s=cpu,
        emulator=stats,
        per_member=per_member,
        redis_scripts=scripts,
        timed_out=bool(killed),
        cores_busy=cores_busy,
    )


# -- scenarios -------------------------------------------------------------------------------


def scenario(
    members: int,
    keys: int,
    uids: int,
    uids_file: Path,
    pin: Pinning,
    workdir: Path,
) -> tuple[Run, Run]:
    """The shared-budget run and its baseline (no ``[cluster]``) on one emulator."""
    key_flags: list[str] = []
    if keys > 1:
        for key_id, secret in KEYS[:keys]:
            key_flags += ["--access-key", f"{key_id}:{secret}@{ACCOUNT}"]
    tag = f"M={members}" + (f", {keys} keys" if keys > 1 else "")
    wd = workdir / re.sub(r"\W+", "-", tag)
    wd.mkdir(parents=True, exist_ok=True)
    key_of = [KEYS[i % keys] for i in range(members)]
    with emulator(uids, pin, wd, key_flags) as emu:
        with redis_server(pin, wd) as server:
            configs = [
                write_config(wd / f"shared-m{i + 1}.toml", emu, key_of[i], server.url, f"m{i + 1}")
                for i in range(members)
            ]
            shared = run_members(
                f"{tag}, shared",
                emu,
                configs,
                uids_file,
                uids,
                keys=keys,
                server=server,
                workdir=wd,
            )
        configs = [
            write_config(wd / f"alone-m{i + 1}.toml", emu, key_of[i], None, f"m{i + 1}")
            for i in range(members)
        ]
        alone = run_members(
            f"{tag}, baseline", emu, configs, uids_file, uids, keys=keys, server=None, workdir=wd
        )
    for run in (shared, alone):
        log(f"  {describe(run)}")
    return shared, alone


def describe(run: Run) -> str:
    active = run.rate_active
    return (
        f"{run.label}: wall {run.wall_s:.1f} s, {run.rate_wall:,.0f} UIDs/s (wall), "
        f"{'-' if active is None else f'{active:,.0f}'} UIDs/s (active), "
        f"max window {run.max_window}, throttled {run.throttled}, presence {run.presence}, "
        f"errors {sum(run.errors.values())}, missing {run.missing}, CPU {run.cpu_s:.2f} s"
    )


# -- report ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def checks(run: Run) -> list[tuple[str, bool, str]]:
    """``(target, ok, value)`` for a shared-budget run."""
    active = run.rate_active or 0.0
    share = active / CEILING_UIDS_PER_S
    return [
        ("max requests in any 1 s ≤ 100", run.max_window <= QPS_LIMIT, str(run.max_window)),
        ("throttled = 0", run.throttled == 0, str(run.throttled)),
        (
            f"aggregate ≥ {TARGET_SHARE:.0%} of 2,000 UIDs/s (goal {GOAL_SHARE:.0%})",
            share >= TARGET_SHARE,
            f"{share:.1%}" + ("" if share >= GOAL_SHARE else " (below the goal)"),
        ),
        (
            "every record presence, none missing",
            not run.errors and run.missing == 0 and not run.timed_out,
            f"{sum(run.errors.values())} errors, {run.missing} missing",
        ),
    ]


def _opt_round(x: float | None) -> int | None:
    return None if x is None else round(x)


def run_row(r: Run) -> tuple[Any, ...]:
    rate = r.rate_active
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "0"
    if r.missing:
        errors += f" (+{r.missing} missing)"
    scripts = r.scripts_per_request
    return (
        r.label,
        r.members,
        r.keys,
        "yes" if r.cluster else "no",
        r.total_uids,
        r.wall_s,
        round(r.rate_wall),
        f"{r.rate_wall / CEILING_UIDS_PER_S:.1%}",
        r.active_s,
        _opt_round(rate),
        None if rate is None else f"{rate / CEILING_UIDS_PER_S:.1%}",
        r.requests,
        r.max_window,
        r.throttled,
        r.presence,
        errors,
        r.cpu_per_1000,
        None if scripts is None else f"{scripts:.3f}",
        r.cores_busy,
    )


def pair_row(s: Run, b: Run) -> tuple[Any, ...]:
    return (
        s.members,
        s.keys,
        s.max_window,
        s.throttled,
        _opt_round(s.rate_active),
        b.max_window,
        b.throttled,
        _opt_round(b.rate_active),
        sum(b.errors.values()) + b.missing,
    )


def member_rows(r: Run) -> list[tuple[Any, ...]]:
    def after(ms: int | None) -> float | None:
        return None if ms is None else (ms - r.started_ms) / 1000.0

    return [
        (
            r.label,
            m.name,
            "killed" if m.exit_code is None else m.exit_code,
            m.records,
            m.presence,
            sum(m.errors.values()),
            m.requests,
            m.throttled,
            after(m.first_ms),
            after(m.last_ms),
        )
        for m in r.per_member
    ]


def report(pairs: list[tuple[Run, Run]], meta: dict[str, str]) -> tuple[str, bool]:
    runs = [r for pair in pairs for r in pair]
    out = ["# Fleet: several pollers sharing one account's budget through Redis\n"]
    out.append(table("item|value", list(meta.items())))
    out.append("## Runs\n")
    out.append(
        table(
            "run|members|keys|[cluster]|UIDs|wall s|UIDs/s (wall)|% of 2,000 (wall)|active s"
            "|UIDs/s (active)|% of 2,000 (active)|requests|max req in any 1 s|throttled"
            "|presence|errors|poller CPU s / 1,000 req|Redis evals / req|cores busy",
            [run_row(r) for r in runs],
        )
    )
    out.append("## Shared budget beside the baseline (the same processes without `[cluster]`)\n")
    out.append(
        table(
            "members|keys|shared: max window|shared: throttled|shared: UIDs/s (active)"
            "|baseline: max window|baseline: throttled|baseline: UIDs/s (active)"
            "|baseline: errors + missing",
            [pair_row(s, b) for s, b in pairs],
        )
    )
    out.append("## Targets (shared budget)\n")
    rows: list[tuple[Any, ...]] = []
    ok = True
    for s, _ in pairs:
        for name, passed, value in checks(s):
            ok &= passed
            rows.append((s.label, name, value, verdict(passed)))
    out.append(table("run|target|value|verdict", rows))
    out.append("## Members\n")
    out.append(
        table(
            "run|member|exit|records|presence|errors|requests|throttled"
            "|first record, s after launch|last record, s after launch",
            [row for r in runs for row in member_rows(r)],
        )
    )
    out.append(
        "Wall: from starting the first process to the last exit. Active span: the first to the "
        "last record's `polled_at` over all members (the processes' start-up and, with "
        "`[cluster]`, a fresh budget's one-window wait are outside it); the targets use it. "
        "Requests, throttled and max window are the emulator's (every key of the account); a "
        "member's requests and throttled come from its own summary line. CPU: user + system "
        "time of the `poller once` processes (`getrusage(RUSAGE_CHILDREN)` around the run, so "
        "interpreter start-up and imports are included). Redis evals: `eval`/`evalsha` calls "
        "in `INFO commandstats` during the run (reservations, heartbeats, pauses). Cores busy: "
        "each core's busy share during the run (`/proc/stat`, every process on the machine): "
        "more than the pollers, the emulator and Redis explain means other work was running "
        "and the figures are noisy.\n"
    )
    return "\n".join(out), ok


# -- main ------------------------------------------------------------------------------------


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--uids", type=int, default=20_000, help="UIDs per member (default 20000)")
    parser.add_argument(
        "--members", default="1,2,4", help="member counts, comma-separated (default 1,2,4)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results" / "fleet.md",
        help="Markdown report (default benchmarks/results/fleet.md)",
    )
    parser.add_argument("--no-two-keys", action="store_true", help="skip the M=2, two-key run")
    parser.add_argument("--no-pin", action="store_true", help="pin no process to a core")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    try:
        counts = [int(x) for x in args.members.split(",") if x.strip()]
    except ValueError:
        parser.error("--members: comma-separated integers")
    if not counts or min(counts) < 1 or args.uids < 1:
        parser.error("--members and --uids must be positive")

    stop_children_on_exit()
    pin = Pinning.choose(not args.no_pin)
    if pin.client is not None:
        os.sched_setaffinity(0, {pin.client})  # the pollers inherit it
    started = time.monotonic()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    pairs: list[tuple[Run, Run]] = []
    with scratch_dir("poller-fleet-", keep=args.keep_tmp) as workdir:
        uids_file = workdir / "uids.txt"
        uids_file.write_text("".join(f"user-{i:06d}\n" for i in range(1, args.uids + 1)))
        for m in counts:
            pairs.append(scenario(m, 1, args.uids, uids_file, pin, workdir))
        if not args.no_two_keys:
            pairs.append(scenario(2, 2, args.uids, uids_file, pin, workdir))
    wall = time.monotonic() - started
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "redis-server": _version(["redis-server", "--version"]),
        "pinning": "not pinned"
        if pin.client is None
        else f"harness and pollers on core {pin.client}, emulator and Redis on core {pin.server}",
        "emulator": f"--qps {QPS_LIMIT}, group {APP_ID}/{GROUP_ID}:{args.uids}",
        "input": f"{args.uids:,} UIDs per member ({args.uids // IDS_PER_REQUEST:,} requests)",
        "benchmark wall time": f"{wall:.0f} s",
        "load average (1, 5, 15 min)": f"before {load_before}; after "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    text, ok = report(pairs, meta)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, "utf-8")
    log(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
