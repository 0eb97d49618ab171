"""One sweep: UID sources in, one record per distinct UID out, into a bounded queue.

Data flow::

    sources ─▶ Batcher (validate, dedupe, cut) ─▶ interleave targets ─▶ in-flight slot
        ─▶ rate slot ─▶ batch task (poller.engine.batch) ─▶ bounded queue ─▶ the consumer

Rate and concurrency are two separate meters, both taken *before* a batch task is spawned, so
live tasks never exceed ``max_in_flight`` whatever the input size. A failed batch is data
(error records); only fatal conditions (credentials rejected, unreadable input) stop a sweep.
The queue is bounded: a slow consumer pauses polling instead of growing memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Sequence
from typing import TypeAlias

from poller.config import SweepConfig
from poller.core.apis import api_spec
from poller.core.batching import COMPACT_AFTER, Batcher, Rejected
from poller.core.clock import epoch_ms
from poller.core.errors import collapse
from poller.core.ratelimit import RateMeter
from poller.core.records import INVALID_USER_ID, Batch, Record, Target, error_record

from .batch import SweepContext, poll_batch
from .sources import UidFile, UidInput, iter_chunks

__all__ = ["RecordQueue", "Work", "run_sweep"]

Work: TypeAlias = tuple[Target, UidInput]
"""One target and where its user IDs come from."""

RecordQueue: TypeAlias = "asyncio.Queue[list[Record] | None]"


async def run_sweep(
    ctx: SweepContext,
    work: Sequence[Work],
    config: SweepConfig,
    inflight: asyncio.Semaphore,
    queue: RecordQueue,
) -> None:
    """Poll every UID of ``work``, putting lists of records on ``queue``.

    The targets of one API action interleave their batches on that action's meter; targets of
    different actions run side by side, each action on its own meter (the cloud budgets each
    action apart), so a slower action never holds a faster one back."""
    by_api: dict[str, list[Work]] = {}
    for item in work:
        by_api.setdefault(item[0].api, []).append(item)
    try:
        async with asyncio.TaskGroup() as tg:
            for api, items in by_api.items():
                tg.create_task(_run_action(ctx, api, items, config, inflight, queue))
    except BaseExceptionGroup as group:
        raise collapse(group) from None


async def _run_action(
    ctx: SweepContext,
    api: str,
    work: Sequence[Work],
    config: SweepConfig,
    inflight: asyncio.Semaphore,
    queue: RecordQueue,
) -> None:
    stream = _interleave([_batches(ctx, target, src, config) for target, src in work])
    try:
        await _spawn_batches(ctx, stream, ctx.meters[api], inflight, queue)
    except BaseExceptionGroup as group:
        raise collapse(group) from None
    finally:
        await stream.aclose()


async def _spawn_batches(
    ctx: SweepContext,
    stream: AsyncGenerator[Batch | Rejected, None],
    meter: RateMeter,
    inflight: asyncio.Semaphore,
    queue: RecordQueue,
) -> None:
    tasks = ctx.control.tasks

    async def run(batch: Batch, waited: float) -> None:
        try:
            await _emit(ctx, queue, await poll_batch(ctx, batch, waited))
        finally:
            inflight.release()

    async with asyncio.TaskGroup() as tg:
        async for item in stream:
            if isinstance(item, Rejected):
                await _emit(ctx, queue, [_rejected_record(ctx, item)])
                continue
            reason = ctx.skip_reason()
            if reason is None:
                await inflight.acquire()
                try:
                    waited = await meter.acquire()
                except BaseException:
                    inflight.release()
                    raise
                reason = ctx.skip_reason()
                if reason is not None:
                    inflight.release()
            if reason is not None:
                await _emit(ctx, queue, ctx.unsent(item, reason))
                continue
            task = tg.create_task(run(item, waited))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def _emit(ctx: SweepContext, queue: RecordQueue, records: list[Record]) -> None:
    ctx.stats.count_records(records)
    await queue.put(records)


async def _batches(
    ctx: SweepContext, target: Target, source: UidInput, config: SweepConfig
) -> AsyncGenerator[Batch | Rejected, None]:
    stats = ctx.stats
    batcher = Batcher(
        target,
        size=api_spec(target.api).batch_size,
        dedupe=config.dedupe,
        max_uid_bytes=config.max_uid_bytes,
        compact=_compact(source) if config.dedupe else False,
    )
    keep = ctx.keep
    try:
        async for chunk in iter_chunks(source):
            uids = chunk.uids
            # A fleet member's share: the others' UIDs are neither seen nor batched here.
            mine = range(len(uids)) if keep is None else [i for i, u in enumerate(uids) if keep(u)]
            stats.uids_seen += len(mine)
            for i in mine:
                out = batcher.add(uids[i])
                if out is None:
                    continue
                if isinstance(out, Rejected) and chunk.lines is not None:
                    out = dataclasses.replace(out, where=chunk.where(i))
                yield out
        last = batcher.flush()
        if last is not None:
            yield last
    finally:
        stats.duplicates_in_input += batcher.duplicates


async def _interleave(
    streams: list[AsyncGenerator[Batch | Rejected, None]],
) -> AsyncGenerator[Batch | Rejected, None]:
    """Round-robin over several batch streams so that no target starves another."""
    active = list(streams)
    try:
        while active:
            for stream in list(active):
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    active.remove(stream)
                    continue
                yield item
    finally:
        for stream in active:
            await stream.aclose()


def _compact(source: UidInput) -> bool | None:
    """How to de-duplicate a source (see :class:`~poller.core.batching.Batcher`)."""
    if isinstance(source, UidFile):
        try:
            # ~16 bytes a line for typical IDs: past COMPACT_AFTER lines, start compact.
            return True if source.path.stat().st_size > 16 * COMPACT_AFTER else None
        except OSError:
            return None
    if isinstance(source, list | tuple):
        return False  # the caller holds these strings anyway: a plain set adds the least
    return None


def _rejected_record(ctx: SweepContext, item: Rejected) -> Record:
    message = item.reason if item.where is None else f"{item.reason} ({item.where})"
    return error_record(
        item.target,
        item.uid,
        INVALID_USER_ID,
        message,
        sweep=ctx.stats.sweep,
        polled_at=epoch_ms(ctx.clock),
    )
