"""The webhook sink: records POSTed as signed JSON batches, through a durable spool.

Written records are gathered into batches of ``max_batch``; each whole batch, and at
``flush`` (the end of a sweep) the partial one, goes into a spool on disk
(:class:`~poller.engine.spool.Spool`): polling never waits for the receiver. A delivery task
sends the spool's oldest batch, and removes it only once the receiver answered 2xx, so batches
arrive in order and at least once, across receiver outages and poller restarts (``kill -9``
included: what was in the spool is sent after the restart; what was not flushed yet was not
saved in the daemon's state either, and is decided again).

The request::

    POST <url>
    Content-Type: application/json
    X-Poller-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
    X-Poller-Batch: <the spool's sequence number of the batch>

    {"records": [{...record..., "idempotency_key": "..."}, ...]}

``idempotency_key`` identifies a record across re-deliveries and fleet members:
``change:<api>/<app_id>/<group_id>/<uid>:<version>`` for a change (the transition's version),
``presence:<...>/<uid>:<sweep>`` and ``error:<...>/<uid>:<sweep>`` for the others (the group
empty for an app-wide target). A receiver verifies the signature with
:func:`poller.wire.webhook.verify` (or its own HMAC) and de-duplicates by the key.

Answers: 2xx delivered; 408, 429, 5xx, timeouts and connection errors are retried with
exponential backoff and full jitter (a ``Retry-After`` is honoured, up to
:data:`MAX_RETRY_AFTER_S`); any other 4xx is not retried: the batch is dropped and the receiver's
answer logged. The spool is bounded (``spool_max_mb``): past it the *oldest* undelivered
batches are dropped, counted and logged (the newest presence matters most).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from poller.config import SinkConfig, env_secret, mask_url
from poller.core.clock import Clock, parse_http_date, system_clock
from poller.core.errors import ConfigError
from poller.core.records import Record
from poller.wire.client import tls_context
from poller.wire.webhook import SIGNATURE_HEADER, WebhookClient, WebhookUnreachable, sign

from .spool import Spool, SpoolError

__all__ = ["WebhookSink", "WebhookStats", "idempotency_key", "open_webhook"]

log = logging.getLogger("poller.sinks")

BATCH_HEADER: Final = "X-Poller-Batch"
#: A ``Retry-After`` longer than this is capped.
MAX_RETRY_AFTER_S: Final = 300.0
BACKOFF_BASE_S: Final = 0.5
BACKOFF_CAP_S: Final = 15.0
#: A receiver failing for this long is a WARNING (shorter failures are logged at INFO).
FAILING_WARN_S: Final = 30.0


def idempotency_key(record: Record) -> str:
    """A record's identity across re-deliveries and fleet members (module docstring)."""
    where = f"{record['api']}/{record['app_id']}/{record['group_id'] or ''}/{record['uid']}"
    if record["type"] == "change":
        return f"change:{where}:{record['version']}"
    return f"{record['type']}:{where}:{record['sweep']}"


@dataclass(slots=True)
class WebhookStats:
    """Counters of one webhook sink (metrics read them)."""

    delivered_records: int = 0
    delivered_batches: int = 0
    retried: int = 0
    rejected_records: int = 0  # a 4xx other than 408/429: dropped, logged
    lost_records: int = 0  # could not be written to the spool (a full or failing disk)


_ENV: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: str, key: str) -> str:
    def var(match: re.Match[str]) -> str:
        name = match[1]
        if name not in os.environ:
            raise ConfigError(f"environment variable {name} is not set", key=key)
        return os.environ[name]

    return _ENV.sub(var, value)


def webhook_secret(config: SinkConfig) -> str:
    if config.secret_env:
        return env_secret(config.secret_env, key="secret_env")
    return config.secret


