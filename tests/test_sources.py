"""UID sources: lists, (async) iterables, files and stdin, streamed as chunks."""

from __future__ import annotations

import errno
import io
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from poller.core.batching import invalid_reason
from poller.core.errors import ConfigError
from poller.engine import sources
from poller.engine.sources import (
    MAX_LINE_BYTES,
    Chunk,
    Stdin,
    UidFile,
    UidInput,
    iter_chunks,
    read_uid_lines,
)


async def collect(source: UidInput) -> list[Chunk]:
    return [chunk async for chunk in iter_chunks(source)]


def flat(chunks: list[Chunk]) -> list[str]:
    return [uid for chunk in chunks for uid in chunk.uids]


class AsyncUids:
    """An async iterable that is not a generator (nothing left to finalise if abandoned)."""

    def __init__(self, items: Iterator[Any]) -> None:
        self._items = items
        self.pulled = 0

    def __aiter__(self) -> AsyncUids:
        return self

    async def __anext__(self) -> Any:
        try:
            item = next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None
        self.pulled += 1
        return item


# ----------------------------------------------------------------------------------------------
# read_uid_lines

SAMPLE = (
    b"u1\n"  # 1
    b"\n"  # 2 blank
    b"   \t \n"  # 3 blank (whitespace only)
    b"# a comment\n"  # 4
    b"   # an indented comment\n"  # 5
    b"u 2 \r\n"  # 6 trailing space kept, CRLF removed
    b"\tu3\t\n"  # 7 tabs kept (rejected later, not here)
    b"\xe7\x94\xa8\xe6\x88\xb71\n"  # 8 UTF-8
    b"bad\xff\xfeid\n"  # 9 invalid UTF-8
    b"in\rner\n"  # 10 a lone CR is not a line ending
    b"u#4\n"  # 11 '#' not first: an ID
    b"last"  # 12 no final newline
)


def test_read_uid_lines() -> None:
    assert list(read_uid_lines(io.BytesIO(SAMPLE))) == [
        (1, "u1"),
        (6, "u 2 "),
        (7, "\tu3\t"),
        (8, "用户1"),
        (9, "bad\udcff\udcfeid"),
        (10, "in\rner"),
        (11, "u#4"),
        (12, "last"),
    ]


def test_read_uid_lines_only_one_line_ending_removed() -> None:
    data = b"a\r\r\nb\n\nc\r\n"
    assert list(read_uid_lines(io.BytesIO(data))) == [(1, "a\r"), (2, "b"), (4, "c")]


def test_read_uid_lines_empty_stream() -> None:
    assert list(read_uid_lines(io.BytesIO(b""))) == []


# ----------------------------------------------------------------------------------------------
# iter_chunks


async def test_list_source() -> None:
    uids = [f"u{i}" for i in range(10_000)]
    chunks = await collect(uids)
    assert flat(chunks) == uids
    assert len(chunks) > 1
    assert all(chunk.uids for chunk in chunks)
    assert all(chunk.where(0) is None for chunk in chunks)


async def test_small_and_empty_sources() -> None:
    assert flat(await collect(["a", "b"])) == ["a", "b"]
    assert await collect([]) == []
    assert await collect(()) == []
    assert flat(await collect(("x", "x", ""))) == ["x", "x", ""]  # nothing filtered here


async def test_generator_source_is_consumed_lazily() -> None:
    pulled = 0

    def endless() -> Iterator[str]:
        nonlocal pulled
        while True:
            pulled += 1
            yield f"u{pulled}"

    chunks = cast(AsyncGenerator[Chunk, None], iter_chunks(endless()))
    try:
        first = await anext(chunks)
    finally:
        await chunks.aclose()
    assert first.uids[:3] == ["u1", "u2", "u3"]
    assert pulled < 10_000  # streamed: an endless source still yields its first chunk


async def test_generator_source() -> None:
    def gen() -> Iterator[str]:
        yield from (f"g{i}" for i in range(5000))

    assert flat(await collect(gen())) == [f"g{i}" for i in range(5000)]


async def test_async_generator_source() -> None:
    async def agen() -> AsyncIterator[str]:
        for i in range(9000):
            yield f"a{i}"

    chunks = await collect(agen())
    assert flat(chunks) == [f"a{i}" for i in range(9000)]
    assert len(chunks) > 1


