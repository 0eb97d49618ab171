"""The durable spool of undelivered payloads: order, acks, restarts, torn writes, overflow."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import sys
import tempfile
import textwrap
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.engine.spool import (
    ENTRY_OVERHEAD,
    SEGMENT_MAGIC,
    Entry,
    Spool,
    SpoolError,
    SpoolLocked,
)
from tests.conftest import FakeClock

MB = 2**20


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


async def drain(spool: Spool) -> list[Entry]:
    """Peek and ack every entry, oldest first."""
    out: list[Entry] = []
    while (entry := await spool.peek()) is not None:
        out.append(entry)
        await spool.ack(entry.seq)
    return out


def sink_logs(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "poller.sinks" and r.levelno == level
    ]


# -- order, acks, restarts -----------------------------------------------------------------


async def test_put_peek_ack_in_order(tmp_path: Path, fake_clock: FakeClock) -> None:
    async with Spool(tmp_path / "spool", max_bytes=MB, clock=fake_clock) as spool:
        assert await spool.peek() is None
        assert (spool.entries, spool.size_bytes, spool.oldest_age_s) == (0, 0, 0.0)
        payloads = [f"batch {i}".encode() * (i + 1) for i in range(20)]
        for p in payloads:
            await spool.put(p)
        assert spool.entries == 20
        assert spool.size_bytes == sum(ENTRY_OVERHEAD + len(p) for p in payloads)
        first = await spool.peek()
        assert first is not None
        assert await spool.peek() == first  # peek leaves it in place
        entries = await drain(spool)
        assert [e.payload for e in entries] == payloads
        assert [e.seq for e in entries] == list(range(1, 21))
        assert (spool.entries, spool.size_bytes) == (0, 0)
        await spool.put(b"")  # an empty payload is an entry too
        assert await spool.peek() == Entry(21, b"", fake_clock.time())


async def test_ack_is_cumulative_and_ignores_entries_already_gone(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=MB) as spool:
        for i in range(5):
            await spool.put(b"%d" % i)
        await spool.ack(3)
        entry = await spool.peek()
        assert entry is not None and (entry.seq, entry.payload) == (4, b"3")
        await spool.ack(2)  # already acked: nothing happens
        assert spool.entries == 2
        with pytest.raises(ValueError, match="no entry 6"):
            await spool.ack(6)
        assert spool.entries == 2


async def test_reopen_keeps_undelivered_entries_and_the_ack_position(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    directory = tmp_path / "spool"
    async with Spool(directory, max_bytes=MB, clock=fake_clock, segment_bytes=100) as spool:
        for i in range(10):
            await spool.put(b"payload %d" % i)
            fake_clock.now += 1
        await spool.ack(4)
        size = spool.size_bytes
    async with Spool(directory, max_bytes=MB, clock=fake_clock, segment_bytes=100) as spool:
        assert (spool.entries, spool.size_bytes) == (6, size)
        assert spool.oldest_age_s == 6.0  # put at t=4, now t=10: created_at is kept
        entry = await spool.peek()
        assert entry is not None and (entry.seq, entry.payload) == (5, b"payload 4")
        await spool.ack(5)
        await spool.put(b"after restart")
    async with Spool(directory, max_bytes=MB, segment_bytes=100) as spool:
        entries = await drain(spool)
    assert [e.payload for e in entries] == [b"payload %d" % i for i in range(5, 10)] + [
        b"after restart"
    ]
    assert [e.seq for e in entries] == list(range(6, 12))


async def test_delivered_segments_are_deleted(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=MB, segment_bytes=200) as spool:
        for _ in range(20):
            await spool.put(bytes(50))
        assert len(segments(tmp_path)) == 7
        await spool.ack(10)
        assert len(segments(tmp_path)) == 4  # the ones wholly acked are gone
        await drain(spool)
        assert len(segments(tmp_path)) == 1  # still being appended to
        assert (spool.entries, spool.size_bytes) == (0, 0)
    assert segments(tmp_path) == []  # nothing left to deliver: the last one goes at close
    async with Spool(tmp_path, max_bytes=MB) as spool:
        await spool.put(b"next")
        entry = await spool.peek()
        assert entry is not None and (entry.seq, entry.payload) == (
            21,
            b"next",
        )  # numbering goes on


async def test_unacked_entry_is_delivered_again_after_a_restart(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=MB) as spool:
        await spool.put(b"a")
        await spool.put(b"b")
        assert (await spool.peek()) is not None  # delivered, but the process dies before ack
    async with Spool(tmp_path, max_bytes=MB) as spool:
        assert [e.payload for e in await drain(spool)] == [b"a", b"b"]


async def test_directory_is_private_and_clock_is_injected(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    directory = tmp_path / "a" / "spool"
    async with Spool(directory, max_bytes=MB, clock=fake_clock) as spool:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        await spool.put(b"x")
        fake_clock.now += 2.5
        await spool.put(b"y")
        fake_clock.now += 1
        assert spool.oldest_age_s == 3.5
        entry = await spool.peek()
        assert entry is not None and entry.created_at == fake_clock.time() - 3.5
        await spool.ack(entry.seq)
        assert spool.oldest_age_s == 1.0
        await spool.ack(2)
        assert spool.oldest_age_s == 0.0


async def test_fsync_off(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=MB, fsync=False) as spool:
        for i in range(3):
            await spool.put(b"%d" % i)
        await spool.ack(1)
    async with Spool(tmp_path, max_bytes=MB, fsync=False) as spool:
        assert [e.payload for e in await drain(spool)] == [b"1", b"2"]


async def test_calls_need_an_open_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=MB)
    with pytest.raises(RuntimeError, match="not open"):
        await spool.put(b"x")
    await spool.aclose()  # closing a spool that never opened is fine
    await spool.open()
    await spool.open()  # so is opening twice
    await spool.aclose()
    await spool.aclose()
    with pytest.raises(RuntimeError, match="not open"):
        await spool.peek()


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Spool(Path("x"), max_bytes=ENTRY_OVERHEAD)
    with pytest.raises(ValueError, match="segment_bytes"):
        Spool(Path("x"), max_bytes=MB, segment_bytes=0)


# -- one directory, one spool ----------------------------------------------------------------


async def test_a_second_spool_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=MB) as spool:
        await spool.put(b"x")
        other = Spool(tmp_path, max_bytes=MB)
        with pytest.raises(SpoolLocked) as info:
            await other.open()
        assert str(tmp_path) in str(info.value)
        assert f"pid {os.getpid()}" in str(info.value)
        assert isinstance(info.value, SpoolError)
        await other.aclose()
        await spool.put(b"y")  # the first one is unaffected
    async with Spool(tmp_path, max_bytes=MB) as spool:  # released at close
        assert spool.entries == 2


async def test_a_directory_that_cannot_be_created_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SpoolError, match="cannot use spool directory"):
        await Spool(tmp_path / "file" / "spool", max_bytes=MB).open()


# -- torn writes and damage ----------------------------------------------------------------


async def fill(directory: Path, count: int) -> list[bytes]:
    """``count`` entries of 74 bytes (50 of payload) in one segment."""
    payloads = [b"entry-%03d-" % i + bytes(range(i, i + 40)) for i in range(count)]
    async with Spool(directory, max_bytes=MB) as spool:
        for p in payloads:
            await spool.put(p)
    return payloads


@pytest.mark.parametrize("cut", [1, 10, 50, 51, 60, 73])
async def test_a_torn_last_entry_is_cut_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cut: int
) -> None:
    payloads = await fill(tmp_path, 5)
    [seg] = segments(tmp_path)
    size = seg.stat().st_size
    os.truncate(seg, size - cut)  # the last entry (74 bytes) lost its last `cut` bytes
    with caplog.at_level(logging.WARNING, logger="poller.sinks"):
        async with Spool(tmp_path, max_bytes=MB) as spool:
            assert spool.entries == 4
            assert seg.stat().st_size == size - 74
            await spool.put(b"new")  # in a new segment
            entries = await drain(spool)
    assert [e.payload for e in entries] == [*payloads[:4], b"new"]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    [warning] = sink_logs(caplog)
    assert str(seg) in warning and f"cut off its last {74 - cut} bytes" in warning


@pytest.mark.parametrize(
    "garbage",
    [b"\x00", b"\x00" * 100, b"\xff" * 24 + b"junk", os.urandom(3000), b"\x05\x00\x00\x00" * 9],
)
async def test_garbage_at_the_end_is_never_delivered(tmp_path: Path, garbage: bytes) -> None:
    payloads = await fill(tmp_path, 3)
    [seg] = segments(tmp_path)
    with seg.open("ab") as f:
        f.write(garbage)
    async with Spool(tmp_path, max_bytes=MB) as spool:
        assert [e.payload for e in await drain(spool)] == payloads


async def test_a_damaged_last_entry_fails_its_crc_and_is_dropped(tmp_path: Path) -> None:
    payloads = await fill(tmp_path, 3)
    [seg] = segments(tmp_path)
    with seg.open("r+b") as f:
        f.seek(-5, os.SEEK_END)
        f.write(b"XXXXX")
    async with Spool(tmp_path, max_bytes=MB) as spool:
        assert [e.payload for e in await drain(spool)] == payloads[:2]


async def test_torn_segment_creation_is_cleaned_up(tmp_path: Path) -> None:
    payloads = await fill(tmp_path, 2)
    (tmp_path / f"{100:020d}.seg").write_bytes(b"")
    (tmp_path / f"{101:020d}.seg").write_bytes(SEGMENT_MAGIC[:3])
    (tmp_path / f"{102:020d}.seg").write_bytes(SEGMENT_MAGIC)
    (tmp_path / "ack.tmp").write_bytes(b"half")
    async with Spool(tmp_path, max_bytes=MB) as spool:
        assert [p.name for p in segments(tmp_path)] == [f"{1:020d}.seg"]
        assert not (tmp_path / "ack.tmp").exists()
        assert [e.payload for e in await drain(spool)] == payloads


async def test_a_damaged_ack_file_means_delivering_everything_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    payloads = await fill(tmp_path, 4)
    async with Spool(tmp_path, max_bytes=MB) as spool:
        await spool.ack(2)
    (tmp_path / "ack").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="poller.sinks"):
        async with Spool(tmp_path, max_bytes=MB) as spool:
            assert [e.payload for e in await drain(spool)] == payloads
    assert any("ack file" in m for m in sink_logs(caplog))


async def test_a_foreign_segment_is_an_error_and_is_left_alone(tmp_path: Path) -> None:
    seg = tmp_path / f"{1:020d}.seg"
    seg.write_bytes(b"not a spool segment")
    with pytest.raises(SpoolError, match="not a poller spool segment"):
        await Spool(tmp_path, max_bytes=MB).open()
    assert seg.read_bytes() == b"not a spool segment"
    seg.unlink()
    async with Spool(tmp_path, max_bytes=MB) as spool:  # the failed open released the lock
        assert spool.entries == 0


async def test_damage_found_at_peek_drops_the_rest_of_that_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Spool(tmp_path, max_bytes=MB, segment_bytes=140) as spool:
        payloads = [b"%d" % i * 20 for i in range(6)]  # 3 entries of 44 bytes per segment
        for p in payloads:
            await spool.put(p)
        first = segments(tmp_path)[0]
        with first.open("r+b") as f:  # the disk changes under the spool: entry 2's payload
            f.seek(len(SEGMENT_MAGIC) + 44 + ENTRY_OVERHEAD)
            f.write(b"?")
        with caplog.at_level(logging.WARNING, logger="poller.sinks"):
            entries = await drain(spool)
        assert [e.payload for e in entries] == [payloads[0], *payloads[3:]]
        assert (spool.dropped_entries, spool.dropped_bytes) == (2, 88)
        [warning] = sink_logs(caplog)
        assert "fails its CRC" in warning and str(first) in warning


# -- kill -9 -------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from poller.engine.spool import Spool

    def payload(round_: int, i: int) -> bytes:
        return b"%d:%d:" % (round_, i) + bytes([i % 251]) * ((i * 7919) % 30000)

    async def main() -> None:
        round_ = int(sys.argv[2])
        spool = Spool(Path(sys.argv[1]), max_bytes=1 << 30, segment_bytes=1 << 20)
        await spool.open()
        i = 0
        while True:
            await spool.put(payload(round_, i))
            sys.stdout.write(f"{i}\\n")
            sys.stdout.flush()
            i += 1

    asyncio.run(main())
    """
)


