"""Emulator throughput: V3-verified BatchGetOnlineUsers requests per second and per CPU-second.

Starts ``python -m poller.emulator --qps 0`` (uvloop) as a subprocess, drives it from this
process with ``--concurrency`` keep-alive connections sending V3-signed requests of 20 IDs, and
reads the emulator's own CPU time (``utime + stime`` from ``/proc/<pid>/stat``) before and after
the measured phase. ``req_per_cpu_s`` is the emulator's throughput on one core, independent of
how fast this driver is. All requests are signed before the clock starts (each has its own
nonce), so the driver spends its time on I/O only.

Prints a one-line JSON summary on stdout, e.g.::

    python benchmarks/emulator_throughput.py --requests 20000
    {"requests": 20000, "req_per_s": ..., "emulator_cpu_s": ..., "req_per_cpu_s": ..., ...}
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from poller.wire import signing

__all__ = ["main", "run"]

KEY = signing.SigningCredentials("bench-key", "bench-secret")


def process_cpu_s(pid: int) -> float:
    """``utime + stime`` of ``pid`` in seconds (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def presign(endpoint: str, n: int, ids: int) -> list[signing.SignedRequest]:
    date = signing.format_timestamp(datetime.now(UTC))
    out = []
    for i in range(n):
        first = (i * ids) % 1000
        uids = [f"user-{(first + j) % 1000 + 1:06d}" for j in range(ids)]
        params = {"AppId": "demo-app", "GroupId": "demo-group", "UserIds": ",".join(uids)}
        out.append(
            signing.sign_v3(
                credentials=KEY,
                host=endpoint,
                action="BatchGetOnlineUsers",
                params=params,
                date=date,
                nonce=signing.new_nonce(),
            )
        )
    return out


async def drive(
    url: str, requests: list[signing.SignedRequest], concurrency: int
) -> tuple[float, int]:
    """Send every request with ``concurrency`` workers; ``(wall seconds, non-200 count)``."""
    errors = 0
    queue = iter(requests)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def worker() -> None:
            nonlocal errors
            for signed in queue:
                async with session.post(url, data=signed.body, headers=signed.headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, errors


async def run(args: argparse.Namespace) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "poller.emulator",
        "--port",
        "0",
        "--qps",
        "0",
        "--access-key",
        f"{KEY.access_key_id}:{KEY.access_key_secret}",
        "--group",
        "demo-app/demo-group:1000",
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"emulator did not start (got {url!r})")
        endpoint = url.removeprefix("http://")
        warmup = presign(endpoint, args.warmup, args.ids)
        measured = presign(endpoint, args.requests, args.ids)
        await drive(url + "/", warmup, args.concurrency)
        cpu_before = process_cpu_s(process.pid)
        wall_s, errors = await drive(url + "/", measured, args.concurrency)
        cpu_s = process_cpu_s(process.pid) - cpu_before
        async with aiohttp.ClientSession() as session, session.get(f"{url}/_emulator/stats") as r:
            stats = orjson.loads(await r.read())
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
    return {
        "benchmark": "emulator_throughput",
        "requests": args.requests,
        "concurrency": args.concurrency,
        "ids_per_request": args.ids,
        "signature": "v3",
        "errors": errors,
        "wall_s": round(wall_s, 3),
        "req_per_s": round(args.requests / wall_s, 1),
        "emulator_cpu_s": round(cpu_s, 3),
        "req_per_cpu_s": round(args.requests / cpu_s, 1) if cpu_s > 0 else None,
        "emulator_requests_total": stats["total"]["requests_total"],
        "emulator_exit_code": process.returncode,
        "python": sys.version.split()[0],
    }


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests")
    parser.add_argument("--warmup", type=int, default=1_000, help="unmeasured requests first")
    parser.add_argument("--concurrency", type=int, default=256, help="in-flight requests")
    parser.add_argument("--ids", type=int, default=20, help="user IDs per request (<= 20)")
    args = parser.parse_args(argv)
    if not 1 <= args.ids <= 20 or args.requests < 1 or args.concurrency < 1:
        parser.error("need 1 <= --ids <= 20, --requests >= 1, --concurrency >= 1")
    summary = _run(run(args))
    print(orjson.dumps(summary).decode(), flush=True)
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
