"""``poller demo``: the real pipeline against an in-process emulator, no account needed.

Starts the emulator on a free loopback port with a demo group whose members come and go,
polls every member a few times through :class:`~poller.engine.poller.Poller` (signing, pacing,
retries, merging, all real), and prints who came online or went offline between sweeps.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from datetime import UTC, datetime

from poller.config import ApiConfig, CredentialsConfig, PollerConfig
from poller.core.changes import ChangeTracker
from poller.core.clock import system_clock
from poller.core.records import ChangeRecord, Target
from poller.core.stats import Totals
from poller.emulator import EmulatorConfig, EmulatorServer
from poller.emulator.state import GroupSpec
from poller.engine.poller import Poller

__all__ = ["run_demo"]

SHOW = 4  # example changes printed per direction and sweep


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


async def run_demo(args: argparse.Namespace) -> int:
    target = Target("demo-app", "demo-group")
    emulator_config = EmulatorConfig(
        port=0,
        groups=(GroupSpec(target.app_id, target.group_id or "", args.members),),
        churn_per_s=args.churn,
        seed=args.seed,
    )
    # Members plus two IDs that show the other record kinds: a non-member and an invalid ID.
    uids = [f"user-{i:06d}" for i in range(1, args.members + 1)] + ["not-a-member", "bad,id"]
    clock = system_clock()
    totals = Totals()
    async with EmulatorServer(emulator_config) as emulator:
        config = PollerConfig(
            api=ApiConfig(endpoint=emulator.endpoint, protocol="http"),
            credentials=CredentialsConfig(
                access_key_id="demo-key", access_key_secret="demo-secret"
            ),
        )
        _out(f"emulator listening on {emulator.url} (group {target}, {args.members} members,")
        _out(f"  {args.churn:g} members flip online/offline per second; limit 100 requests/s)")
        tracker = ChangeTracker("changes")
        async with Poller(config, clock=clock, on_attempt=totals.on_attempt) as poller:
            next_start = clock.monotonic()
            for sweep in range(1, args.sweeps + 1):
                await clock.sleep(next_start - clock.monotonic())
                next_start += args.interval
                await _demo_sweep(poller, tracker, target, uids, totals, first=sweep == 1)
        server = emulator.stats()["total"]
    _out()
    _out(
        f"done: {totals.records} records from {totals.requests} requests "
        f"({totals.retries} retries, {totals.throttled} throttled by the emulator);"
    )
    _out(
        f"emulator saw at most {server['max_requests_in_any_1s_window']} requests in any "
        f"1-second window (limit 100)."
    )
    return 0


async def _demo_sweep(
    poller: Poller,
    tracker: ChangeTracker,
    target: Target,
    uids: list[str],
    totals: Totals,
    *,
    first: bool,
) -> None:
    """One sweep, its changes (from :class:`ChangeTracker`) printed."""
    changes: list[ChangeRecord] = []
    errors: list[str] = []
    async with contextlib.aclosing(poller.sweep_batches([(target, uids)])) as batches:
        async for records in batches:
            for record in tracker.process(records):
                if record["type"] == "change":
                    changes.append(record)
                elif record["type"] == "error":
                    errors.append(f"{record['uid']!r}: {record['code']} ({record['message']})")
    stats = poller.last
    assert stats is not None
    online = tracker.end_sweep(stats.sweep, {target.key})[target.key]
    totals.on_sweep(stats, len(changes))
    rate = len(uids) / stats.duration_s if stats.duration_s else 0.0
    _out()
    _out(
        f"sweep {stats.sweep}: {stats.records_total} records in {stats.duration_s:.2f} s "
        f"({rate:,.0f} UIDs/s), {online} online"
    )
    if first:
        for line in errors:
            _out(f"  error record {line}")
        return
    came = sorted(
        (c for c in changes if c["online"] and c["previous_online"] is False),
        key=lambda c: c["uid"],
    )
    went = sorted((c for c in changes if not c["online"]), key=lambda c: c["uid"])
    _out(f"  {len(came)} came online, {len(went)} went offline")
    for change in came[:SHOW]:
        _out(f"  + {change['uid']} online since {_clock(change['join_time'] or 0)}")
    for change in went[:SHOW]:
        _out(f"  - {change['uid']} went offline")
