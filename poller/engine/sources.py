"""Where user IDs come from: lists, (async) iterables, files and stdin, all streamed.

Nothing here holds the whole input: files are read in chunks on a worker thread (so a slow
pipe or disk never blocks the event loop), iterables are consumed lazily. Each source yields
:class:`Chunk` s of IDs with, for files, the line number of each, so a bad ID can be reported
as ``path:line``.

File format: one user ID per line, UTF-8; blank lines and lines whose first non-blank
character is ``#`` are skipped; a leading UTF-8 byte-order mark is dropped; the line ending
(``\\n`` or ``\\r\\n``) is removed and nothing else, so IDs with inner or trailing spaces are
kept exactly. Undecodable bytes become lone surrogates and are then rejected as invalid IDs
rather than crashing the run.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import BinaryIO, TypeAlias

from poller.core.errors import ConfigError

__all__ = [
    "MAX_LINE_BYTES",
    "Chunk",
    "Stdin",
    "UidFile",
    "UidInput",
    "iter_chunks",
    "read_uid_lines",
]

CHUNK = 4096


@dataclass(frozen=True, slots=True)
class UidFile:
    """A file of user IDs, one per line."""

    path: Path


@dataclass(frozen=True, slots=True)
class Stdin:
    """Standard input as a file of user IDs."""


UidInput: TypeAlias = Iterable[str] | AsyncIterable[str] | UidFile | Stdin


@dataclass(slots=True)
class Chunk:
    uids: list[str]
    lines: list[int] | None = None
    name: str | None = None

    def where(self, index: int) -> str | None:
        if self.lines is None or self.name is None:
            return None
        return f"{self.name}:{self.lines[index]}"


#: A line longer than this is not read whole: it cannot be a user ID (the API allows 128 bytes),
#: so only its first bytes are kept, enough for the error record to show what it was.
MAX_LINE_BYTES = 64 * 1024
#: What is kept of an over-long line: more than the largest ``max_uid_bytes`` (4096), so the
#: shortened line is still rejected, never sent.
SHOWN_BYTES = 4097


def _read_line(stream: BinaryIO) -> bytes:
    """One line (with its ending); of a line longer than :data:`MAX_LINE_BYTES` only the first
    :data:`SHOWN_BYTES` and its length are kept (the rest is read in bounded pieces and
    dropped), as ``<start>…(<n> bytes in all)``."""
    line = stream.readline(MAX_LINE_BYTES)
    if len(line) < MAX_LINE_BYTES or line.endswith(b"\n"):
        return line
    size = len(line)
    while True:
        more = stream.readline(MAX_LINE_BYTES)
        size += len(more)
        if not more or more.endswith(b"\n"):
            break
    if more.endswith(b"\n"):
        size -= 2 if more.endswith(b"\r\n") else 1
    return line[:SHOWN_BYTES] + f"\u2026({size} bytes in all)\n".encode()


def read_uid_lines(stream: BinaryIO) -> Iterator[tuple[int, str]]:
    """``(line_number, uid)`` for each ID line of a binary stream (see the module docstring)."""
    number = 0
    while raw := _read_line(stream):
        number += 1
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark, as some editors write
        text = raw.decode("utf-8", "surrogateescape")
        if text.endswith("\n"):
            text = text[:-1]
            if text.endswith("\r"):
                text = text[:-1]
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        yield number, text


def _take(lines: Iterator[tuple[int, str]], n: int) -> list[tuple[int, str]]:
    return list(islice(lines, n))


async def _file_chunks(stream: BinaryIO, name: str) -> AsyncIterator[Chunk]:
    lines = read_uid_lines(stream)
    while True:
        try:
            part = await asyncio.to_thread(_take, lines, CHUNK)
        except OSError as exc:  # EIO, a vanished network mount, ...
            raise ConfigError(
                f"cannot read UID file: {exc.strerror or exc} (after the IDs before it)",
                source=name,
            ) from exc
        if not part:
            return
        yield Chunk([uid for _, uid in part], [n for n, _ in part], name)


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise ConfigError(f"cannot read UID file: {exc.strerror or exc}", source=str(path)) from exc


async def iter_chunks(source: UidInput) -> AsyncIterator[Chunk]:
    """Stream any supported source as chunks of user IDs."""
    if isinstance(source, UidFile):
        stream = await asyncio.to_thread(_open, source.path)
        try:
            async for chunk in _file_chunks(stream, str(source.path)):
                yield chunk
        finally:
            stream.close()
    elif isinstance(source, Stdin):
        async for chunk in _file_chunks(sys.stdin.buffer, "<stdin>"):
            yield chunk
    elif isinstance(source, AsyncIterable):
        buf: list[str] = []
        async for uid in source:
            buf.append(_require_str(uid))
            if len(buf) >= CHUNK:
                yield Chunk(buf)
                buf = []
        if buf:
            yield Chunk(buf)
    elif isinstance(source, str | bytes):
        raise TypeError("a UID source must be an iterable of IDs, not a single string")
    else:
        it = iter(source)
        while True:
            part = [_require_str(u) for u in islice(it, CHUNK)]
            if not part:
                return
            yield Chunk(part)


def _require_str(uid: object) -> str:
    if not isinstance(uid, str):
        raise TypeError(f"user IDs must be str, got {type(uid).__name__}: {uid!r}")
    return uid
