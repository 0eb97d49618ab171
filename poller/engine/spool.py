"""A durable, bounded FIFO of opaque payloads on disk: what a sink has not delivered yet.

A sink that pushes records to a service (the webhook sink) puts each batch it could not deliver
in a :class:`Spool` and delivers from it, oldest first, when the service is back::

    async with Spool(directory, max_bytes=64 * 2**20) as spool:
        await spool.put(payload)           # durable when it returns
        entry = await spool.peek()         # the oldest undelivered entry, or None
        ...deliver entry.payload...
        await spool.ack(entry.seq)         # delivered: removed, durably

Delivery is at least once: an entry peeked and delivered but not acked when the process dies
(``kill -9`` included) is peeked again after the restart. Entries keep their order across
restarts; each carries a ``seq`` (increasing for the life of the directory, with gaps only
where entries were lost; numbering starts again at 1 only if the directory loses every segment
and its ``ack`` file) and its ``created_at`` (wall-clock epoch seconds).

Files (in ``directory``, created mode 0700)
    ``lock``
        held with ``fcntl.flock`` while a :class:`Spool` is open (its pid inside), so two
        processes, or two sinks of one process, cannot share a directory: the second gets a
        :class:`SpoolLocked` naming the directory and the pid.
    ``NNNNNNNNNNNNNNNNNNNN.seg``
        segments, named by the ``seq`` of their first entry (20 digits, so names sort in
        order): an 8-byte magic ``PLRSPL\\x00\\x01`` then entries, each a 24-byte little-endian
        header ``length u32, crc32 u32, seq u64, created_at f64`` and ``length`` payload bytes.
        The CRC-32 covers ``length``, ``seq``, ``created_at`` and the payload. A process
        appends only to a segment it created, and starts a new one once that holds
        ``segment_bytes``; every entry of a segment is numbered consecutively.
    ``ack``
        ``PLRACK\\x00\\x01``, the ``seq`` of the last entry delivered or dropped (u64) and a
        CRC-32 of those 16 bytes, replaced as a whole (written to ``ack.tmp``, fsynced,
        renamed over ``ack``, directory fsynced): entries up to it are gone, the ones after it
        are not. A segment whose entries are all acked is deleted (the one being appended to
        only once it is full, or at :meth:`Spool.aclose`).

Durability: with ``fsync`` (the default) :meth:`Spool.put` returns once the entry is fsynced
(``fdatasync``; a new segment's directory entry is fsynced too) and :meth:`Spool.ack` once the
new ``ack`` file is, so an acknowledged put survives a power loss and an ack is not undone by
one. Without ``fsync`` both survive the process (``kill -9``) but not the machine: after a power
loss an entry can be missing or torn and an ack undone (that entry is delivered again).

Recovery (:meth:`Spool.open`) scans every segment and checks every entry's header, CRC and seq:
at the first entry that fails, a torn write cut short by a crash, the segment is truncated back
to its last whole entry with a WARNING on ``poller.sinks`` naming the file and the bytes cut
(a torn entry was never acknowledged as put, so nothing promised is lost; damage in the middle
of a segment loses the rest of that segment, which the WARNING says). It deletes segments whose
entries are all acked, segments left empty or with a torn magic by a crash at their creation,
and a leftover ``ack.tmp``. A file named like a segment whose magic is another format's, or
segments whose seqs overlap, are not a crash's doing: :class:`SpoolError`, nothing deleted.
An unreadable ``ack`` file counts as nothing acked (every entry is delivered again). Opening
reads the whole spool once to check the CRCs (about 0.5 s per GB from the page cache; at the
disk's read speed when cold).

Overflow policy (``max_bytes``): the entries not yet delivered, headers included, never take
more than ``max_bytes``. When a new entry would not fit, the **oldest** undelivered entries are
dropped to make room for it, because for presence the newest records matter most (a receiver
that comes back wants the current state and the latest transitions, not the start of the
outage). ``put`` never blocks and never fails for lack of room; the drops are counted in
:attr:`Spool.dropped_entries` and :attr:`Spool.dropped_bytes`, and logged once per overflow
episode: a WARNING when the spool first overflows, and an INFO line with the episode's totals
once the spool is back under half of ``max_bytes``. A single payload that cannot fit even in
an empty spool (``24 + len(payload) > max_bytes``) is a ``ValueError``. A spool found over
``max_bytes`` at :meth:`Spool.open` (the limit was lowered) is cut down the same way. The disk
holds at most ``max_bytes`` of undelivered entries plus the delivered head of the oldest
segment (less than ``segment_bytes`` plus one entry) and 8 bytes per segment. Entries whose CRC
fails when read back later (the disk changed under the spool) are dropped and counted the same.

Memory: the spool keeps sizes and offsets only (one small record per segment and the head
entry's header), never payloads beyond the one :meth:`Spool.peek` returns.

Threads: every blocking call (reads, writes, fsyncs, renames) runs in a worker thread
(``asyncio.to_thread``), one at a time: the coroutines take an ``asyncio.Lock`` and the worker
a ``threading.Lock`` (so a cancelled call's thread finishes before the next one starts). The
properties read counters kept in memory and never touch the disk. An ``OSError`` of the disk
(full, read-only, permissions) is a :class:`SpoolError`; a put that fails leaves no partial
entry behind that a later put or open would deliver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

from poller.core.clock import Clock, system_clock
from poller.core.errors import ConfigError, SinkError

from .dirlock import DirectoryBusy, lock_directory

__all__ = [
    "ENTRY_OVERHEAD",
    "Entry",
    "Spool",
    "SpoolError",
    "SpoolLocked",
]

log = logging.getLogger("poller.sinks")

LOCK_FILE: Final = "lock"
ACK_FILE: Final = "ack"
ACK_TMP: Final = "ack.tmp"
SEGMENT_MAGIC: Final = b"PLRSPL\x00\x01"
ACK_MAGIC: Final = b"PLRACK\x00\x01"
_FRAME: Final = struct.Struct("<IIQd")  # length, crc32, seq, created_at
_META: Final = struct.Struct("<IQd")  # what the CRC covers besides the payload
_ACK: Final = struct.Struct("<8sQ")
#: Bytes an entry takes on disk besides its payload (its header).
ENTRY_OVERHEAD: Final = _FRAME.size
_MAGIC_LEN: Final = len(SEGMENT_MAGIC)
_SEGMENT_NAME: Final = re.compile(r"^(\d{20})\.seg$")
_MAX_PAYLOAD: Final = 2**32 - 1

_T = TypeVar("_T")


class SpoolError(SinkError):
    """The spool directory cannot be used (disk full, permissions, damaged files)."""

    default_code = "SpoolError"


class SpoolLocked(SpoolError, ConfigError):
    """Another open :class:`Spool` (this process or another) holds the directory (exit 78)."""

    default_code = "SpoolLocked"


@dataclass(frozen=True, slots=True)
class Entry:
    """One spooled payload: its ``seq``, the bytes and when it was put (epoch seconds)."""

    seq: int
    payload: bytes
    created_at: float


@dataclass(slots=True)
class _Segment:
    path: Path
    first_seq: int
    last_seq: int  # first_seq - 1 while empty
    size: int  # bytes in the file, magic included


@dataclass(frozen=True, slots=True)
class _Head:
    """The header of the oldest undelivered entry (``length``: its payload's)."""

    seq: int
    length: int
    created_at: float

    @property
    def frame(self) -> int:
        return ENTRY_OVERHEAD + self.length


def _crc(length: int, seq: int, created_at: float, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_META.pack(length, seq, created_at)))


