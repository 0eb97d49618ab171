"""One benchmark contender per process: polls a UID file against an endpoint and reports JSON.

``benchmarks/run.py`` starts this script once per contender and run, so that CPU time, peak RSS
and TCP connections belong to one contender only::

    python benchmarks/contenders.py poller --endpoint 127.0.0.1:8780 --uids-file uids.txt \\
        --json-out out.json [--protocol https --ca-file ca.pem] [--qps 100000] [--stream]

Contenders (all send ``BatchGetOnlineUsers`` with 20 user IDs per request, V3-signed):

``poller``
    the library: ``Poller(config).sweep_batches(...)`` under ``uvloop.run``; ``--qps`` and
    ``--concurrency`` become ``[limits] qps`` / ``max_in_flight``, ``--transport`` becomes
    ``[api] transport``; ``--stream`` reads the file through :class:`poller.engine.sources.UidFile`
    instead of a list loaded beforehand.
``sdk-async``
    the official SDK (``alibabacloud_live20161101``), ``batch_get_online_users_async`` driven by
    one asyncio task per request under a semaphore of ``--concurrency``.
``sdk-sync``
    the official SDK, ``batch_get_online_users`` in a ``--threads`` thread pool.
``lean``
    a minimal aiohttp + orjson + :func:`poller.wire.signing.sign_v3` loop with ``--concurrency``
    workers and no dedupe, validation or records; ``--limiter burst`` paces it with
    ``aiolimiter.AsyncLimiter(qps, 1)``, ``--limiter paced`` with ``AsyncLimiter(1, 1/qps)``.

What is measured, inside this process and around the work only (interpreter start-up, imports
and, unless ``--stream``, loading the UID list are excluded): wall time, CPU time
(``getrusage(RUSAGE_SELF)`` user + sys, all threads), peak RSS (the process's high-water mark,
``VmHWM``, which does include start-up; ``ru_maxrss`` is kept too but on Linux it inherits the
parent's mark across ``execve``), and TCP connections opened (every ``socket.socket.connect``
call in the process, with the distinct local ports they got; aiohttp under uvloop connects
through it too). With ``--duration`` a contender stops sending after that many seconds; with
``--timestamps`` it records the send time of every HTTP attempt (seconds from the start of the
work).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import orjson

__all__ = ["CONTENDERS", "Result", "main"]

CONTENDERS = ("poller", "sdk-async", "sdk-sync", "lean")
LIMITERS = ("none", "burst", "paced")
BATCH = 20
ACTION = "BatchGetOnlineUsers"

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------
# Measurement


class ConnectionCounter:
    """Counts ``socket.socket.connect`` calls process-wide (all threads, any event loop)."""

    def __init__(self) -> None:
        self.calls = 0
        self.ports: set[int] = set()
        self._lock = threading.Lock()
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        original: Callable[[socket.socket, Any], None] = socket.socket.connect
        counter = self

        def connect(sock: socket.socket, address: Any) -> None:
            try:
                original(sock, address)
            finally:
                # A non-blocking connect has its local port once connect() returned or raised
                # EINPROGRESS; a failed one may have none (port 0), which is not counted.
                try:
                    port = sock.getsockname()[1] if sock.family != socket.AF_UNIX else 0
                except (OSError, IndexError, TypeError):
                    port = 0
                with counter._lock:
                    counter.calls += 1
                    if port:
                        counter.ports.add(port)

        setattr(socket.socket, "connect", connect)  # noqa: B010 - patching a C-level method


@dataclass(slots=True)
class Tally:
    """What a contender counted about its own requests (updated from the event loop or threads)."""

    requests: int = 0
    requests_ok: int = 0
    throttled: int = 0
    uids_ok: int = 0
    online: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    send_times: list[float] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Result:
    contender: str
    variant: str
    protocol: str
    loop: str
    uids_input: int
    requests: int
    requests_ok: int
    throttled: int
    uids_ok: int
    online: int
    errors: dict[str, int]
    wall_s: float
    cpu_s: float
    cpu_user_s: float
    cpu_sys_s: float
    rss_before_mib: float
    peak_rss_mib: float
    ru_maxrss_mib: float
    connections_opened: int
    distinct_local_ports: int
    duration_limit_s: float | None
    notes: dict[str, Any]
    send_times: list[float] | None = None


def _rusage() -> tuple[float, float, int]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime, ru.ru_maxrss


def _proc_status_mib(field_name: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` in MiB (``None`` where there is no ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _rss_now_mib() -> float:
    value = _proc_status_mib("VmRSS")
    return _rusage()[2] / 1024.0 if value is None else value


def _peak_rss_mib(maxrss_kib: int) -> float:
    """Peak RSS of this process image: ``VmHWM`` where Linux has it.

    ``ru_maxrss`` is not used where ``VmHWM`` exists because Linux carries the parent's
    high-water mark over ``execve`` (with ``vfork`` it is the parent's whole RSS), so a child of
    a large parent would report the parent's size.
    """
    value = _proc_status_mib("VmHWM")
    return maxrss_kib / 1024.0 if value is None else value


def _read_uids(path: Path) -> list[str]:
    with path.open("rb") as f:
        return [line.rstrip(b"\r\n").decode() for line in f if line.strip()]


def _chunks(uids: list[str], size: int = BATCH) -> Iterator[list[str]]:
    for i in range(0, len(uids), size):
        yield uids[i : i + size]


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.protocol != "https":
        return None
    return ssl.create_default_context(cafile=args.ca_file)


def _run_async(coro: Coroutine[Any, Any, T], loop: str) -> T:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


# ----------------------------------------------------------------------------------------------
# poller


class NullRateMeter:
    """A :class:`poller.core.ratelimit.RateMeter` that never waits (diagnostic:
    ``--rate-meter none`` shows what the pipeline costs without pacing)."""

    def __init__(self) -> None:
        self.granted = 0

    async def acquire(self) -> float:
        self.granted += 1
        return 0.0

    def on_throttled(self, retry_after_s: float | None) -> None:
        return None

    def stats(self) -> Any:
        from poller.core.ratelimit import RateStats

        return RateStats(self.granted, 0.0, math.inf, math.inf, 0, 0)


async def run_poller(args: argparse.Namespace, uids: list[str] | None, tally: Tally) -> None:
    from poller import Poller
    from poller.config import ApiConfig, LimitsConfig, PollerConfig, SweepConfig
    from poller.core.ratelimit import RateMeter
    from poller.core.records import Batch, Target
    from poller.engine.sources import UidFile, UidInput
    from poller.wire.client import LiveClient, OnlineUsersAnswer
    from poller.wire.signing import SigningCredentials

    config = PollerConfig(
        api=ApiConfig(
            endpoint=args.endpoint,
            protocol=args.protocol,
            timeout_s=30.0,
            ca_file=Path(args.ca_file) if args.ca_file else None,
            **({"transport": args.transport} if args.transport else {}),
        ),
        limits=LimitsConfig(qps=args.qps, max_in_flight=args.concurrency),
        sweep=SweepConfig(dedupe=args.dedupe, deadline_s=args.duration or 0.0),
    )
    creds = SigningCredentials(args.key_id, args.key_secret)
    source: UidInput = UidFile(args.uids_file) if uids is None else uids
    work = [(Target(args.app_id, args.group_id), source)]
    start = time.monotonic()
    times = tally.send_times

    async def consume(poller: Poller) -> None:
        async for records in poller.sweep_batches(work):
            for record in records:
                if record["type"] == "presence":
                    tally.uids_ok += 1
                    if record["online"]:
                        tally.online += 1
                elif record["type"] == "error":
                    tally.errors[record["code"]] += 1
        stats = poller.last
        assert stats is not None
        tally.requests = stats.requests
        tally.requests_ok = stats.batches_ok
        tally.throttled = stats.throttled
        tally.notes["poller_summary"] = stats.summary()
        tally.notes["rate_meter"] = asdict(poller.rate_meter.stats())

    meter: RateMeter | None = NullRateMeter() if args.rate_meter == "none" else None
    if times is None:
        async with Poller(config, credentials=creds, rate_meter=meter) as poller:
            await consume(poller)
        return

    # Send times: the same LiveClient the Poller would build, behind a fetcher that notes when
    # each attempt starts (after its in-flight slot and rate token were granted).
    class TimedFetcher:
        def __init__(self, client: LiveClient, times: list[float]) -> None:
            self.client = client
            self.times = times

        async def fetch(self, batch: Batch) -> OnlineUsersAnswer:
            self.times.append(time.monotonic() - start)
            return await self.client.fetch(batch)

    async with (
        LiveClient(config.api, creds, max_connections=args.concurrency) as client,
        Poller(config, fetcher=TimedFetcher(client, times), rate_meter=meter) as poller,
    ):
        await consume(poller)


# ----------------------------------------------------------------------------------------------
# lean loop


async def run_lean(args: argparse.Namespace, uids: list[str], tally: Tally) -> None:
    import aiohttp
    from aiolimiter import AsyncLimiter

    from poller.wire.signing import SigningCredentials, format_timestamp, new_nonce, sign_v3

    creds = SigningCredentials(args.key_id, args.key_secret)
    limiter: AsyncLimiter | None = None
    if args.limiter == "burst":
        limiter = AsyncLimiter(args.qps, 1.0)
    elif args.limiter == "paced":
        limiter = AsyncLimiter(1, 1.0 / args.qps)
    url = f"{args.protocol}://{args.endpoint}/"
    start = time.monotonic()
    deadline = start + args.duration if args.duration else None
    times = tally.send_times
    batches = _chunks(uids)
    connector = aiohttp.TCPConnector(limit=args.concurrency, ssl=_ssl_context(args) or True)
    timeout = aiohttp.ClientTimeout(total=30.0)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for batch in batches:
                params = {
                    "AppId": args.app_id,
                    "GroupId": args.group_id,
                    "UserIds": ",".join(batch),
                }
                for _attempt in range(4):
                    if deadline is not None and time.monotonic() >= deadline:
                        return
                    if limiter is not None:
                        await limiter.acquire()
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        return
                    signed = sign_v3(
                        credentials=creds,
                        host=args.endpoint,
                        action=ACTION,
                        params=params,
                        date=format_timestamp(datetime.now(UTC)),
                        nonce=new_nonce(),
                    )
                    if times is not None:
                        times.append(now - start)
                    tally.requests += 1
                    try:
                        async with session.post(
                            url, data=signed.body, headers=signed.headers
                        ) as resp:
                            status = resp.status
                            retry_after = resp.headers.get("x-acs-retry-after")
                            body = await resp.read()
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        tally.errors[type(exc).__name__] += 1
                        break
                    data = orjson.loads(body)
                    if status == 200:
                        users = data["Result"]["OnlineUsers"]
                        tally.requests_ok += 1
                        tally.uids_ok += len(users)
                        tally.online += sum(1 for u in users if u["Online"])
                        break
                    code = str(data.get("Code", status))
                    if code.startswith("Throttling"):
                        tally.throttled += 1
                        await asyncio.sleep(int(retry_after or 100) / 1000.0)
                        continue
                    tally.errors[code] += 1
                    break

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))


# ----------------------------------------------------------------------------------------------
# official SDK


def _sdk_client(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from alibabacloud_live20161101 import models as live_models
    from alibabacloud_live20161101.client import Client
    from alibabacloud_tea_openapi.models import Config
    from darabonba.runtime import RuntimeOptions

    client = Client(
        Config(
            access_key_id=args.key_id,
            access_key_secret=args.key_secret,
            endpoint=args.endpoint,
            protocol=args.protocol,
        )
    )
    runtime = RuntimeOptions(ca=args.ca_file) if args.protocol == "https" else RuntimeOptions()
    return client, live_models, runtime


def _sdk_count(tally: Tally, response: Any) -> None:
    users = response.body.result.online_users or []
    tally.requests_ok += 1
    tally.uids_ok += len(users)
    tally.online += sum(1 for u in users if u.online)


def _sdk_error(tally: Tally, exc: Exception) -> None:
    code = getattr(exc, "code", None) or type(exc).__name__
    if str(code).startswith("Throttling"):
        tally.throttled += 1
    tally.errors[str(code)] += 1


async def run_sdk_async(args: argparse.Namespace, uids: list[str], tally: Tally) -> None:
    client, live_models, runtime = _sdk_client(args)
    semaphore = asyncio.Semaphore(args.concurrency)

    async def one(batch: list[str]) -> None:
        request = live_models.BatchGetOnlineUsersRequest(
            app_id=args.app_id, group_id=args.group_id, user_ids=",".join(batch)
        )
        async with semaphore:
            tally.requests += 1
            try:
                if args.protocol == "https":
                    response = await client.batch_get_online_users_with_options_async(
                        request, runtime
                    )
                else:
                    response = await client.batch_get_online_users_async(request)
            except Exception as exc:  # the SDK raises its own exception types
                _sdk_error(tally, exc)
                return
            _sdk_count(tally, response)

    await asyncio.gather(*(one(batch) for batch in _chunks(uids)))


def run_sdk_sync(args: argparse.Namespace, uids: list[str], tally: Tally) -> None:
    client, live_models, runtime = _sdk_client(args)
    lock = threading.Lock()

    def one(batch: list[str]) -> None:
        request = live_models.BatchGetOnlineUsersRequest(
            app_id=args.app_id, group_id=args.group_id, user_ids=",".join(batch)
        )
        try:
            if args.protocol == "https":
                response = client.batch_get_online_users_with_options(request, runtime)
            else:
                response = client.batch_get_online_users(request)
        except Exception as exc:  # the SDK raises its own exception types
            with lock:
                tally.requests += 1
                _sdk_error(tally, exc)
            return
        with lock:
            tally.requests += 1
            _sdk_count(tally, response)

    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        for _ in pool.map(one, _chunks(uids)):
            pass


# ----------------------------------------------------------------------------------------------
# main


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("poller", "aiohttp", "orjson", "uvloop", "aiolimiter"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("contender", choices=CONTENDERS)
    parser.add_argument("--endpoint", required=True, help="host:port of the emulator")
    parser.add_argument("--protocol", choices=("http", "https"), default="http")
    parser.add_argument("--ca-file", help="PEM of the CA that signed the server (https)")
    parser.add_argument("--uids-file", type=Path, required=True, help="one user ID per line")
    parser.add_argument("--json-out", type=Path, required=True, help="where the result goes")
    parser.add_argument("--app-id", default="demo-app")
    parser.add_argument("--group-id", default="demo-group")
    parser.add_argument("--key-id", default="demo-key")
    parser.add_argument("--key-secret", default="demo-secret")
    parser.add_argument("--concurrency", type=int, default=64, help="in-flight requests")
    parser.add_argument("--threads", type=int, default=16, help="sdk-sync thread pool size")
    parser.add_argument(
        "--qps",
        type=float,
        default=100_000.0,
        help="poller [limits] qps; the lean loop's limiter rate (with --limiter)",
    )
    parser.add_argument(
        "--rate-meter",
        choices=("paced", "none"),
        default="paced",
        help="poller: its PacedRateLimiter, or none at all (diagnostic)",
    )
    parser.add_argument(
        "--transport",
        choices=("builtin", "aiohttp"),
        default=None,
        help="poller: [api] transport (default: poller's default)",
    )
    parser.add_argument("--limiter", choices=LIMITERS, default="none", help="lean loop only")
    parser.add_argument("--no-dedupe", dest="dedupe", action="store_false", help="poller only")
    parser.add_argument("--stream", action="store_true", help="poller: stream the file (UidFile)")
    parser.add_argument("--duration", type=float, default=None, help="stop sending after S s")
    parser.add_argument("--timestamps", action="store_true", help="record send times")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.protocol == "https" and not args.ca_file:
        print("contenders.py: --protocol https needs --ca-file", file=sys.stderr)
        return 2
    if args.stream and args.contender != "poller":
        print("contenders.py: --stream is for the poller contender only", file=sys.stderr)
        return 2
    # Import what every path needs before the clock starts.
    import aiohttp  # noqa: F401
    import uvloop  # noqa: F401

    import poller.engine.poller  # noqa: F401

    if args.contender.startswith("sdk"):
        _sdk_client(args)  # imports the SDK (and builds one throw-away client)

    uids: list[str] | None = None if args.stream else _read_uids(args.uids_file)
    tally = Tally(send_times=[] if args.timestamps else None)
    counter = ConnectionCounter()
    counter.install()
    variant = args.limiter if args.contender == "lean" else ""
    if args.contender == "poller":
        variant = f"qps={args.qps:g},dedupe={'on' if args.dedupe else 'off'}"
        variant += ",stream" if args.stream else ""
        variant += ",no-rate-meter" if args.rate_meter == "none" else ""
        variant += f",transport={args.transport}"

    rss_before = _rss_now_mib()
    user0, sys0, _ = _rusage()
    wall0 = time.perf_counter()
    loop = args.loop
    if args.contender == "poller":
        _run_async(run_poller(args, uids, tally), loop)
    elif args.contender == "lean":
        assert uids is not None
        _run_async(run_lean(args, uids, tally), loop)
    elif args.contender == "sdk-async":
        assert uids is not None
        _run_async(run_sdk_async(args, uids, tally), loop)
    else:
        assert uids is not None
        run_sdk_sync(args, uids, tally)
        loop = "threads"
    wall = time.perf_counter() - wall0
    user1, sys1, maxrss_kib = _rusage()

    tally.notes["versions"] = _versions()
    result = Result(
        contender=args.contender,
        variant=variant,
        protocol=args.protocol,
        loop=loop,
        uids_input=len(uids) if uids is not None else -1,
        requests=tally.requests,
        requests_ok=tally.requests_ok,
        throttled=tally.throttled,
        uids_ok=tally.uids_ok,
        online=tally.online,
        errors=dict(tally.errors),
        wall_s=round(wall, 4),
        cpu_s=round((user1 - user0) + (sys1 - sys0), 4),
        cpu_user_s=round(user1 - user0, 4),
        cpu_sys_s=round(sys1 - sys0, 4),
        rss_before_mib=round(rss_before, 2),
        peak_rss_mib=round(_peak_rss_mib(maxrss_kib), 2),
        ru_maxrss_mib=round(maxrss_kib / 1024.0, 2),
        connections_opened=counter.calls,
        distinct_local_ports=len(counter.ports),
        duration_limit_s=args.duration,
        notes=tally.notes,
        send_times=None
        if tally.send_times is None
        else [round(t, 4) for t in sorted(tally.send_times)],
    )
    tmp = args.json_out.with_suffix(args.json_out.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(asdict(result)))
    os.replace(tmp, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