def child_payload(round_: int, i: int) -> bytes:
    return b"%d:%d:" % (round_, i) + bytes([i % 251]) * ((i * 7919) % 30000)


@pytest.mark.slow
@pytest.mark.parametrize("round_", [0, 1, 2])
async def test_kill_9_while_appending_loses_nothing_that_was_put(
    tmp_path: Path, round_: int
) -> None:
    directory = tmp_path / "spool"
    for r in range(round_ + 1):  # later rounds restart on a spool a killed child used
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            str(directory),
            str(r),
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
        )
        assert proc.stdout is not None
        reported: list[int] = []
        try:
            async with asyncio.timeout(60):
                while len(reported) < 150 + 37 * r:
                    line = await proc.stdout.readline()
                    assert line, "the child died"
                    reported.append(int(line))
        finally:
            proc.send_signal(signal.SIGKILL)
            rest = await proc.stdout.read()
            await proc.wait()
        assert proc.returncode == -signal.SIGKILL
        reported += [int(n) for n in rest.split()]
        async with Spool(directory, max_bytes=1 << 30) as spool:
            entries = await drain(spool)
        indexes = [int(e.payload.split(b":")[1]) for e in entries]
        # every reported put is there, in order; at most the one in flight besides
        assert indexes == list(range(len(indexes)))
        assert len(reported) <= len(indexes) <= len(reported) + 1
        assert all(e.payload == child_payload(r, i) for e, i in zip(entries, indexes, strict=True))
        assert [e.seq for e in entries] == sorted({e.seq for e in entries})