class WebhookSink:
    """POSTs records to ``config.url``; see the module docstring. Open it with :meth:`open`
    (done by the first ``write``); ``aclose`` stops delivering and keeps what is left."""

    #: Its metrics, ``poller_webhook_<name>{sink}`` (counters get ``_total``).
    metrics_prefix: Final = "poller_webhook"
    metrics: Final = (
        ("delivered_records", "counter", "Records the receiver acknowledged (2xx)."),
        (
            "retries",
            "counter",
            "Delivery attempts that failed and are retried (5xx, 408, 429, timeouts, errors).",
        ),
        ("rejected_records", "counter", "Records the receiver refused with another 4xx."),
        ("lost_records", "counter", "Records that could not be written to the spool (disk)."),
        (
            "dropped_batches",
            "counter",
            "Undelivered batches dropped, oldest first, at the spool's bound (spool_max_mb).",
        ),
        ("spooled_bytes", "gauge", "Bytes of undelivered records in the spool."),
        ("spooled_batches", "gauge", "Undelivered batches in the spool."),
        ("oldest_undelivered_seconds", "gauge", "Age of the oldest undelivered batch."),
    )

    def __init__(
        self,
        config: SinkConfig,
        *,
        spool: Spool,
        ssl_context: ssl.SSLContext | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = config.url
        self.name = mask_url(config.url)
        self._secret = webhook_secret(config)
        self._headers = {"Content-Type": "application/json"}
        for i, item in enumerate(config.headers):
            name, _, value = item.partition(":")
            self._headers[name.strip()] = _expand(value.strip(), f"headers[{i}]")
        self._max_batch = config.max_batch
        self._drain_s = config.timeout_s
        self._client = WebhookClient(
            config.url, ssl_context=ssl_context, timeout_s=config.timeout_s
        )
        self.spool = spool
        self._clock = clock or system_clock()
        self._rng = rng or random.Random()
        self.stats = WebhookStats()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set when nothing is left to deliver, or an attempt failed
        self._task: asyncio.Task[None] | None = None
        self._opened = False
        self._failing_since: float | None = None
        self._failing_warned = False
        self._pending: list[Record] = []  # written, not yet a whole batch (see flush)

    def __repr__(self) -> str:
        return f"<WebhookSink {self.name}>"

    async def open(self) -> None:
        """Open the spool and start delivering what it holds (from a previous run too)."""
        if self._opened:
            return
        await self.spool.open()
        self._opened = True
        self._client.open()
        self._task = asyncio.create_task(self._deliver(), name="poller-webhook")
        if self.spool.entries:
            log.info(
                "webhook %s: %d batches waiting in the spool from before",
                self.name,
                self.spool.entries,
            )

    # -- the Sink protocol ----------------------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> None:
        """Gather records into batches of ``max_batch``; each full batch goes to the spool (a
        sweep's answers come 20 at a time: one request each would waste the receiver's time)."""
        if not records:
            return
        await self.open()
        self._pending.extend(records)
        while len(self._pending) >= self._max_batch:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            await self._spool_batch(batch)

    async def flush(self) -> None:
        """Spool the last, partial batch: after a flush every record written is on disk (the
        daemon saves its state only after flushing, so a crash before loses nothing)."""
        if self._pending:
            batch, self._pending = self._pending, []
            await self._spool_batch(batch)

    async def _spool_batch(self, batch: list[Record]) -> None:
        body = orjson.dumps(
            {"records": [{**r, "idempotency_key": idempotency_key(r)} for r in batch]}
        )
        self._idle.clear()
        try:
            await self.spool.put(b"%d\n" % len(batch) + body)
        except SpoolError as exc:  # a full or failing disk: said loudly, polling goes on
            self.stats.lost_records += len(batch)
            log.error(
                "webhook %s: %d records could not be spooled and are lost: %s",
                self.name,
                len(batch),
                exc,
            )
        self._wake.set()

    async def aclose(self) -> None:
        """Deliver what the spool holds for up to ``timeout_s`` more, until an attempt fails
        (a one-shot run usually ends with everything delivered), then stop; the spool keeps the
        rest for the next start, which says so."""
        await self.flush()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._drain_s):
                    await self._idle.wait()  # the spool is empty, or an attempt failed
        if self._opened and self.spool.entries:
            log.warning(
                "webhook %s: %d batches not delivered yet; they stay in the spool for the next"
                " start",
                self.name,
                self.spool.entries,
            )
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()
        if self._opened:
            self._opened = False
            await self.spool.aclose()

    # -- delivery -------------------------------------------------------------------------------

    async def _deliver(self) -> None:
        attempt = 0
        while True:
            try:
                entry = await self.spool.peek()
            except SpoolError as exc:
                log.error("webhook %s: cannot read the spool: %s", self.name, exc)
                attempt += 1
                await self._clock.sleep(self._backoff(attempt))
                continue
            if entry is None:
                self._wake.clear()
                self._idle.set()
                await self._wake.wait()
                continue
            count_text, _, body = entry.payload.partition(b"\n")
            count = int(count_text)
            self._idle.clear()  # an attempt in flight: a stop waits for its answer
            delay = await self._send(entry.seq, body, count)
            if delay is None:
                try:
                    await self.spool.ack(entry.seq)
                except SpoolError as exc:  # sent again after a restart: at least once
                    log.error("webhook %s: cannot record a delivery: %s", self.name, exc)
                    await self._clock.sleep(self._backoff(1))
                attempt = 0
                continue
            attempt += 1
            self.stats.retried += 1
            self._idle.set()  # a stop need not wait for a failing receiver
            await self._clock.sleep(delay if delay > 0 else self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        cap = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempt, 20))
        return self._rng.uniform(0, cap)

    async def _send(self, seq: int, body: bytes, count: int) -> float | None:
        """One delivery attempt: ``None`` when the batch is done with (delivered or refused
        for good), else the wait before the next attempt (0: the backoff's)."""
        headers = {
            **self._headers,
            SIGNATURE_HEADER: sign(self._secret, int(self._clock.time()), body),
            BATCH_HEADER: str(seq),
        }
        try:
            answer = await self._client.post(body, headers)
        except WebhookUnreachable as exc:
            self._failing(str(exc))
            return 0.0
        status = answer.status
        retry_after = _retry_after(answer.retry_after, self._clock)
        if 200 <= status < 300:
            self.stats.delivered_records += count
            self.stats.delivered_batches += 1
            self._recovered()
            return None
        if status in (408, 429) or status >= 500:
            self._failing(f"HTTP {status}")
            return min(retry_after, MAX_RETRY_AFTER_S) if retry_after else 0.0
        self.stats.rejected_records += count
        log.error(
            "webhook %s refused a batch of %d records with HTTP %d (not retried): %s",
            self.name,
            count,
            status,
            answer.text.strip(),
        )
        return None

    def _failing(self, reason: str) -> None:
        """A failed attempt: INFO at first (a lone 500 is retried and forgotten), one WARNING
        once the receiver has been failing for :data:`FAILING_WARN_S`."""
        now = self._clock.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            log.info("webhook %s: delivery failed (%s); retrying", self.name, reason)
        elif not self._failing_warned and now - self._failing_since >= FAILING_WARN_S:
            self._failing_warned = True
            log.warning(
                "webhook %s: delivery failing for %.0f s (now: %s); records wait in the spool"
                " (%d batches) and are retried",
                self.name,
                now - self._failing_since,
                reason,
                self.spool.entries,
            )

    def _recovered(self) -> None:
        if self._failing_since is not None:
            outage = self._clock.monotonic() - self._failing_since
            level = logging.WARNING if self._failing_warned else logging.INFO
            self._failing_since, self._failing_warned = None, False
            log.log(
                level,
                "webhook %s: delivering again after %.1f s; %d batches still spooled",
                self.name,
                outage,
                self.spool.entries,
            )

    # -- for metrics ----------------------------------------------------------------------------

    def counters(self) -> dict[str, float]:
        """Counters (``*_total``) and gauges of this sink, by metric name."""
        spool, stats = self.spool, self.stats
        return {
            "delivered_records": stats.delivered_records,
            "retries": stats.retried,
            "rejected_records": stats.rejected_records,
            "lost_records": stats.lost_records,
            "dropped_batches": spool.dropped_entries,
            "spooled_bytes": spool.size_bytes,
            "spooled_batches": spool.entries,
            "oldest_undelivered_seconds": spool.oldest_age_s,
        }


def _retry_after(value: str | None, clock: Clock) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), if readable and positive."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        at = parse_http_date(value)
        if at is None:
            return None
        seconds = at - clock.time()
    return seconds if seconds > 0 else None


def open_webhook(
    config: SinkConfig, *, state_dir: Path | None, clock: Clock | None = None
) -> WebhookSink:
    """The webhook sink of a ``[[sinks]]`` entry, its spool in ``spool_dir`` (default: a folder
    of ``state_dir`` named after a hash of the URL, so two webhooks never share one)."""
    spool_dir = config.spool_dir
    if spool_dir is None:
        if state_dir is None:
            raise ConfigError("a webhook sink needs spool_dir here", key="spool_dir")
        digest = hashlib.sha256(config.url.encode()).hexdigest()[:16]
        spool_dir = state_dir / "spool" / f"webhook-{digest}"
    context = None
    if config.url.startswith("https://"):
        context = tls_context(verify=config.verify_tls, ca_file=config.ca_file, key="sinks")
    spool = Spool(spool_dir, max_bytes=int(config.spool_max_mb * 1024 * 1024), clock=clock)
    return WebhookSink(config, spool=spool, ssl_context=context, clock=clock)
