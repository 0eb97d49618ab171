"""Where records go. A sink receives whole batches of records and is flushed once per sweep.

Records are written as JSON Lines with orjson (UTF-8, one object per ``\\n``-terminated line).
orjson leaves U+2028/U+2029 unescaped: readers must split on ``b"\\n"`` only (iterate the file in
binary mode), not with ``str.splitlines``.

A file sink appends whole lines only: each ``write`` builds the complete bytes for its records
and hands them to the file in one call, so a crash can cut the file at a batch boundary at
worst, never inside a record (with ``fsync`` the flush at the end of a sweep reaches the disk).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

import orjson

from poller.config import SinkConfig
from poller.core.errors import SinkError
from poller.core.records import Record

__all__ = ["CallbackSink", "FileSink", "Sink", "StdoutSink", "encode_records", "sinks_from_config"]

_OPTS = orjson.OPT_APPEND_NEWLINE


def _printable(value: object) -> object:
    """A string orjson can encode: undecodable input bytes shown as ``\\xNN`` escapes."""
    if isinstance(value, str):
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("ascii")
    return value


def _encode(record: Record) -> bytes:
    try:
        return orjson.dumps(record, option=_OPTS)
    except orjson.JSONEncodeError:
        # Only an InvalidUserId record of an undecodable line gets here (lone surrogates).
        return orjson.dumps({k: _printable(v) for k, v in record.items()}, option=_OPTS)


def encode_records(records: Sequence[Record]) -> bytes:
    return b"".join([_encode(r) for r in records])


@runtime_checkable
class Sink(Protocol):
    async def write(self, records: Sequence[Record]) -> None: ...

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...


class _Stream(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


class _StreamSink:
    def __init__(self, name: str) -> None:
        self._name = name
        self._stream: _Stream | None = None
        self.lines = 0

    def _target(self) -> _Stream:
        raise NotImplementedError

    async def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        data = encode_records(records)
        try:
            stream = self._stream or self._target()
            self._stream = stream
            stream.write(data)
        except (OSError, ValueError) as exc:
            raise SinkError(f"cannot write to {self._name}: {exc}") from exc
        self.lines += len(records)

    async def flush(self) -> None:
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            raise SinkError(f"cannot flush {self._name}: {exc}") from exc


class StdoutSink(_StreamSink):
    """JSON Lines on standard output (the binary buffer, so no text-layer re-encoding)."""

    def __init__(self, stream: BinaryIO | None = None) -> None:
        super().__init__("stdout")
        self._given = stream

    def _target(self) -> _Stream:
        return self._given or sys.stdout.buffer

    async def aclose(self) -> None:
        await self.flush()


class FileSink(_StreamSink):
    """JSON Lines appended to a file; optionally fsynced at the end of each sweep.

    The file is unbuffered: each ``write`` hands its whole lines to the OS in one call, so
    even an abrupt exit (a second SIGTERM) cannot leave half a record behind.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self._fsync = fsync

    def _target(self) -> _Stream:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return _WholeWrites(self.path.open("ab", buffering=0))

    async def flush(self) -> None:
        await super().flush()
        if self._fsync and self._stream is not None:
            fd = self._stream.fileno()
            try:
                await asyncio.to_thread(os.fsync, fd)
            except OSError as exc:
                raise SinkError(f"cannot fsync {self._name}: {exc}") from exc

    async def aclose(self) -> None:
        if self._stream is None:
            return
        try:
            await self.flush()
        finally:
            self._stream.close()
            self._stream = None


class _WholeWrites:
    """An unbuffered file whose ``write`` loops until every byte is written."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        total = 0
        while total < len(view):
            n = self._raw.write(view[total:])
            if not n:
                raise OSError("short write")
            total += n
        return total

    def fileno(self) -> int:
        return self._raw.fileno()

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self._raw.close()


RecordCallback = Callable[[Record], Awaitable[None] | None]


class CallbackSink:
    """Calls ``callback(record)`` for every record; the callback may be sync or async.

    A slow callback slows polling down (through the bounded queue in front of the sinks)
    instead of letting records pile up in memory.
    """

    def __init__(self, callback: RecordCallback) -> None:
        self._callback = callback
        self._is_async = inspect.iscoroutinefunction(callback)

    async def write(self, records: Sequence[Record]) -> None:
        for record in records:
            result = self._callback(record)
            if result is not None and (self._is_async or inspect.isawaitable(result)):
                await result

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def sinks_from_config(configs: Sequence[SinkConfig]) -> list[Sink]:
    """The ``[[sinks]]`` of a config; standard output when there are none."""
    if not configs:
        return [StdoutSink()]
    return [
        FileSink(c.path, fsync=c.fsync) if c.kind == "file" and c.path else StdoutSink()
        for c in configs
    ]