async def test_async_source_is_consumed_lazily() -> None:
    def endless() -> Iterator[str]:
        n = 0
        while True:
            n += 1
            yield f"u{n}"

    source = AsyncUids(endless())
    chunks = cast(AsyncGenerator[Chunk, None], iter_chunks(source))
    try:
        first = await anext(chunks)
    finally:
        await chunks.aclose()
    assert first.uids[0] == "u1"
    assert source.pulled < 10_000


async def test_uid_file_source(tmp_path: Path) -> None:
    path = tmp_path / "uids.txt"
    lines: list[str] = []
    expected: list[tuple[str, int]] = []
    for i in range(10_000):
        if i % 100 == 0:
            lines.append("# section")
        elif i % 37 == 0:
            lines.append("")
        else:
            lines.append(f"user-{i}")
            expected.append((f"user-{i}", i + 1))
    path.write_text("\n".join(lines) + "\n", "utf-8")

    chunks = await collect(UidFile(path))
    assert len(chunks) > 1
    got = [(uid, chunk.where(i)) for chunk in chunks for i, uid in enumerate(chunk.uids)]
    assert got == [(uid, f"{path}:{line}") for uid, line in expected]


async def test_uid_file_keeps_ids_exactly(tmp_path: Path) -> None:
    path = tmp_path / "uids.txt"
    path.write_bytes(SAMPLE)
    chunks = await collect(UidFile(path))
    assert flat(chunks) == [uid for _, uid in read_uid_lines(io.BytesIO(SAMPLE))]
    assert chunks[0].where(4) == f"{path}:9"


async def test_missing_uid_file(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "uids.txt"
    with pytest.raises(ConfigError) as info:
        await collect(UidFile(path))
    assert str(path) in str(info.value)


async def test_uid_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        await collect(UidFile(tmp_path))
    assert str(tmp_path) in str(info.value)


async def test_stdin_source(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = io.TextIOWrapper(io.BytesIO(b"s1\n# c\n\ns2\r\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", fake)
    chunks = await collect(Stdin())
    assert flat(chunks) == ["s1", "s2"]
    assert [chunks[0].where(0), chunks[0].where(1)] == ["<stdin>:1", "<stdin>:4"]


@pytest.mark.parametrize("source", ["u1,u2", b"u1"])
async def test_bare_string_source_is_rejected(source: Any) -> None:
    with pytest.raises(TypeError, match="single string"):
        await collect(source)


@pytest.mark.parametrize(
    "source",
    [[1], ["ok", None], ["ok", b"bytes"], iter(["ok", 3.5])],
)
async def test_non_str_items_are_rejected(source: Any) -> None:
    with pytest.raises(TypeError, match="must be str"):
        await collect(source)


async def test_non_str_items_in_async_source_are_rejected() -> None:
    with pytest.raises(TypeError, match="must be str"):
        await collect(AsyncUids(iter(["ok", 7])))


def _open_fds_to(path: Path) -> int:
    fd_dir = Path("/proc/self/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            if Path(fd.readlink()) == path:
                count += 1
        except OSError:
            pass
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_abandoned_uid_file_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "uids.txt"
    path.write_text("".join(f"u{i}\n" for i in range(10_000)), "utf-8")
    chunks = cast(AsyncGenerator[Chunk, None], iter_chunks(UidFile(path)))
    first = await anext(chunks)
    assert first.uids[0] == "u0"
    assert _open_fds_to(path) == 1
    await chunks.aclose()
    assert _open_fds_to(path) == 0


def test_an_over_long_line_is_not_read_whole_and_is_shown_shortened(tmp_path: Path) -> None:
    path = tmp_path / "uids.txt"
    with path.open("wb") as f:
        f.write(b"u1\n")
        f.write(b"x" * (5 * MAX_LINE_BYTES + 7) + b"\r\n")
        f.write(b"u3\n")
    with path.open("rb") as f:
        lines = list(read_uid_lines(f))
    assert [(n, uid[:3]) for n, uid in lines] == [(1, "u1"), (2, "xxx"), (3, "u3")]
    long_one = lines[1][1]
    assert long_one.endswith(f"({5 * MAX_LINE_BYTES + 7} bytes in all)")
    assert len(long_one.encode()) < 4200  # what an error record shows, not the whole line
    assert invalid_reason(long_one, 4096) is not None  # never sent, whatever max_uid_bytes


async def test_a_read_error_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "uids.txt"
    path.write_text("u1\nu2\n")

    def failing_take(lines: Any, n: int) -> Any:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sources, "_take", failing_take)
    with pytest.raises(ConfigError, match=r"uids\.txt: cannot read UID file: Input/output error"):
        [c async for c in iter_chunks(UidFile(path))]
