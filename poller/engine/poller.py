"""The :class:`Poller`: the library's entry point, its lifecycle and its public sweeps.

A poller owns what lives across sweeps: the API client, the rate meters (presence and
discovery), the in-flight limit, the retry loop with its budget, and the stop flags. Each sweep
runs in :mod:`poller.engine.sweep`, each batch in :mod:`poller.engine.batch`; every request
attempt ends in one :class:`~poller.core.stats.Attempt` event, which the sweep's
:class:`~poller.core.stats.SweepStats` and the ``on_attempt`` listener receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self

from poller.config import PollerConfig
from poller.core.apis import LEGACY_API, api_spec
from poller.core.clock import Clock, SkewedClock, system_clock
from poller.core.errors import ConfigError
from poller.core.lanes import SharedMeter
from poller.core.ratelimit import PacedRateLimiter, RateMeter, Retunable
from poller.core.records import Record, Target
from poller.core.retry import Retrier
from poller.core.stats import Attempt, AttemptListener, SweepStats
from poller.wire.client import BatchFetcher, LiveClient
from poller.wire.credentials import resolve_credentials
from poller.wire.discovery import discover_members
from poller.wire.signing import SigningCredentials

from .batch import StopControl, SweepContext
from .lookup import Lookup, LookupListener
from .sinks import Sink
from .sources import UidInput
from .sweep import RecordQueue, Work, run_sweep

if TYPE_CHECKING:  # redis-py is imported only with a [cluster] section
    from poller.fleet import Fleet

__all__ = ["Poller", "Work"]


class _State(enum.Enum):
    UNOPENED = "unopened"  # created, not yet entered
    OPEN = "open"  # inside 'async with'
    CLOSED = "closed"  # exited; cannot be reopened


class Poller:
    """Polls presence for any set of UIDs of one account.

    ::

        async with Poller(config) as poller:
            async for record in poller.sweep(Target("app", "group"), ["u1", "u2"]):
                ...

    Create it inside the event loop that will use it. The library never installs an event
    loop policy; the CLI runs it on uvloop where available. ``fetcher``, ``rate_meter``,
    ``clock`` and ``rng`` replace the real parts (tests, shared meters); ``on_attempt`` is
    called for every request attempt, discovery included. Sweeps are numbered from
    ``first_sweep`` (a daemon restarting from saved state continues its numbering).

    The clock is wrapped in a :class:`~poller.core.clock.SkewedClock` (unless it is one) that
    the API client corrects from the server's ``Date`` headers: signatures and the records'
    ``polled_at`` use the server's time even when the local clock is off (see :attr:`clock`).

    With a ``[cluster]`` section (and no ``rate_meter`` given) the poller joins the fleet in
    Redis (:attr:`fleet`) and its meters share the account's budget with every member.
    """

    def __init__(
        self,
        config: PollerConfig,
        *,
        fetcher: BatchFetcher | None = None,
        credentials: SigningCredentials | None = None,
        rate_meter: RateMeter | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        on_attempt: AttemptListener | None = None,
        first_sweep: int = 1,
    ) -> None:
        if first_sweep < 1:
            raise ValueError(f"first_sweep must be >= 1; got {first_sweep}")
        self._config = config
        self._fetcher = fetcher
        self._credentials = credentials
        # One meter per API action (the cloud budgets each apart), made when first needed.
        self._meters: dict[str, RateMeter] = {}
        if rate_meter is not None:
            self._meters[LEGACY_API] = rate_meter
        self._own_meter = rate_meter is None
        self._discovery_meters: dict[str, RateMeter] = {}
        # Each presence meter split between sweeps and lookups (lookups' floor: min_share).
        self._shared: dict[str, SharedMeter] = {}
        self._lookups: set[Lookup] = set()
        self._fleet: Fleet | None = None
        self._clock = SkewedClock.wrap(clock or system_clock())
        self._on_attempt = on_attempt
        self._retrier = Retrier(
            config.retry.policy(),
            config.retry.budget(),
            self._clock,
            rng=rng,
            listener=self._dispatch,
        )
        self._client: LiveClient | None = None
        self._inflight: asyncio.Semaphore | None = None
        self._control = StopControl()
        self._state = _State.UNOPENED
        self._sweeps = first_sweep - 1  # the number of the last sweep started
        self.current: SweepStats | None = None
        self.last: SweepStats | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError("a Poller can be opened only once")
        config = self._config
        creds = self._credentials
        if self._fetcher is None:
            creds = creds or resolve_credentials(config.credentials)
            self._client = await self._open_client(config, creds)
        try:
            await self._open_meters(config, creds)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        self._inflight = asyncio.Semaphore(config.limits.max_in_flight)
        self._state = _State.OPEN
        return self

    async def _open_meters(self, config: PollerConfig, creds: SigningCredentials | None) -> None:
        cluster = config.cluster
        if cluster is not None and self._own_meter:
            from poller.fleet import Fleet, account_of  # redis-py only with [cluster]

            account = account_of(cluster, creds.access_key_id if creds else None)
            self._fleet = Fleet(cluster, account=account, clock=self._clock)
            await self._fleet.start()
        for api in {LEGACY_API, *(t.api for t in config.targets)}:
            self._meter_for(api)

    def _new_meter(self, action: str, qps: float, *, adaptive: bool) -> RateMeter:
        """A meter for ``action``'s budget: shared with the fleet when there is one."""
        limits, cluster, fleet = self._config.limits, self._config.cluster, self._fleet
        margin_s = limits.window_margin_ms / 1000.0
        if fleet is not None and cluster is not None and cluster.share_budget:
            return fleet.meter(action, qps, margin_s=margin_s, adaptive=adaptive)
        return PacedRateLimiter(qps, margin_s=margin_s, clock=self._clock, adaptive=adaptive)

    def _meter_for(self, api: str) -> RateMeter:
        meter = self._meters.get(api)
        if meter is None:
            limits = self._config.limits
            meter = self._new_meter(api, limits.qps_of(api), adaptive=limits.adaptive)
            self._meters[api] = meter
        return meter

    def _shared_for(self, api: str) -> SharedMeter:
        shared = self._shared.get(api)
        if shared is None:
            shared = self._shared[api] = SharedMeter(
                self._meter_for(api), min_share=self._config.lookups.min_share, clock=self._clock
            )
        return shared

    def _discovery_meter_for(self, list_action: str) -> RateMeter:
        meter = self._discovery_meters.get(list_action)
        if meter is None:
            qps = self._config.limits.discovery_qps
            meter = self._discovery_meters[list_action] = self._new_meter(
                list_action, qps, adaptive=True
            )
        return meter

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = _State.CLOSED
        try:
            for lookup in list(self._lookups):
                await lookup.aclose()  # each leaves self._lookups as it closes
        finally:
            fleet, self._fleet = self._fleet, None
            client, self._client = self._client, None
            try:
                if fleet is not None:
                    await fleet.aclose()
            finally:
                if client is not None:
                    await client.aclose()

    async def _open_client(self, config: PollerConfig, creds: SigningCredentials) -> LiveClient:
        client = LiveClient(
            config.api, creds, max_connections=config.limits.max_in_flight, clock=self._clock
        )
        return await client.__aenter__()

    async def reconfigure(self, config: PollerConfig) -> None:
        """Apply a new config between sweeps; on an error the running config stays in force.

        A changed API section, credentials or in-flight limit opens a new client (then closes
        the old one, once the lookup batches in flight on it are answered); changed limits
        re-rate the meters without forgetting what they granted (so no burst crosses the
        change); changed retry settings start a new budget; ``[lookups] min_share`` applies at
        once."""
        self._require_open()
        if self.current is not None and self.current.finished_at is None:
            raise RuntimeError("reconfigure() between sweeps only")
        old = self._config
        if config.cluster != old.cluster:
            raise ConfigError("a changed [cluster] section takes effect at the next start")
        if self._fetcher is None and (
            (config.api, config.credentials, config.limits.max_in_flight)
            != (old.api, old.credentials, old.limits.max_in_flight)
        ):
            creds = self._credentials or resolve_credentials(config.credentials)
            client = await self._open_client(config, creds)  # raises before anything changed
            previous, self._client = self._client, client
            if previous is not None:
                # Lookup batches in flight (and their retries) finish on the old client.
                for lookup in list(self._lookups):
                    await lookup.settled()
                await previous.aclose()
        limits = config.limits
        if limits != old.limits:
            margin_s = limits.window_margin_ms / 1000.0
            retune: list[tuple[RateMeter, float, bool]] = [
                (meter, limits.discovery_qps, True) for meter in self._discovery_meters.values()
            ]
            for api, meter in self._meters.items():
                if api == LEGACY_API and not self._own_meter:
                    continue  # a meter given by the caller is the caller's to retune
                retune.append((meter, limits.qps_of(api), limits.adaptive))
            for meter, qps, adaptive in retune:
                if isinstance(meter, Retunable):
                    meter.reconfigure(qps, margin_s=margin_s, adaptive=adaptive)
            self._inflight = asyncio.Semaphore(limits.max_in_flight)
        for shared in self._shared.values():
            shared.min_share = config.lookups.min_share
        if config.retry != old.retry:
            self._retrier.configure(config.retry.policy(), config.retry.budget())
        self._config = config

    def request_stop(self) -> None:
        """Stop starting requests; in-flight ones finish, unsent UIDs get ``Cancelled`` records."""
        self._control.stopping = True

    def abort_in_flight(self) -> None:
        """Cancel requests still in flight (after a drain timeout); their UIDs get ``Cancelled``."""
        self._control.abort()

    @property
    def config(self) -> PollerConfig:
        return self._config

    @property
    def client(self) -> LiveClient | None:
        """The HTTP client (``None`` when a custom fetcher was given)."""
        return self._client

    @property
    def clock(self) -> SkewedClock:
        """The corrected clock: ``clock.offset_s`` is the learned server time minus local time."""
        return self._clock

    @property
    def fleet(self) -> Fleet | None:
        """This process's membership of a fleet (``[cluster]``), else None."""
        return self._fleet

    @property
    def rate_meter(self) -> RateMeter:
        """The meter of ``BatchGetOnlineUsers`` (see :meth:`meter_for` for the others)."""
        return self.meter_for(LEGACY_API)

    def meter_for(self, api: str) -> RateMeter:
        """The rate meter of presence action ``api`` (each action has its own budget)."""
        self._require_open()
        return self._meter_for(api)

    def _require_open(self) -> None:
        if self._state is not _State.OPEN:
            raise RuntimeError("Poller used outside 'async with'")

    def _dispatch(self, event: Attempt) -> None:
        stats = self.current
        if stats is not None and event.sweep == stats.sweep:
            stats.on_attempt(event)
        if self._on_attempt is not None:
            self._on_attempt(event)

    # -- public sweeps --------------------------------------------------------------------

    async def sweep(
        self, target: Target | tuple[str, str], uids: UidInput
    ) -> AsyncIterator[Record]:
        """One sweep over one target: yields exactly one record per distinct input UID."""
        if isinstance(target, tuple):
            target = Target(*target)
        async with contextlib.aclosing(self.sweep_batches([(target, uids)])) as batches:
            async for records in batches:
                for record in records:
                    yield record

    async def sweep_batches(
        self,
        work: Sequence[Work],
        *,
        number: int | None = None,
        keep: Callable[[str], bool] | None = None,
    ) -> AsyncGenerator[list[Record], None]:
        """One sweep over several targets (their batches interleave), as lists of records.

        ``number`` numbers the sweep (it must exceed the last one; default: the next number),
        as a fleet member does with sweeps aligned on the fleet's clock. With ``keep``, only
        the UIDs it accepts are polled (a fleet member's shards); the others get no record.

        Raises the fatal error (e.g. :class:`~poller.core.errors.AuthError`) at the end if one
        stopped the sweep; every UID still got its record before that.
        """
        self._require_open()
        fetcher = self._fetcher or self._client
        assert fetcher is not None and self._inflight is not None
        if number is not None:
            if number <= self._sweeps:
                raise ValueError(f"sweep number {number} must exceed the last, {self._sweeps}")
            self._sweeps = number
        else:
            self._sweeps += 1
        stats = SweepStats(sweep=self._sweeps, started_at=self._clock.monotonic())
        deadline_s = self._config.sweep.deadline_s
        ctx = SweepContext(
            stats=stats,
            deadline=stats.started_at + deadline_s if deadline_s > 0 else None,
            fetcher=fetcher,
            retrier=self._retrier,
            meters={api: self._shared_for(api).sweeps for api in {t.api for t, _ in work}},
            clock=self._clock,
            control=self._control,
            keep=keep,
        )
        self.current = stats
        opened_before = self._connections_opened()
        queue: RecordQueue = asyncio.Queue(self._config.sweep.queue_size)
        task = asyncio.create_task(
            self._produce(ctx, work, queue), name=f"poller-sweep-{stats.sweep}"
        )
        try:
            while (item := await queue.get()) is not None:
                yield item
            await task  # re-raises what stopped the producer, if anything
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            stats.finished_at = self._clock.monotonic()
            stats.connections_opened = self._connections_opened() - opened_before
            self.last = stats
        if stats.fatal is not None:
            raise stats.fatal

    async def _produce(self, ctx: SweepContext, work: Sequence[Work], queue: RecordQueue) -> None:
        assert self._inflight is not None
        try:
            await run_sweep(ctx, work, self._config.sweep, self._inflight, queue)
        except asyncio.CancelledError:
            raise  # the consumer went away; nobody waits for the end marker
        except BaseException:
            await queue.put(None)  # the consumer is draining, so this cannot block for long
            raise
        await queue.put(None)

    def _connections_opened(self) -> int:
        client = self._client
        opened = client.connections_opened if client is not None else None
        return opened or 0

    async def run_once(self, work: Sequence[Work], sinks: Iterable[Sink]) -> SweepStats:
        """One sweep written to ``sinks`` (flushed at the end). Returns its counters."""
        sinks = list(sinks)
        try:
            async with contextlib.aclosing(self.sweep_batches(work)) as batches:
                async for records in batches:
                    for sink in sinks:
                        await sink.write(records)
        finally:
            for sink in sinks:
                await sink.flush()
        assert self.last is not None
        return self.last

    def lookup(
        self,
        target: Target | tuple[str, str],
        *,
        linger_ms: float | None = None,
        cache_ttl_s: float | None = None,
        timeout_s: float | None = None,
        cache_size: int | None = None,
        max_pending: int | None = None,
        listener: LookupListener | None = None,
    ) -> Lookup:
        """A handle answering questions about single UIDs of ``target``, coalesced into
        batches on the rate meter the sweeps use (see :mod:`poller.engine.lookup`)::

            lookup = poller.lookup(Target("app", "group"), cache_ttl_s=1)
            record = await lookup.get("u1")  # {"type": "presence", "online": True, ...}

        Unset arguments come from ``[lookups]``. While lookups have questions waiting they are
        sure of ``[lookups] min_share`` of the action's budget; the sweeps keep the rest. The
        handle closes with the poller (or earlier: ``await lookup.aclose()``).
        """
        self._require_open()
        if isinstance(target, tuple):
            target = Target(*target)
        defaults = self._config.lookups
        lookup = Lookup(
            target,
            fetcher=self._current_fetcher,
            retrier=self._retrier,
            meter=self._shared_for(target.api).lookups,
            inflight=self._current_inflight,
            clock=self._clock,
            linger_s=(defaults.linger_ms if linger_ms is None else linger_ms) / 1000.0,
            cache_ttl_s=defaults.cache_ttl_s if cache_ttl_s is None else cache_ttl_s,
            timeout_s=defaults.timeout_s if timeout_s is None else timeout_s,
            cache_size=defaults.cache_size if cache_size is None else cache_size,
            max_pending=defaults.max_pending if max_pending is None else max_pending,
            max_uid_bytes=self._config.sweep.max_uid_bytes,
            listener=listener,
            on_close=self._lookups.discard,
        )
        self._lookups.add(lookup)
        return lookup

    def _current_fetcher(self) -> BatchFetcher:
        fetcher = self._fetcher or self._client
        assert fetcher is not None
        return fetcher

    def _current_inflight(self) -> asyncio.Semaphore:
        assert self._inflight is not None
        return self._inflight

    async def discover(self, target: Target) -> list[str]:
        """The members of ``target``'s group, listed page by page through the retry loop on
        the discovery budget of its list action (``limits.discovery_qps``). Raises the error of
        a page that still fails after retries."""
        self._require_open()
        if self._client is None:
            raise ConfigError(f"cannot discover the members of {target} without an API client")
        meter = self._discovery_meter_for(api_spec(target.api).list_action)
        return await discover_members(self._client, target, self._retrier, meter)
