"""Where records go. A sink receives whole batches of records and is flushed once per sweep.

Records are written as JSON Lines with orjson (UTF-8, one object per ``\\n``-terminated line).
orjson leaves U+2028/U+2029 unescaped: readers must split on ``b"\\n"`` only (iterate the file in
binary mode), not with ``str.splitlines``.

A file sink appends whole lines only: each ``write`` builds the complete bytes for its records
and hands them to the file in one call, so a crash can cut the file at a batch boundary at
worst, never inside a record (with ``fsync`` the flush at the end of a sweep reaches the disk).

A file that does not end in ``\\n`` when a file sink opens it (a crash or a full disk cut a
write short) has that torn last line cut off, since it never was a record: the sink truncates
the file back to its last complete line and logs a WARNING on ``poller.sinks`` naming the file
and the number of bytes dropped. Only the tail is read, backwards in blocks.

An ID that is not valid UTF-8 (the ``InvalidUserId`` record of undecodable UID file bytes) has
``uid`` as text, U+FFFD per undecodable byte, and ``uid_bytes``, its bytes in hex, which identify
it (key on ``uid_bytes`` when present, else on ``uid``): the byte 0xFF gives ``"uid":"\\ufffd",
"uid_bytes":"ff"``, the four characters ``\\xff`` ``"uid":"\\\\xff"``, U+FFFD ``"uid":"\\ufffd"``.

Log rotation: ``reopen()`` (called for every sink that has one by :func:`reopen_sinks`, which the
daemon runs on SIGHUP) flushes, fsyncs when configured, closes and reopens the path, so after
``mv out.jsonl out.jsonl.1`` and a SIGHUP new records go to a new ``out.jsonl`` (logrotate's
``postrotate`` convention). ``reopen`` is an optional capability: sinks with only
``write``/``flush``/``aclose`` keep working. If the new file cannot be opened, ``reopen`` logs a
WARNING and the next ``write`` raises :class:`SinkError` naming the path.

Without a SIGHUP a file sink still notices, at most once a second at a write, that its path was
removed or now names another file (``st_dev``/``st_ino`` of the path against the open file): it
logs a WARNING, flushes and closes the old file and reopens the path (recreating its directory)
before writing. Only the writes of the second before that check can reach a deleted file; after
it, records go to the path again, with a warning.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import stat
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, runtime_checkable

import orjson

from poller.config import SinkConfig
from poller.config.model import RECORD_TYPES
from poller.core.clock import Clock, system_clock
from poller.core.errors import ConfigError, SinkError
from poller.core.records import Record

__all__ = [
    "CallbackSink",
    "FileSink",
    "MeteredSink",
    "Reopenable",
    "Sink",
    "StdoutSink",
    "TypedSink",
    "encode_records",
    "metered_sinks",
    "reopen_sinks",
    "sinks_from_config",
    "wants_presence",
]

log = logging.getLogger("poller.sinks")

_OPTS = orjson.OPT_APPEND_NEWLINE


def _id_bytes(text: str) -> bytes:
    """The bytes behind lone surrogates (``surrogateescape``, else ``surrogatepass``)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _printable(value: object) -> object:
    """A string orjson can encode: undecodable bytes shown as ``\\xNN`` escapes (not ``uid``)."""
    return _id_bytes(value).decode("utf-8", "backslashreplace") if isinstance(value, str) else value


def _encode(record: Record) -> bytes:
    try:
        return orjson.dumps(record, option=_OPTS)
    except orjson.JSONEncodeError:
        pass  # lone surrogates: the InvalidUserId record of an undecodable ID (module docstring)
    fixed: dict[str, object] = {}
    for key, value in record.items():
        fixed[key] = _printable(value)
        if key == "uid" and isinstance(value, str) and fixed[key] != value:
            raw = _id_bytes(value)  # readable text, then the bytes that identify the ID
            fixed[key], fixed["uid_bytes"] = raw.decode("utf-8", "replace"), raw.hex()
    return orjson.dumps(fixed, option=_OPTS)


def encode_records(records: Sequence[Record]) -> bytes:
    return b"".join([_encode(r) for r in records])