# -- overflow ------------------------------------------------------------------------------


async def test_overflow_drops_the_oldest_and_counts_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame = ENTRY_OVERHEAD + 76  # 100 bytes per entry
    with caplog.at_level(logging.INFO, logger="poller.sinks"):
        async with Spool(tmp_path, max_bytes=1000, segment_bytes=300) as spool:
            for i in range(25):
                await spool.put(b"%02d" % i * 38)
            assert (spool.entries, spool.size_bytes) == (10, 1000)
            assert (spool.dropped_entries, spool.dropped_bytes) == (15, 15 * frame)
            [warning] = sink_logs(caplog)  # once per overflow episode
            assert "is full" in warning and "oldest" in warning
            entry = await spool.peek()
            assert entry is not None and entry.payload == b"15" * 38
            await spool.ack(entry.seq + 4)  # 5 left: at half of max_bytes, the episode ends
            [info] = [m for m in sink_logs(caplog, logging.INFO) if "dropped" in m]
            assert "15 entries (1500 bytes) were dropped" in info
            for i in range(25, 32):  # a second episode: logged again
                await spool.put(b"%02d" % i * 38)
            assert len(sink_logs(caplog)) == 2
            assert spool.dropped_entries == 17
            assert [e.payload[:2] for e in await drain(spool)] == [
                b"%02d" % i for i in range(22, 32)
            ]
        assert segments(tmp_path) == []


