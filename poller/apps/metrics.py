"""Prometheus metrics and the /metrics, /healthz, /readyz listener.

Metric names follow Prometheus conventions (base units, ``_total`` counters); labels are low
cardinality only — never a user ID. Each :class:`Metrics` has its own registry, so several
pollers (or tests) in one process do not collide.

* ``/healthz`` answers 200 while the event loop is responsive (a ticker measures its lag;
  above ``max_lag_s`` the answer is 503). A blocked loop cannot answer at all, which a probe's
  timeout reports the same way.
* ``/readyz`` answers 200 when the credentials were accepted and the last sweep finished
  recently and had at least one successful request; otherwise 503 with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from poller.core.clock import Clock, system_clock
from poller.core.records import TargetKey
from poller.core.stats import Attempt, SweepStats
from poller.engine.lookup import SOURCES as LOOKUP_SOURCES
from poller.engine.sinks import MeteredSink

__all__ = [
    "FleetLike",
    "FleetState",
    "HealthServer",
    "LookupMetrics",
    "Metrics",
    "Readiness",
    "ShardsLike",
    "SharedStateLike",
    "start_site",
]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_SWEEP_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
_REDIS_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class FleetState(Protocol):
    """What readiness and metrics read of a fleet's status (:class:`poller.fleet.FleetStatus`;
    the apps never import the fleet: that would import redis without a ``[cluster]``)."""

    @property
    def mode(self) -> str: ...
    @property
    def on_redis_down(self) -> str: ...
    @property
    def members(self) -> int: ...
    @property
    def description(self) -> str: ...


class FleetLike(Protocol):
    on_redis_call: Callable[[float, bool], None] | None

    def status(self) -> FleetState: ...


class ShardsLike(Protocol):
    """What metrics and readiness read of a member's shard leases
    (:class:`poller.fleet.shards.ShardLeases`) and shared state."""

    @property
    def held(self) -> frozenset[int]: ...

    leader: bool
    handovers_in: int
    handovers_out: int


class SharedStateLike(Protocol):
    changes: int
    deferred: int


class _SinkCollector:
    """The metrics of every metered sink, read at scrape time (label ``sink``: its name)."""

    def __init__(self, sinks: Callable[[], Iterable[MeteredSink]]) -> None:
        self._sinks = sinks

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for sink in self._sinks():
            values = sink.counters()
            for name, kind, help_text in sink.metrics:
                full = f"{sink.metrics_prefix}_{name}"
                family = families.get(full)
                if family is None:
                    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                    family = families[full] = cls(full, help_text, labels=["sink"])
                family.add_metric([sink.name], values[name])
        yield from families.values()


class _ShardCounters:
    """Counters read from the leases and shared state at scrape time."""

    def __init__(self, leases: ShardsLike, state: SharedStateLike) -> None:
        self._leases, self._state = leases, state

    def collect(self) -> Iterator[Metric]:
        handovers = CounterMetricFamily(
            "poller_fleet_shard_handovers",
            "Shards this member took over (in) or handed over or lost (out).",
            labels=["direction"],
        )
        handovers.add_metric(["in"], self._leases.handovers_in)
        handovers.add_metric(["out"], self._leases.handovers_out)
        yield handovers
        yield CounterMetricFamily(
            "poller_fleet_changes_decided",
            "Transitions this member decided in the fleet's shared state (and streamed).",
            value=self._state.changes,
        )
        yield CounterMetricFamily(
            "poller_fleet_changes_deferred",
            "Poll results whose transitions could not be decided (Redis unreachable); the next"
            " sweep with Redis decides them.",
            value=self._state.deferred,
        )


_CLOCK_OFFSET_HELP = "The API server's clock minus the local clock, learned from its Date headers."


#: Distinct ``status`` labels of ``poller_uids_total`` kept apart; later new codes are "other".
MAX_STATUS_LABELS = 40


class Metrics:
    """The daemon's metrics, fed by every :class:`~poller.core.stats.Attempt` and sweep."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, clock: Clock | None = None
    ) -> None:
        self._clock = clock or system_clock()
        self.registry = registry or CollectorRegistry()
        self._statuses: set[str] = set()
        self._request_metrics(self.registry)
        self._sweep_metrics(self.registry)
        self._lookup_metrics(self.registry)

    def _request_metrics(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "poller_requests",
            "HTTP attempts by API action and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.request_duration = Histogram(
            "poller_request_duration_seconds",
            "Duration of one HTTP attempt, from send to parsed answer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.throttled = Counter(
            "poller_throttled",
            "Answers that said the account was throttled, by API action (each has its budget).",
            ["action"],
            registry=r,
        )
        self.connections = Counter(
            "poller_http_connections_opened",
            "Connections (TCP, with TLS where used) the HTTP transport opened.",
            registry=r,
        )
        self.retries = Counter(
            "poller_retries", "Retried attempts by reason.", ["reason"], registry=r
        )
        self.rate_wait = Histogram(
            "poller_rate_limit_wait_seconds",
            "Time spent waiting for the rate meter per attempt, by API action (one meter each).",
            ["action"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.clock_offset = Gauge("poller_clock_offset_seconds", _CLOCK_OFFSET_HELP, registry=r)

    def _sweep_metrics(self, r: CollectorRegistry) -> None:
        self.sweep_duration = Histogram(
            "poller_sweep_duration_seconds",
            "Duration of a whole sweep.",
            buckets=_SWEEP_BUCKETS,
            registry=r,
        )
        self.sweeps = Counter("poller_sweeps", "Sweeps completed.", registry=r)
        self.uids = Counter(
            "poller_uids",
            "Per-UID results of every sweep: 'presence' or the error code "
            f"(at most {MAX_STATUS_LABELS} distinct; later new codes count as 'other').",
            ["status"],
            registry=r,
        )
        self.changes = Counter("poller_changes", "Change records emitted.", registry=r)
        self.online = Gauge(
            "poller_online_users",
            "Users online at the last sweep, per target (group_id empty for an app-wide API).",
            ["api", "app_id", "group_id"],
            registry=r,
        )
        self.uid_file_errors = Counter(
            "poller_uid_file_errors",
            "Sweeps in which a UID file could not be read (its last good copy was used).",
            registry=r,
        )
        self.discovery_errors = Counter(
            "poller_discovery_errors",
            "Sweeps in which listing a discovery target's members failed (the last list was used).",
            registry=r,
        )
        self.ready = Gauge("poller_ready", "1 when /readyz would answer 200.", registry=r)
        self.last_sweep = Gauge(
            "poller_last_sweep_timestamp_seconds",
            "Unix time the last sweep finished.",
            registry=r,
        )

    def _lookup_metrics(self, r: CollectorRegistry) -> None:
        self.lookup_questions = Counter(
            "poller_lookup_questions",
            "Questions asked of lookups, by API action and where the answer came from: cache, "
            "shared (a question already waiting or in flight), new, invalid, overloaded.",
            ["action", "source"],
            registry=r,
        )
        self.lookup_batch_uids = Histogram(
            "poller_lookup_batch_uids",
            "User IDs per lookup request, by API action.",
            ["action"],
            buckets=(1, 2, 5, 10, 15, 20),
            registry=r,
        )
        self.lookup_wait = Histogram(
            "poller_lookup_wait_seconds",
            "How long a lookup call (get or get_many) waited for its answers, by action.",
            ["action"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.query_requests = Counter(
            "poller_query_requests",
            "Requests to the query endpoint (GET /v1/presence) by HTTP status.",
            ["status"],
            registry=r,
        )

    def lookup_listener(self, action: str) -> LookupMetrics:
        """A :class:`~poller.engine.lookup.LookupListener` counting into these metrics."""
        return LookupMetrics(self, action)

    def watch_fleet(self, fleet: FleetLike) -> None:
        """Fleet metrics (``[cluster]``): members, degraded mode, Redis round trips."""
        r = self.registry
        Gauge(
            "poller_fleet_members",
            "Members of the fleet seen in the last minute (this one included).",
            registry=r,
        ).set_function(lambda: fleet.status().members)
        Gauge(
            "poller_fleet_degraded",
            "1 while Redis is unreachable and the member runs on its fallback (share or pause).",
            registry=r,
        ).set_function(lambda: 1.0 if fleet.status().mode == "degraded" else 0.0)
        redis_seconds = Histogram(
            "poller_fleet_redis_seconds",
            "Duration of one Redis round trip of the fleet (successful ones).",
            buckets=_REDIS_BUCKETS,
            registry=r,
        )
        redis_errors = Counter(
            "poller_fleet_redis_errors", "Redis calls of the fleet that failed.", registry=r
        )

        def on_call(seconds: float, ok: bool) -> None:
            if ok:
                redis_seconds.observe(seconds)
            else:
                redis_errors.inc()

        fleet.on_redis_call = on_call

    def watch_shards(self, leases: ShardsLike, state: SharedStateLike) -> None:
        """Shard metrics of a sharded fleet member: shards held, leadership, handovers."""
        r = self.registry
        Gauge(
            "poller_fleet_shards_held", "UID shards this member holds a lease on.", registry=r
        ).set_function(lambda: len(leases.held))
        Gauge(
            "poller_fleet_leader",
            "1 while this member holds the fleet's leader lease (it lists group members).",
            registry=r,
        ).set_function(lambda: 1.0 if leases.leader else 0.0)
        r.register(_ShardCounters(leases, state))

    def watch_sinks(self, sinks: Callable[[], Iterable[MeteredSink]]) -> None:
        """The metrics of the metered sinks (``poller_webhook_*{sink}``,
        ``poller_postgres_*{sink}``) ``sinks()`` returns at each scrape (a reload may replace
        them)."""
        self.registry.register(_SinkCollector(sinks))

    def _status_label(self, status: str) -> str:
        """``status``, while fewer than :data:`MAX_STATUS_LABELS` distinct ones were seen:
        server error codes are open-ended, a metric's series must not be."""
        if status in self._statuses:
            return status
        if len(self._statuses) < MAX_STATUS_LABELS:
            self._statuses.add(status)
            return status
        return "other"

    def on_attempt(self, event: Attempt) -> None:
        """Every request attempt, discovery included (an :data:`AttemptListener`)."""
        self.requests.labels(event.action, event.outcome).inc()
        self.request_duration.observe(event.duration_s)
        self.rate_wait.labels(event.action).observe(event.rate_wait_s)
        if event.throttled:
            self.throttled.labels(event.action).inc()
        if event.retry_of is not None:
            self.retries.labels(event.retry_of).inc()

    def sweep_done(self, stats: SweepStats, online: dict[TargetKey, int], changes: int) -> None:
        self.sweeps.inc()
        self.sweep_duration.observe(stats.duration_s)
        for status, count in stats.records.items():
            self.uids.labels(self._status_label(status)).inc(count)
        for (api, app_id, group_id), count in online.items():
            self.online.labels(api, app_id, group_id or "").set(count)
        self.changes.inc(changes)
        self.connections.inc(stats.connections_opened)
        self.last_sweep.set(self._clock.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LookupMetrics:
    """One API action's lookup events, counted (a :class:`~poller.engine.lookup.LookupListener`)."""

    __slots__ = ("_answer", "_batch", "_questions")

    def __init__(self, metrics: Metrics, action: str) -> None:
        self._questions = {
            source: metrics.lookup_questions.labels(action, source) for source in LOOKUP_SOURCES
        }
        self._batch = metrics.lookup_batch_uids.labels(action)
        self._answer = metrics.lookup_wait.labels(action)

    def on_question(self, source: str) -> None:
        self._questions[source].inc()

    def on_batch(self, uids: int) -> None:
        self._batch.observe(uids)

    def on_answer(self, wait_s: float) -> None:
        self._answer.observe(wait_s)


@dataclass(slots=True)
class Readiness:
    """What /readyz decides on; the daemon updates it after every sweep."""

    max_age_s: float
    last_sweep_at: float | None = None  # monotonic
    credentials_ok: bool | None = None
    last_sweep_ok: bool = False
    reason: str = "no sweep has completed yet"
    fleet: FleetLike | None = None  # [cluster]: its mode is part of the answer
    shards: ShardsLike | None = None  # a sharded fleet: the shards held are too

    def check(self, now: float) -> tuple[bool, str]:
        fleet = self.fleet.status() if self.fleet is not None else None
        if fleet is not None and fleet.mode == "degraded" and fleet.on_redis_down == "pause":
            return False, fleet.description  # nothing is sent until Redis is back
        if self.credentials_ok is False:
            return False, self.reason
        if self.last_sweep_at is None:
            return False, self.reason
        if now - self.last_sweep_at > self.max_age_s:
            return False, f"the last sweep finished {now - self.last_sweep_at:.0f} s ago"
        if not self.last_sweep_ok:
            return False, self.reason
        return True, "ok"

    def details(self) -> dict[str, Any]:
        """Extra fields of the /readyz answer: the fleet's mode, when there is a fleet."""
        if self.fleet is None:
            return {}
        status = self.fleet.status()
        fleet: dict[str, Any] = {
            "mode": status.mode,
            "members": status.members,
            "detail": status.description,
        }
        if self.shards is not None:
            fleet["shards_held"] = len(self.shards.held)
            fleet["leader"] = self.shards.leader
        return {"fleet": fleet}


async def start_site(runner: web.AppRunner, host: str, port: int) -> int:
    """Set ``runner`` up and listen on ``host:port``; the port listened on (``port`` 0: the
    one the system chose). ``OSError`` when the address cannot be bound (``runner`` cleaned
    up)."""
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    return int(runner.addresses[0][1])


class HealthServer:
    """aiohttp app on ``listen`` (``host:port``) serving metrics and probes."""

    def __init__(
        self,
        listen: str,
        metrics: Metrics,
        readiness: Readiness,
        *,
        clock: Clock | None = None,
        max_lag_s: float = 5.0,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._metrics = metrics
        self._readiness = readiness
        self._clock = clock or system_clock()
        self._max_lag = max_lag_s
        self._lag = 0.0
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.port = self._port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_view)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None)
        self.port = await start_site(runner, self._host, self._port)
        self._runner = runner
        self._ticker = asyncio.create_task(self._tick(), name="poller-loop-lag")

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _tick(self) -> None:
        interval = 0.5
        while True:
            before = self._clock.monotonic()
            await self._clock.sleep(interval)
            self._lag = max(0.0, self._clock.monotonic() - before - interval)

    async def _metrics_view(self, request: web.Request) -> web.Response:
        ok, _ = self._readiness.check(self._clock.monotonic())
        self._metrics.ready.set(1 if ok else 0)
        return web.Response(
            body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        healthy = self._lag <= self._max_lag
        return web.json_response(
            {
                "status": "ok" if healthy else "event loop lagging",
                "loop_lag_s": round(self._lag, 4),
            },
            status=200 if healthy else 503,
        )

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, reason = self._readiness.check(self._clock.monotonic())
        self._metrics.ready.set(1 if ok else 0)
        return web.json_response(
            {
                "status": "ready" if ok else "not ready",
                "reason": reason,
                **self._readiness.details(),
            },
            status=200 if ok else 503,
        )