def _frame(seq: int, created_at: float, payload: bytes) -> bytes:
    n = len(payload)
    return _FRAME.pack(n, _crc(n, seq, created_at, payload), seq, created_at) + payload


def _pread(fd: int, n: int, offset: int) -> bytes:
    """``n`` bytes at ``offset`` (fewer only at the end of the file)."""
    chunks: list[bytes] = []
    while n > 0:
        chunk = os.pread(fd, n, offset)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
        offset += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError("short write")
        view = view[n:]


_sync_data: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _default_segment_bytes(max_bytes: int) -> int:
    return min(max(max_bytes // 8, 64 * 1024), 16 * 2**20)


class Spool:
    """An ordered, durable, bounded FIFO of payloads in ``directory`` (module docstring).

    ``max_bytes`` bounds the undelivered entries, headers included (``ENTRY_OVERHEAD`` bytes
    each); ``segment_bytes`` is the size at which a new segment file is started (default: an
    eighth of ``max_bytes``, between 64 KiB and 16 MiB). ``clock.time()`` stamps entries.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        fsync: bool = True,
        clock: Clock | None = None,
        segment_bytes: int | None = None,
    ) -> None:
        if max_bytes <= ENTRY_OVERHEAD:
            raise ValueError(f"spool max_bytes must be more than {ENTRY_OVERHEAD}, not {max_bytes}")
        if segment_bytes is not None and segment_bytes <= 0:
            raise ValueError(f"spool segment_bytes must be positive, not {segment_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or _default_segment_bytes(max_bytes)
        self._fsync = fsync
        self._clock: Clock = clock or system_clock()
        self._lock = asyncio.Lock()
        self._tlock = threading.Lock()
        self._open = False
        self._lock_fd: int | None = None
        self._segments: deque[_Segment] = deque()
        self._wfd: int | None = None  # appends to self._segments[-1] when set
        self._rfd: int | None = None  # reads self._segments[0] (self._rpath)
        self._rpath: Path | None = None
        self._head: _Head | None = None  # None when there is no undelivered entry
        self._head_off = 0  # the head entry's offset in self._segments[0]
        self._next_seq = 1
        self._acked = 0  # the seq last written to the ack file
        self._doomed: list[Path] = []  # consumed segments, deleted once the ack is saved
        self._entries = 0
        self._size = 0
        self._dropped_entries = 0
        self._dropped_bytes = 0
        self._overflowing = False
        self._episode = (0, 0)  # dropped (entries, bytes) when the overflow episode began

    # -- the public API --------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory, take its lock and recover what a previous run left."""
        await self._call(self._open_sync, opened=False)

    async def aclose(self) -> None:
        """Close the files and release the lock (idempotent). Unacked entries stay on disk."""
        await self._call(self._close_sync, opened=False)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def put(self, payload: bytes) -> None:
        """Append ``payload``, durably (fsynced with ``fsync``) before returning.

        When it would not fit in ``max_bytes`` the oldest entries are dropped first (module
        docstring, overflow policy); a payload that cannot fit at all is a ``ValueError``.
        """
        payload = bytes(payload)
        if len(payload) > _MAX_PAYLOAD or ENTRY_OVERHEAD + len(payload) > self.max_bytes:
            raise ValueError(
                f"a payload of {len(payload)} bytes cannot fit in spool {self.directory}"
                f" (max_bytes {self.max_bytes}, {ENTRY_OVERHEAD} bytes of header per entry)"
            )
        created_at = self._clock.time()
        await self._call(self._put_sync, payload, created_at)

    async def peek(self) -> Entry | None:
        """The oldest undelivered entry, left in place; ``None`` when there is none."""
        return await self._call(self._peek_sync)

    async def ack(self, seq: int) -> None:
        """Remove, durably, every entry up to and including ``seq`` (normally the one the last
        :meth:`peek` returned). Acking an entry already gone (acked, or dropped by an overflow
        while it was being delivered) does nothing; a ``seq`` never put is a ``ValueError``."""
        await self._call(self._ack_sync, seq)

    @property
    def entries(self) -> int:
        """Undelivered entries."""
        return self._entries

    @property
    def size_bytes(self) -> int:
        """Bytes of the undelivered entries, headers included (at most ``max_bytes``)."""
        return self._size

    @property
    def oldest_age_s(self) -> float:
        """Seconds since the oldest undelivered entry was put (0 when there is none)."""
        head = self._head
        return 0.0 if head is None else max(0.0, self._clock.time() - head.created_at)

    @property
    def dropped_entries(self) -> int:
        """Entries dropped undelivered by this process (overflow, damaged on disk)."""
        return self._dropped_entries

    @property
    def dropped_bytes(self) -> int:
        """Bytes (headers included) of the entries dropped undelivered by this process."""
        return self._dropped_bytes

    def __repr__(self) -> str:
        return (
            f"Spool({str(self.directory)!r}, entries={self._entries}, size_bytes={self._size},"
            f" max_bytes={self.max_bytes})"
        )

    # -- threads ---------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., _T], *args: object, opened: bool = True) -> _T:
        async with self._lock:
            return await asyncio.to_thread(self._locked, fn, opened, *args)

    def _locked(self, fn: Callable[..., _T], opened: bool, *args: object) -> _T:
        with self._tlock:
            if opened and not self._open:
                raise RuntimeError(f"spool {self.directory} is not open")
            try:
                return fn(*args)
            except OSError as exc:
                raise SpoolError(f"spool {self.directory}: {exc}") from exc

    # -- open and close --------------------------------------------------------------------

    def _open_sync(self) -> None:
        if self._open:
            return
        self._take_lock()
        try:
            self._recover()
        except BaseException:
            self._close_files()
            raise
        self._open = True
        if self._entries:
            log.info(
                "spool %s: %d undelivered entries (%d bytes) from a previous run",
                self.directory,
                self._entries,
                self._size,
            )

    def _take_lock(self) -> None:
        try:
            self._lock_fd = lock_directory(self.directory, LOCK_FILE)
        except DirectoryBusy as busy:
            raise SpoolLocked(
                f"spool directory {self.directory} is in use by another sink (pid {busy.pid});"
                " each webhook sink needs its own spool_dir"
            ) from None
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {self.directory}: {exc}") from exc

    def _close_sync(self) -> None:
        if not self._open and self._lock_fd is None:
            return
        self._open = False
        try:
            if self._entries == 0 and self._segments:
                # all delivered: the segment being appended to can go too
                self._doomed.extend(seg.path for seg in self._segments)
                self._segments.clear()
            self._unlink_doomed()
        finally:
            self._close_files()

    def _close_files(self) -> None:
        self._close_writer()
        self._close_reader()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def _close_writer(self) -> None:
        fd, self._wfd = self._wfd, None
        if fd is not None:
            os.close(fd)

    def _close_reader(self) -> None:
        fd, self._rfd, self._rpath = self._rfd, None, None
        if fd is not None:
            os.close(fd)

    # -- recovery --------------------------------------------------------------------------

    def _recover(self) -> None:
        self._segments.clear()
        self._head, self._head_off = None, 0
        self._entries = self._size = 0
        try:
            os.unlink(self.directory / ACK_TMP)
        except FileNotFoundError:
            pass
        acked = self._read_ack()
        last_seen = acked
        prev_last = 0
        names = sorted(
            (int(m.group(1)), p)
            for p in self.directory.iterdir()
            if (m := _SEGMENT_NAME.match(p.name))
        )
        for first_seq, path in names:
            seg = self._scan(path, first_seq, acked)
            if seg is None:
                continue
            if seg.first_seq <= prev_last:
                raise SpoolError(
                    f"spool segment {path} overlaps the one before it (seq {seg.first_seq});"
                    f" the spool directory {self.directory} was altered"
                )
            prev_last = seg.last_seq
            last_seen = max(last_seen, seg.last_seq)
            if seg.last_seq <= acked:
                path.unlink()  # all delivered
                continue
            self._segments.append(seg)
        self._acked = acked
        self._next_seq = last_seen + 1
        if self._segments:
            self._head_off = _MAGIC_LEN
            self._load_head(expected=None)
            self._skip_acked(acked)
        over = self._size - self.max_bytes
        if over > 0:
            log.warning(
                "spool %s holds %d bytes, more than max_bytes %d: dropping the oldest entries",
                self.directory,
                self._size,
                self.max_bytes,
            )
            self._make_room(0)
            self._save_ack()
            self._unlink_doomed()

    def _read_ack(self) -> int:
        path = self.directory / ACK_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0
        if len(data) == _ACK.size + 4 and zlib.crc32(data[:-4]) == int.from_bytes(
            data[-4:], "little"
        ):
            magic, seq = _ACK.unpack(data[:-4])
            if magic == ACK_MAGIC:
                return int(seq)
        log.warning(
            "spool ack file %s is damaged: every entry in the spool will be delivered again", path
        )
        return 0

    def _scan(self, path: Path, first_seq: int, acked: int) -> _Segment | None:
        """Check a segment entry by entry, cutting a torn tail; ``None`` when it is deleted."""
        with path.open("r+b") as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(_MAGIC_LEN)
            if magic != SEGMENT_MAGIC[: len(magic)]:
                raise SpoolError(
                    f"{path} is not a poller spool segment (or has another format version);"
                    " move it out of the spool directory"
                )
            if len(magic) < _MAGIC_LEN:
                path.unlink()  # a crash while it was being created: no entry in it
                return None
            pos, expect = _MAGIC_LEN, first_seq
            problem: str | None = None
            while pos < size:
                header = f.read(ENTRY_OVERHEAD)
                if len(header) < ENTRY_OVERHEAD:
                    problem = "a torn entry header"
                    break
                length, crc, seq, created_at = _FRAME.unpack(header)
                if length > size - pos - ENTRY_OVERHEAD:
                    problem = "a torn entry"
                    break
                payload = f.read(length)
                if crc != _crc(length, seq, created_at, payload):
                    problem = "an entry whose CRC does not match"
                    break
                if seq != expect:
                    problem = f"an entry numbered {seq} where {expect} was due"
                    break
                pos += ENTRY_OVERHEAD + length
                expect += 1
            if problem is not None:
                log.warning(
                    "spool segment %s has %s at offset %d (a write cut short by a crash?):"
                    " cut off its last %d bytes",
                    path,
                    problem,
                    pos,
                    size - pos,
                )
                f.truncate(pos)
                if self._fsync:
                    _sync_data(f.fileno())
        if expect == first_seq:
            path.unlink()  # no entry
            return None
        seg = _Segment(path, first_seq, expect - 1, pos)
        if seg.last_seq > acked:
            undelivered = seg.last_seq - max(acked, first_seq - 1)
            self._entries += undelivered
            self._size += pos - _MAGIC_LEN  # corrected by _skip_acked for the head segment
        return seg

    def _skip_acked(self, acked: int) -> None:
        """Move the head past the acked entries of the first segment (recovery)."""
        while self._head is not None and self._head.seq <= acked:
            frame = self._head.frame
            self._size -= frame
            self._head_off += frame
            self._load_head(expected=self._head.seq + 1)

    # -- the head --------------------------------------------------------------------------

    def _reader(self, seg: _Segment) -> int:
        if self._rpath != seg.path or self._rfd is None:
            self._close_reader()
            self._rfd = os.open(seg.path, os.O_RDONLY)
            self._rpath = seg.path
        return self._rfd

    def _load_head(self, expected: int | None) -> None:
        """Read the header at ``self._head_off`` of the first segment into ``self._head``."""
        self._head = None
        if not self._segments:
            return
        seg = self._segments[0]
        if self._head_off >= seg.size:
            return
        header = _pread(self._reader(seg), ENTRY_OVERHEAD, self._head_off)
        if len(header) == ENTRY_OVERHEAD:
            length, _, seq, created_at = _FRAME.unpack(header)
            if (expected is None or seq == expected) and length <= (
                seg.size - self._head_off - ENTRY_OVERHEAD
            ):
                self._head = _Head(seq, length, created_at)
                return
        raise SpoolError(
            f"spool segment {seg.path} changed on disk at offset {self._head_off};"
            " it is not what this spool wrote"
        )

    def _active(self, seg: _Segment) -> bool:
        return self._wfd is not None and seg is self._segments[-1]

    def _leave_head_segment(self) -> None:
        """The first segment has no undelivered entry left: drop it unless it is appended to."""
        seg = self._segments[0]
        self._head = None
        if self._active(seg):
            self._head_off = seg.size
            return
        self._segments.popleft()
        self._close_reader()
        self._doomed.append(seg.path)
        if self._segments:
            self._head_off = _MAGIC_LEN
            self._load_head(expected=self._segments[0].first_seq)
        else:
            self._head_off = 0

    def _remove_head(self) -> int:
        """Remove the oldest entry; its bytes."""
        head = self._head
        assert head is not None
        frame = head.frame
        self._size -= frame
        self._entries -= 1
        self._head_off += frame
        if self._head_off >= self._segments[0].size:
            self._leave_head_segment()
        else:
            self._load_head(expected=head.seq + 1)
        return frame

    def _remove_rest_of_head_segment(self) -> tuple[int, int]:
        """Remove every undelivered entry of the first segment; ``(entries, bytes)``."""
        head = self._head
        assert head is not None
        seg = self._segments[0]
        entries, size = seg.last_seq - head.seq + 1, seg.size - self._head_off
        self._entries -= entries
        self._size -= size
        self._head_off = seg.size
        self._leave_head_segment()
        return entries, size

    def _save_ack(self) -> None:
        """Write the ack file if the head moved (entries before the head are gone)."""
        acked = (self._head.seq if self._head is not None else self._next_seq) - 1
        if acked == self._acked:
            return
        body = _ACK.pack(ACK_MAGIC, acked)
        data = body + zlib.crc32(body).to_bytes(4, "little")
        tmp = self.directory / ACK_TMP
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            if self._fsync:
                _sync_data(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / ACK_FILE)
        if self._fsync:
            _sync_dir(self.directory)
        self._acked = acked

    def _unlink_doomed(self) -> None:
        doomed, self._doomed = self._doomed, []
        for path in doomed:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # -- put, peek, ack --------------------------------------------------------------------

    def _put_sync(self, payload: bytes, created_at: float) -> None:
        frame = ENTRY_OVERHEAD + len(payload)
        if self._size + frame > self.max_bytes:
            self._make_room(frame)
            self._save_ack()
            self._unlink_doomed()
        seg = self._writable_segment()
        assert self._wfd is not None
        seq = self._next_seq
        data = _frame(seq, created_at, payload)
        try:
            _write_all(self._wfd, data)
            if self._fsync:
                _sync_data(self._wfd)
        except OSError:
            self._undo_write(seg)
            raise
        seg.size += frame
        seg.last_seq = seq
        self._next_seq = seq + 1
        self._size += frame
        self._entries += 1
        if self._head is None:
            self._head_off = seg.size - frame
            self._head = _Head(seq, len(payload), created_at)

    def _undo_write(self, seg: _Segment) -> None:
        """Cut a failed write off the segment, or stop appending to it if that fails too."""
        assert self._wfd is not None
        try:
            os.ftruncate(self._wfd, seg.size)
        except OSError:
            self._close_writer()  # the next put starts a new segment; open cuts the tail
            if seg.last_seq < seg.first_seq:  # no entry in it: forget it
                self._segments.pop()
                self._doomed.append(seg.path)
                if not self._segments:
                    self._head_off = 0
            elif self._entries == 0:
                self._leave_head_segment()

    def _writable_segment(self) -> _Segment:
        if self._wfd is not None:
            seg = self._segments[-1]
            if seg.size < self.segment_bytes:
                return seg
            self._close_writer()
            if self._entries == 0:
                self._leave_head_segment()
                self._unlink_doomed()
        seq = self._next_seq
        path = self.directory / f"{seq:020d}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            _write_all(fd, SEGMENT_MAGIC)
            if self._fsync:
                _sync_data(fd)
                _sync_dir(self.directory)
        except BaseException:
            os.close(fd)
            path.unlink()
            raise
        seg = _Segment(path, seq, seq - 1, _MAGIC_LEN)
        self._segments.append(seg)
        self._wfd = fd
        if self._entries == 0:
            self._head_off = _MAGIC_LEN
        return seg

    def _make_room(self, frame: int) -> None:
        """Drop the oldest entries until ``frame`` more bytes fit in ``max_bytes``."""
        dropped = (self._dropped_entries, self._dropped_bytes)
        while self._head is not None and self._size + frame > self.max_bytes:
            seg = self._segments[0]
            rest = seg.size - self._head_off
            if self._size - rest + frame > self.max_bytes:
                entries, size = self._remove_rest_of_head_segment()
            else:
                entries, size = 1, self._remove_head()
            self._dropped_entries += entries
            self._dropped_bytes += size
        if not self._overflowing and (self._dropped_entries, self._dropped_bytes) != dropped:
            self._overflowing = True
            self._episode = dropped
            log.warning(
                "spool %s is full (max_bytes %d): dropping the oldest undelivered entries to make"
                " room for new ones; the receiver is down or slower than the poller",
                self.directory,
                self.max_bytes,
            )

    def _end_overflow(self) -> None:
        if self._overflowing and self._size <= self.max_bytes // 2:
            self._overflowing = False
            log.info(
                "spool %s is below half of max_bytes again: %d entries (%d bytes) were dropped"
                " while it was full",
                self.directory,
                self._dropped_entries - self._episode[0],
                self._dropped_bytes - self._episode[1],
            )

    def _peek_sync(self) -> Entry | None:
        while self._head is not None:
            head = self._head
            seg = self._segments[0]
            data = _pread(self._reader(seg), head.frame, self._head_off)
            if len(data) == head.frame:
                length, crc, seq, created_at = _FRAME.unpack_from(data)
                payload = data[ENTRY_OVERHEAD:]
                if (length, seq) == (head.length, head.seq) and crc == _crc(
                    length, seq, created_at, payload
                ):
                    return Entry(seq, payload, created_at)
            entries, size = self._remove_rest_of_head_segment()
            self._dropped_entries += entries
            self._dropped_bytes += size
            log.warning(
                "spool segment %s changed on disk: entry %d at offset %d fails its CRC;"
                " dropped the %d undelivered entries (%d bytes) from there to the segment's end",
                seg.path,
                head.seq,
                seg.size - size,
                entries,
                size,
            )
            self._save_ack()
            self._unlink_doomed()
        return None

    def _ack_sync(self, seq: int) -> None:
        if seq >= self._next_seq:
            raise ValueError(
                f"spool {self.directory} has no entry {seq} (the last is {self._next_seq - 1})"
            )
        while self._head is not None and self._head.seq <= seq:
            seg = self._segments[0]
            if seg.last_seq <= seq:
                self._remove_rest_of_head_segment()
            else:
                self._remove_head()
        self._save_ack()
        self._unlink_doomed()
        self._end_overflow()
