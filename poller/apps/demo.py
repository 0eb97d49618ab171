"""``poller demo``: the real pipeline against an in-process emulator, no account needed.

Starts the emulator on a free loopback port with a demo group whose members come and go,
polls every member a few times through :class:`~poller.engine.poller.Poller` (signing, pacing,
retries, merging, all real), and prints who came online or went offline between sweeps.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

from poller.config import ApiConfig, CredentialsConfig, PollerConfig
from poller.core.records import Target
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
        groups=(GroupSpec(target.app_id, target.group_id, args.members),),
        churn_per_s=args.churn,
        seed=args.seed,
    )
    # Members plus two IDs that show the other record kinds: a non-member and an invalid ID.
    uids = [f"user-{i:06d}" for i in range(1, args.members + 1)] + ["not-a-member", "bad,id"]
    loop = asyncio.get_running_loop()
    async with EmulatorServer(emulator_config) as emulator:
        config = PollerConfig(
            api=ApiConfig(endpoint=emulator.endpoint, protocol="http"),
            credentials=CredentialsConfig(
                access_key_id="demo-key", access_key_secret="demo-secret"
            ),
        )
        _out(f"emulator listening on {emulator.url} (group {target}, {args.members} members,")
        _out(f"  {args.churn:g} members flip online/offline per second; limit 100 requests/s)")
        previous: dict[str, bool] = {}
        totals = {"records": 0, "requests": 0, "retries": 0, "throttled": 0}
        async with Poller(config) as poller:
            next_start = loop.time()
            for sweep in range(1, args.sweeps + 1):
                await asyncio.sleep(max(0.0, next_start - loop.time()))
                next_start += args.interval
                current: dict[str, bool] = {}
                joined: dict[str, int] = {}
                errors: list[str] = []
                async for record in poller.sweep(target, uids):
                    if record["type"] == "presence":
                        current[record["uid"]] = record["online"]
                        joined[record["uid"]] = record["join_time"]
                    elif record["type"] == "error":
                        errors.append(f"{record['uid']!r}: {record['code']} ({record['message']})")
                stats = poller.last
                assert stats is not None
                for key in totals:
                    totals[key] += stats.records_total if key == "records" else getattr(stats, key)
                online = sum(current.values())
                rate = len(uids) / stats.duration_s if stats.duration_s else 0.0
                _out()
                _out(
                    f"sweep {sweep}: {stats.records_total} records in {stats.duration_s:.2f} s "
                    f"({rate:,.0f} UIDs/s), {online} online"
                )
                if sweep == 1:
                    for line in errors:
                        _out(f"  error record {line}")
                    previous = current
                    continue
                came = sorted(u for u, on in current.items() if on and not previous.get(u))
                went = sorted(u for u, on in current.items() if not on and previous.get(u))
                _out(f"  {len(came)} came online, {len(went)} went offline")
                for uid in came[:SHOW]:
                    _out(f"  + {uid} online since {_clock(joined[uid])}")
                for uid in went[:SHOW]:
                    _out(f"  - {uid} went offline")
                previous = current
        server = emulator.stats()["total"]
    _out()
    _out(
        f"done: {totals['records']} records from {totals['requests']} requests "
        f"({totals['retries']} retries, {totals['throttled']} throttled by the emulator);"
    )
    _out(
        f"emulator saw at most {server['max_requests_in_any_1s_window']} requests in any "
        f"1-second window (limit 100)."
    )
    return 0