async def test_overflow_can_empty_the_spool_for_one_big_payload(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=1000, segment_bytes=150) as spool:
        for _ in range(9):
            await spool.put(bytes(76))
        await spool.put(bytes(1000 - ENTRY_OVERHEAD))  # exactly max_bytes: all else goes
        assert (spool.entries, spool.size_bytes, spool.dropped_entries) == (1, 1000, 9)
        assert len(segments(tmp_path)) == 1
    async with Spool(tmp_path, max_bytes=1000) as spool:
        assert [len(e.payload) for e in await drain(spool)] == [1000 - ENTRY_OVERHEAD]


async def test_a_stale_ack_after_an_overflow_does_nothing(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=200) as spool:
        await spool.put(bytes(50))
        entry = await spool.peek()  # being delivered ...
        assert entry is not None
        await spool.put(bytes(50))
        await spool.put(bytes(50))  # ... while an overflow drops it
        assert spool.dropped_entries == 1
        await spool.ack(entry.seq)
        assert spool.entries == 2


async def test_a_payload_larger_than_the_spool_is_refused(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=1000) as spool:
        await spool.put(b"kept")
        with pytest.raises(ValueError, match="1000 bytes cannot fit"):
            await spool.put(bytes(1000))
        with pytest.raises(ValueError, match="cannot fit"):
            await spool.put(bytes(1000 - ENTRY_OVERHEAD + 1))
        assert (spool.entries, spool.dropped_entries) == (1, 0)