@runtime_checkable
class Sink(Protocol):
    async def write(self, records: Sequence[Record]) -> None: ...

    async def flush(self) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Reopenable(Protocol):
    """The optional capability of a sink to reopen its output (log rotation, SIGHUP)."""

    async def reopen(self) -> None: ...


async def reopen_sinks(sinks: Iterable[object]) -> None:
    """``reopen()`` every sink that has one; sinks without it are left alone.

    Every sink is reopened even when one fails; the first failure is raised afterwards.
    """
    first: BaseException | None = None
    for sink in sinks:
        if not isinstance(sink, Reopenable):
            continue
        try:
            await sink.reopen()
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first


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

    async def reopen(self) -> None:
        """Nothing to reopen: standard output is the caller's."""
        return None


class FileSink(_StreamSink):
    """JSON Lines appended to a file; optionally fsynced at the end of each sweep.

    The file is unbuffered: each ``write`` hands its whole lines to the OS in one call, so
    even an abrupt exit (a second SIGTERM) cannot leave half a record behind. Opening the file
    cuts off a torn last line; ``reopen()`` and a removed or replaced path are handled as the
    module docstring says.
    """

    CHECK_INTERVAL = 1.0
    """Seconds between two checks, at a write, that the path still names the open file."""

    def __init__(
        self, path: str | Path, *, fsync: bool = False, clock: Clock | None = None
    ) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self._fsync = fsync
        self._clock: Clock = clock or system_clock()
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of a regular file
        self._checked_at = 0.0

    def _target(self) -> _Stream:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        raw = self.path.open("ab", buffering=0)
        try:
            st = os.fstat(raw.fileno())
            self._identity = None
            if stat.S_ISREG(st.st_mode):
                _repair_torn_tail(raw, self.path, st)
                self._identity = (st.st_dev, st.st_ino)
        except BaseException:
            raw.close()
            raise
        self._checked_at = self._clock.monotonic()
        return _WholeWrites(raw)

    async def write(self, records: Sequence[Record]) -> None:
        if records and self._stream is not None:
            gone = self._path_changed()
            if gone:
                log.warning("records file %s %s; reopening it", self._name, gone)
                await self._close()
        await super().write(records)

    def _path_changed(self) -> str | None:
        """Why the path no longer names the open file, checked at most once per interval."""
        now = self._clock.monotonic()
        if self._identity is None or now - self._checked_at < self.CHECK_INTERVAL:
            return None
        self._checked_at = now
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return "was removed"
        except OSError:
            return None  # cannot tell (e.g. permissions): keep writing where we are
        if (st.st_dev, st.st_ino) != self._identity:
            return "now names another file"
        return None

    async def flush(self) -> None:
        await super().flush()
        if self._fsync and self._stream is not None:
            fd = self._stream.fileno()
            try:
                await asyncio.to_thread(os.fsync, fd)
            except OSError as exc:
                raise SinkError(f"cannot fsync {self._name}: {exc}") from exc

    async def _close(self) -> None:
        if self._stream is None:
            return
        try:
            await self.flush()
        finally:
            self._stream.close()
            self._stream = None
            self._identity = None

    async def aclose(self) -> None:
        await self._close()

    async def reopen(self) -> None:
        """Flush (and fsync) and close the file, then open the path anew (log rotation).

        A sink that is not open stays closed (its next write opens the path). When the path
        cannot be opened this logs a WARNING and the next ``write`` raises :class:`SinkError`.
        """
        if self._stream is None:
            return
        await self._close()
        try:
            self._stream = self._target()
        except OSError as exc:
            log.warning("cannot reopen records file %s: %s", self._name, exc)


_TAIL_BLOCK = 64 * 1024


def _repair_torn_tail(raw: BinaryIO, path: Path, st: os.stat_result) -> None:
    """Cut a regular file that does not end in ``\\n`` back to its last complete line.

    ``raw`` is the file opened for appending; the tail is read through a second, read-only
    descriptor, from the end backwards in blocks, so a large file is not read whole.
    """
    if not st.st_size:
        return
    try:
        reader = path.open("rb", buffering=0)
    except OSError as exc:
        log.warning("cannot check records file %s for a torn last line: %s", path, exc)
        return
    with reader:
        rst = os.fstat(reader.fileno())
        if (rst.st_dev, rst.st_ino) != (st.st_dev, st.st_ino):
            return  # the path changed under us: leave whatever it now is alone
        keep = _last_line_end(reader, st.st_size)
    if keep == st.st_size:
        return
    os.ftruncate(raw.fileno(), keep)
    log.warning(
        "records file %s ended in a torn line: dropped its last %d bytes (not a whole record)",
        path,
        st.st_size - keep,
    )


