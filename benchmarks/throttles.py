"""Throttling (issue 12): spurious throttles must not slow a sweep, a real competitor must be
yielded to.

::

    python benchmarks/throttles.py [--uids 20000] [--reps 3] [--competitor-s 40] [--json F]

sweeps
    Sweep time of ``--uids`` UIDs against the emulator at ``--qps 100``: clean, then with 2 %
    and 5 % of the answers a spurious ``Throttling.User`` (``--faults throttle=...``, a random
    ``x-acs-retry-after`` of 1-1000 ms), ``--reps`` times each, the order alternating. A fresh
    Poller (and rate meter) per sweep; before each the emulator's counters and throttle
    windows are reset and its fault sequence reseeded (seed = repetition). Target: median sweep
    time with ``throttle=0.05`` at most 1.3 x the clean median.
competitor
    Two keys of one emulator account (``--access-key ...@shared``, one budget of 100
    requests/s): a competitor sweeps at a steady 50 requests/s (a non-adaptive meter that
    ignores throttles: it neither slows down nor pauses), while poller, with its default
    config, sweeps continuously; both for ``--competitor-s`` seconds. Target: fewer than 2 %
    of poller's requests throttled after the first 10 s.

Everything binds and connects to 127.0.0.1; every sweep is bounded in time and the emulator is
stopped on any exit (SIGTERM and SIGHUP included). Prints Markdown tables; exit status 1 on a
MISS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from poller import Poller, Target
from poller.core.ratelimit import PacedRateLimiter, RateStats
from poller.core.stats import AttemptListener
from poller.emulator.process import EmulatorProcess

TARGET = Target("demo-app", "demo-group")
LEVELS = ("", "throttle=0.02", "throttle=0.05")
MAX_RATIO = 1.3  # sweep time with throttle=0.05 against clean
MAX_THROTTLED = 0.02  # our throttled share with a competitor, after WARMUP_S
WARMUP_S = 10.0
COMPETITOR_QPS = 50.0
SHARED_KEYS = (
    "--access-key",
    "demo-key:demo-secret@shared",
    "--access-key",
    "rival-key:rival-secret@shared",
)


@dataclass
class SweepRun:
    faults: str
    rep: int
    seconds: float
    records: int
    presence: int
    throttled: int
    decreases: int
    undone: int
    holding: bool
    end_rate: float


class SteadyMeter:
    """Paced at ``qps`` whatever the answers: a competitor that never backs off."""

    def __init__(self, qps: float) -> None:
        self._meter = PacedRateLimiter(qps, margin_s=0.0, adaptive=False)

    async def acquire(self) -> float:
        return await self._meter.acquire()

    def on_throttled(self, retry_after_s: float | None) -> None:
        pass

    def stats(self) -> RateStats:
        return self._meter.stats()


def uid_list(n: int) -> list[str]:
    return [f"user-{i:06d}" for i in range(1, n + 1)]


async def one_sweep(emulator: EmulatorProcess, faults: str, rep: int, uids: list[str]) -> SweepRun:
    async with Poller(emulator.poller_config()) as poller:
        records = presence = 0
        started = time.monotonic()
        async with asyncio.timeout(60 + len(uids) / 200):  # bounded, far beyond any sweep at 100/s
            async for record in poller.sweep(TARGET, uids):
                records += 1
                presence += record["type"] == "presence"
        seconds = time.monotonic() - started
        assert poller.last is not None
        meter = poller.rate_meter.stats()
        return SweepRun(faults or "clean", rep, seconds, records, presence, poller.last.throttled,
                        meter.decreases, meter.undone, meter.holding, meter.rate)  # fmt: skip


def run_sweeps(uids: int, reps: int) -> tuple[list[SweepRun], dict[str, Any]]:
    members = uid_list(uids)
    runs: list[SweepRun] = []
    with EmulatorProcess("--qps", "100", "--group", f"demo-app/demo-group:{uids}") as emulator:
        for rep in range(1, reps + 1):
            for faults in LEVELS if rep % 2 else LEVELS[::-1]:
                emulator.set_faults(faults, seed=rep)
                emulator.reset()
                run = asyncio.run(one_sweep(emulator, faults, rep, members))
                print(f"  {run}", file=sys.stderr, flush=True)
                runs.append(run)
    medians = {
        level: statistics.median(r.seconds for r in runs if r.faults == level)
        for level in ("clean", *LEVELS[1:])
    }
    summary = {
        level: {"median_s": s, "ratio": s / medians["clean"]} for level, s in medians.items()
    }
    return runs, summary


async def compete(emulator: EmulatorProcess, uids: list[str], seconds: float) -> dict[str, Any]:
    ours: list[tuple[float, bool]] = []
    theirs: list[tuple[float, bool]] = []
    t0 = time.monotonic()

    def listener(events: list[tuple[float, bool]]) -> AttemptListener:
        return lambda e: events.append((time.monotonic() - t0, e.throttled))

    async def sweep_for(poller: Poller) -> None:
        asyncio.get_running_loop().call_later(seconds, poller.request_stop)
        while time.monotonic() - t0 < seconds:
            async for _ in poller.sweep(TARGET, uids):
                pass

    rival = emulator.poller_config("rival-key", "rival-secret")
    async with (
        Poller(emulator.poller_config(), on_attempt=listener(ours)) as poller,
        Poller(rival, rate_meter=SteadyMeter(COMPETITOR_QPS), on_attempt=listener(theirs)) as rp,
    ):
        async with asyncio.timeout(seconds + 60):
            await asyncio.gather(sweep_for(poller), sweep_for(rp))
        meter = poller.rate_meter.stats()
    after = [throttled for t, throttled in ours if t >= WARMUP_S]
    span = max(1e-9, seconds - WARMUP_S)
    timeline = []
    for start in range(0, math.ceil(seconds), 5):
        end = min(start + 5, seconds)
        ours_here = [x for t, x in ours if start <= t < end]
        theirs_here = [x for t, x in theirs if start <= t < end]
        timeline.append((f"{start}-{end:g}", len(ours_here) / (end - start), sum(ours_here),
                         len(theirs_here) / (end - start), sum(theirs_here)))  # fmt: skip
    return {
        "ours_requests": len(ours),
        "ours_throttled": sum(x for _, x in ours),
        "ours_requests_after_warmup": len(after),
        "ours_throttled_after_warmup": sum(after),
        "ours_throttled_fraction_after_warmup": sum(after) / max(1, len(after)),
        "ours_rate_after_warmup": len(after) / span,
        "ours_meter_end": asdict(meter),
        "competitor_requests": len(theirs),
        "competitor_throttled": sum(x for _, x in theirs),
        "competitor_rate": len(theirs) / seconds,
        "timeline": timeline,
    }


def run_competitor(uids: int, seconds: float) -> dict[str, Any]:
    group = ("--group", f"demo-app/demo-group:{uids}")
    with EmulatorProcess("--qps", "100", *group, *SHARED_KEYS) as emulator:
        result = asyncio.run(compete(emulator, uid_list(uids), seconds))
        account = emulator.stats()["accounts"]["shared"]
    result["emulator_throttled"] = account["throttled_total"]
    result["emulator_max_admitted_in_any_1s"] = account["max_admitted_in_any_1s_window"]
    return result


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(header: str, rows: list[tuple[Any, ...]]) -> None:
    """A Markdown table: ``header`` is the columns joined by ``|``."""
    columns = header.split("|")
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for row in rows:
        print("| " + " | ".join(f"{x:.2f}" if isinstance(x, float) else str(x) for x in row) + " |")
    print()


def report_sweeps(runs: list[SweepRun], summary: dict[str, Any]) -> bool:
    print("## Sweep time with spurious throttles\n")
    clean = summary["clean"]["median_s"]
    table(
        "faults|rep|seconds|x clean median|presence records|throttled|decreases|undone|holding"
        "|end rate",
        [(r.faults, r.rep, r.seconds, r.seconds / clean, r.presence, r.throttled, r.decreases,
          r.undone, r.holding, f"{r.end_rate:.1f}") for r in runs],
    )  # fmt: skip
    table(
        "faults|median s|x clean|target|verdict",
        [(level, s["median_s"], s["ratio"], "" if level == "clean" else f"≤ {MAX_RATIO}x",
          "" if level == "clean" else verdict(s["ratio"] <= MAX_RATIO))
         for level, s in summary.items()],
    )  # fmt: skip
    return all(s["ratio"] <= MAX_RATIO for s in summary.values())


def report(runs: list[SweepRun], summary: dict[str, Any], comp: dict[str, Any] | None) -> bool:
    ok = report_sweeps(runs, summary) if runs else True
    if comp is None:
        return ok
    fraction = comp["ours_throttled_fraction_after_warmup"]
    passed = fraction < MAX_THROTTLED
    meter = comp["ours_meter_end"]
    print(f"## A competitor at {COMPETITOR_QPS:g} requests/s on the same account\n")
    table(
        "metric|value",
        [
            ("our requests, all / after 10 s",
             f"{comp['ours_requests']} / {comp['ours_requests_after_warmup']}"),
            ("our throttled, all / after 10 s",
             f"{comp['ours_throttled']} / {comp['ours_throttled_after_warmup']}"),
            ("our throttled fraction after 10 s",
             f"{100 * fraction:.2f} % (target < {100 * MAX_THROTTLED:g} %): {verdict(passed)}"),
            ("our requests/s after 10 s", f"{comp['ours_rate_after_warmup']:.1f}"),
            ("our meter at the end: rate, decreases, undone",
             f"{meter['rate']:.1f}/s, {meter['decreases']}, {meter['undone']}"),
            ("competitor: requests/s, throttled",
             f"{comp['competitor_rate']:.1f}, {comp['competitor_throttled']}"),
            ("emulator: refusals, max admitted in any 1 s",
             f"{comp['emulator_throttled']}, {comp['emulator_max_admitted_in_any_1s']}"),
        ],
    )  # fmt: skip
    table("seconds|our req/s|our throttled|competitor req/s|competitor throttled", comp["timeline"])
    return ok and passed


def _exit(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds the with-blocks: the emulator is stopped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uids", type=int, default=20_000, help="UIDs per sweep (default 20000)")
    parser.add_argument(
        "--reps", type=int, default=3, help="repetitions per level (default 3; 0 = skip)"
    )
    parser.add_argument(
        "--competitor-s", type=float, default=40.0, help="competitor run, s (0 = skip; default 40)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)
    runs, summary = run_sweeps(args.uids, args.reps) if args.reps > 0 else ([], {})
    comp = run_competitor(args.uids, args.competitor_s) if args.competitor_s > 0 else None
    ok = report(runs, summary, comp)
    if args.json is not None:
        data = {"sweeps": [asdict(r) for r in runs], "summary": summary, "competitor": comp}
        args.json.write_text(json.dumps(data, indent=2) + "\n", "utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