async def test_a_lowered_limit_cuts_the_spool_down_at_open(tmp_path: Path) -> None:
    payloads = await fill(tmp_path, 10)  # 74 bytes each
    async with Spool(tmp_path, max_bytes=300) as spool:
        assert (spool.entries, spool.dropped_entries) == (4, 6)
        assert spool.size_bytes == 4 * 74
        assert [e.payload for e in await drain(spool)] == payloads[6:]


# -- cancellation --------------------------------------------------------------------------


async def test_a_cancelled_put_leaves_the_spool_consistent(tmp_path: Path) -> None:
    async with Spool(tmp_path, max_bytes=MB) as spool:
        task = asyncio.create_task(spool.put(bytes(100_000)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await spool.put(b"after")
        entries = await drain(spool)
        assert entries[-1].payload == b"after"
        assert len(entries) in (1, 2)
        assert spool.size_bytes == 0


# -- against a model -----------------------------------------------------------------------

MAX = 1000

op = st.one_of(
    st.tuples(st.just("put"), st.one_of(st.integers(0, 250), st.integers(MAX - 30, MAX))),
    st.tuples(st.just("peek"), st.just(0)),
    st.tuples(st.just("ack"), st.integers(0, 5)),
    st.tuples(st.just("ack_old"), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0)),
    st.tuples(st.just("garbage"), st.integers(1, 200)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=60), segment_bytes=st.sampled_from([1, 120, 400, 5000]))
def test_against_a_list_model(ops: list[tuple[str, int]], segment_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run_model(Path(tmp), ops, segment_bytes))


async def run_model(directory: Path, ops: list[tuple[str, int]], segment_bytes: int) -> None:
    clock = FakeClock()
    model: deque[Entry] = deque()
    next_seq, dropped = 1, [0, 0]

    def new() -> Spool:
        return Spool(
            directory, max_bytes=MAX, fsync=False, clock=clock, segment_bytes=segment_bytes
        )

    spool = new()
    await spool.open()
    try:
        for n, (name, arg) in enumerate(ops):
            clock.now += 1
            if name == "put":
                payload = (n.to_bytes(2, "little") * arg)[:arg]
                frame = ENTRY_OVERHEAD + arg
                if frame > MAX:
                    with pytest.raises(ValueError):
                        await spool.put(payload)
                    continue
                await spool.put(payload)
                while sum(ENTRY_OVERHEAD + len(e.payload) for e in model) + frame > MAX:
                    gone = model.popleft()
                    dropped[0] += 1
                    dropped[1] += ENTRY_OVERHEAD + len(gone.payload)
                model.append(Entry(next_seq, payload, clock.time()))
                next_seq += 1
            elif name == "peek":
                assert await spool.peek() == (model[0] if model else None)
            elif name == "ack":
                if model:
                    k = min(arg, len(model) - 1)
                    seq = model[k].seq
                    await spool.ack(seq)
                    for _ in range(k + 1):
                        model.popleft()
                elif next_seq > 1:
                    await spool.ack(next_seq - 1)
            elif name == "ack_old":
                await spool.ack(model[0].seq - 1 if model else next_seq - 1)
            else:
                await spool.aclose()
                if name == "garbage" and (segs := segments(directory)):
                    with segs[-1].open("ab") as f:
                        f.write(bytes(range(256))[:arg])
                spool = new()
                await spool.open()
                dropped = [0, 0]
            assert spool.entries == len(model)
            assert spool.size_bytes == sum(ENTRY_OVERHEAD + len(e.payload) for e in model)
            assert spool.oldest_age_s == (clock.time() - model[0].created_at if model else 0.0)
            assert [spool.dropped_entries, spool.dropped_bytes] == dropped
        assert await drain(spool) == list(model)
    finally:
        await spool.aclose()
    assert segments(directory) == []