def _last_line_end(reader: BinaryIO, size: int) -> int:
    """The offset just past the last ``\\n`` in the first ``size`` bytes (0 when none)."""
    end = size
    while end > 0:
        start = max(0, end - _TAIL_BLOCK)
        reader.seek(start)
        block = reader.read(end - start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        end = start
    return 0


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

    async def reopen(self) -> None:
        return None


class TypedSink:
    """Passes on only the records of ``types`` (``presence``, ``change``, ``error``) to ``sink``:
    each ``[[sinks]]`` entry receives the types it asks for (``types``)."""

    def __init__(self, sink: Sink, types: Iterable[str]) -> None:
        self.sink = sink
        self.types = frozenset(types)

    def __repr__(self) -> str:
        return f"<TypedSink {sorted(self.types)} {self.sink!r}>"

    async def write(self, records: Sequence[Record]) -> None:
        wanted = [r for r in records if r["type"] in self.types]
        if wanted:
            await self.sink.write(wanted)

    async def flush(self) -> None:
        await self.sink.flush()

    async def aclose(self) -> None:
        await self.sink.aclose()

    async def reopen(self) -> None:
        if isinstance(self.sink, Reopenable):
            await self.sink.reopen()


@runtime_checkable
class MeteredSink(Protocol):
    """A sink with metrics of its own (webhook, PostgreSQL): ``metrics`` lists (name,
    ``"counter"`` or ``"gauge"``, help) under ``metrics_prefix``; ``counters()`` gives their
    values now; ``name`` labels them (never a secret)."""

    name: str
    metrics_prefix: str
    metrics: tuple[tuple[str, str, str], ...]

    def counters(self) -> dict[str, float]: ...


def metered_sinks(sinks: Iterable[Sink]) -> list[MeteredSink]:
    """The sinks among ``sinks`` with metrics of their own, unwrapped from type filters."""
    found: list[MeteredSink] = []
    for sink in sinks:
        inner = sink.sink if isinstance(sink, TypedSink) else sink
        if isinstance(inner, MeteredSink):
            found.append(inner)
    return found


def wants_presence(configs: Sequence[SinkConfig], emit: Literal["changes", "all"]) -> bool:
    """Whether any sink receives presence records (then the daemon produces them)."""
    if not configs:
        return emit == "all"
    return any("presence" in c.default_types(emit) for c in configs)


def sinks_from_config(
    configs: Sequence[SinkConfig],
    *,
    emit: Literal["changes", "all"] = "all",
    state_dir: Path | None = None,
    clock: Clock | None = None,
) -> list[Sink]:
    """The ``[[sinks]]`` of a config (standard output when there are none), each receiving the
    record types it asks for (``types``; unset: what ``emit`` says, changes and errors for a
    webhook, all three for postgres). A webhook's spool defaults to a folder of ``state_dir``."""
    if not configs:
        return [StdoutSink()]
    sinks: list[Sink] = []
    for config in configs:
        sink: Sink
        if config.kind == "webhook":
            from .webhook import open_webhook  # aiohttp's session only when there is a webhook

            sink = open_webhook(config, state_dir=state_dir, clock=clock)
        elif config.kind == "postgres":
            try:  # asyncpg only when there is a postgres sink (the optional poller[postgres])
                from .postgres import PostgresSink
            except ImportError as exc:
                if exc.name != "asyncpg":
                    raise
                raise ConfigError(
                    "a postgres sink needs asyncpg: pip install 'poller[postgres]'", key="kind"
                ) from None
            sink = PostgresSink(config, clock=clock)
        elif config.kind == "file" and config.path:
            sink = FileSink(config.path, fsync=config.fsync)
        else:
            sink = StdoutSink()
        types = config.default_types(emit)
        sinks.append(sink if set(types) == set(RECORD_TYPES) else TypedSink(sink, types))
    return sinks
