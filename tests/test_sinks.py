"""Record sinks: JSON Lines files, standard output, callbacks."""

from __future__ import annotations

import io
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from poller.core.errors import SinkError
from poller.core.records import ChangeRecord, ErrorRecord, PresenceRecord, Record
from poller.engine import sinks as sinks_module
from poller.engine.sinks import CallbackSink, FileSink, Sink, StdoutSink, reopen_sinks
from tests.conftest import FakeClock


def presence(uid: str, sweep: int = 1) -> PresenceRecord:
    return {
        "type": "presence",
        "sweep": sweep,
        "api": "BatchGetOnlineUsers",
        "app_id": "app",
        "group_id": "group",
        "uid": uid,
        "online": True,
        "join_time": 1_764_100_000_000,
        "polled_at": 1_764_100_012_345,
        "request_id": "6EBD1AC4",
    }


def error(uid: str, message: str) -> ErrorRecord:
    return {
        "type": "error",
        "sweep": 1,
        "api": "BatchGetOnlineUsers",
        "app_id": "app",
        "group_id": "group",
        "uid": uid,
        "code": "InvalidUserId",
        "message": message,
        "polled_at": 1_764_100_012_345,
    }


def change(uid: str) -> ChangeRecord:
    return {
        "type": "change",
        "sweep": 2,
        "api": "BatchGetOnlineUsers",
        "app_id": "app",
        "group_id": "group",
        "uid": uid,
        "online": False,
        "previous_online": True,
        "join_time": 0,
        "polled_at": 1_764_100_042_345,
        "version": 1,
    }


# Awkward but valid content: U+2028/U+2029 (orjson leaves them raw), non-ASCII, quotes.
AWKWARD: list[Record] = [
    presence("用户1"),
    presence("line\u2028sep"),
    error("u,2", "user ID contains ','"),
    error("para\u2029", 'says "hi" \\ ünïcødé 🙂'),
    change("e f"),
]


def read_jsonl(data: bytes) -> list[Any]:
    """Parse JSON Lines the documented way: split on b"\\n" only, every line terminated."""
    assert data.endswith(b"\n"), "file does not end with a whole line"
    lines = data.split(b"\n")
    assert lines[-1] == b""
    return [orjson.loads(line) for line in lines[:-1]]


# ----------------------------------------------------------------------------------------------
# FileSink


async def test_file_sink_writes_whole_lines_that_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = FileSink(path)
    await sink.write(AWKWARD[:2])
    await sink.write(AWKWARD[2:])
    await sink.flush()
    assert read_jsonl(path.read_bytes()) == AWKWARD
    await sink.aclose()
    assert read_jsonl(path.read_bytes()) == AWKWARD


async def test_file_sink_output_is_utf8_not_escaped(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = FileSink(path)
    await sink.write([presence("用户1")])
    await sink.aclose()
    assert "用户1".encode() in path.read_bytes()


async def test_file_sink_appends_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(orjson.dumps({"existing": True}) + b"\n")
    first = FileSink(path)
    await first.write([presence("a"), presence("b")])
    await first.aclose()
    second = FileSink(path)
    await second.write([presence("c", sweep=2)])
    await second.aclose()
    assert read_jsonl(path.read_bytes()) == [
        {"existing": True},
        presence("a"),
        presence("b"),
        presence("c", sweep=2),
    ]


async def test_file_sink_creates_parent_dirs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "out.jsonl"
    sink = FileSink(str(path))
    await sink.write([presence("u1")])
    await sink.aclose()
    assert read_jsonl(path.read_bytes()) == [presence("u1")]


async def test_file_sink_flush_and_aclose_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = FileSink(path)
    await sink.flush()  # before anything was written
    await sink.aclose()
    await sink.write([presence("u1")])
    await sink.flush()
    await sink.flush()
    await sink.aclose()
    await sink.aclose()
    await sink.flush()  # after close
    assert read_jsonl(path.read_bytes()) == [presence("u1")]


async def test_file_sink_with_fsync(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = FileSink(path, fsync=True)
    await sink.write([presence("u1")])
    await sink.flush()
    await sink.aclose()
    assert read_jsonl(path.read_bytes()) == [presence("u1")]


async def test_file_sink_empty_write_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = FileSink(path)
    await sink.write([])
    await sink.write([presence("u1")])
    await sink.write([])
    await sink.aclose()
    assert read_jsonl(path.read_bytes()) == [presence("u1")]


async def test_file_sink_path_is_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "records"
    target.mkdir()
    sink = FileSink(target)
    with pytest.raises(SinkError) as info:
        await sink.write([presence("u1")])
    assert str(target) in str(info.value)
    assert info.value.fatal
    await sink.aclose()


async def test_file_sink_parent_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    target = blocker / "out.jsonl"
    sink = FileSink(target)
    with pytest.raises(SinkError) as info:
        await sink.write([presence("u1")])
    assert str(target) in str(info.value)
    await sink.aclose()


# ----------------------------------------------------------------------------------------------
# FileSink: a torn last line, log rotation, a removed or replaced file


def sink_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "poller.sinks" and r.levelno == logging.WARNING
    ]


FRAGMENT = b'{"type":"presence","sweep":1,"api":"BatchGet'


@pytest.mark.parametrize("block", [64 * 1024, 7])  # 7: the tail is searched over many blocks
async def test_file_sink_cuts_a_torn_last_line_on_open(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    block: int,
) -> None:
    monkeypatch.setattr(sinks_module, "_TAIL_BLOCK", block)
    path = tmp_path / "out.jsonl"
    whole = orjson.dumps(presence("a")) + b"\n" + orjson.dumps(presence("b")) + b"\n"
    path.write_bytes(whole + FRAGMENT)
    sink = FileSink(path)
    with caplog.at_level(logging.WARNING, logger="poller.sinks"):
        await sink.write([presence("c", sweep=2)])
        await sink.aclose()
    data = path.read_bytes()
    assert read_jsonl(data) == [presence("a"), presence("b"), presence("c", sweep=2)]
    assert data == whole + orjson.dumps(presence("c", sweep=2)) + b"\n"  # the fragment is gone
    [warning] = sink_warnings(caplog)
    assert f"{len(FRAGMENT)} bytes" in warning
    assert str(path) in warning


async def test_file_sink_cuts_a_file_without_any_whole_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(FRAGMENT)
    sink = FileSink(path)
    with caplog.at_level(logging.WARNING, logger="poller.sinks"):
        await sink.write([presence("a")])
        await sink.aclose()
    assert read_jsonl(path.read_bytes()) == [presence("a")]
    assert any(f"{len(FRAGMENT)} bytes" in w for w in sink_warnings(caplog))


@pytest.mark.parametrize("content", [b"", b'{"existing":true}\n'])
async def test_file_sink_leaves_an_empty_or_whole_file_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)
    sink = FileSink(path)
    with caplog.at_level(logging.WARNING, logger="poller.sinks"):
        await sink.write([presence("a")])
        await sink.aclose()
    assert path.read_bytes() == content + orjson.dumps(presence("a")) + b"\n"
    assert sink_warnings(caplog) == []


class ThirdPartySink:
    """A sink with only the three protocol methods (no ``reopen``)."""

    def __init__(self) -> None:
        self.got: list[Record] = []

    async def write(self, records: Sequence[Record]) -> None:
        self.got.extend(records)

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_reopen_after_rotation_writes_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsynced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    path = tmp_path / "out.jsonl"
    sink = FileSink(path, fsync=True)
    other = ThirdPartySink()
    sinks: list[Sink] = [sink, StdoutSink(io.BytesIO()), CallbackSink(lambda r: None), other]
    await sink.write([presence("a"), presence("b")])
    path.rename(tmp_path / "out.jsonl.1")  # logrotate's mv
    await reopen_sinks(sinks)
    assert fsynced  # flushed to disk before the rotated file was closed
    assert path.exists()  # reopened at once, like a daemon after SIGHUP
    await sink.write([presence("c", sweep=2)])
    await other.write([presence("c", sweep=2)])
    await sink.aclose()
    assert read_jsonl((tmp_path / "out.jsonl.1").read_bytes()) == [presence("a"), presence("b")]
    assert read_jsonl(path.read_bytes()) == [presence("c", sweep=2)]
    assert other.got == [presence("c", sweep=2)]


def test_reopen_is_optional_for_sinks(tmp_path: Path) -> None:
    builtin = [FileSink(tmp_path / "x"), StdoutSink(io.BytesIO()), CallbackSink(lambda r: None)]
    assert all(isinstance(s, sinks_module.Reopenable) for s in builtin)
    assert isinstance(ThirdPartySink(), Sink)
    assert not isinstance(ThirdPartySink(), sinks_module.Reopenable)


async def test_reopen_of_a_sink_never_opened_opens_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    await reopen_sinks([FileSink(path)])
    assert not path.exists()


async def test_reopen_sinks_reopens_all_and_raises_the_first_failure(tmp_path: Path) -> None:
    reopened: list[str] = []

    class Failing(ThirdPartySink):
        async def reopen(self) -> None:
            raise RuntimeError("cannot")

    class Counting(ThirdPartySink):
        async def reopen(self) -> None:
            reopened.append("x")

    with pytest.raises(RuntimeError, match="cannot"):
        await reopen_sinks([Failing(), Counting()])
    assert reopened == ["x"]


async def test_file_sink_recreates_a_removed_file_and_directory(
    tmp_path: Path, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "records"
    path = folder / "out.jsonl"
    sink = FileSink(path, clock=fake_clock)
    await sink.write([presence("a")])
    shutil.rmtree(folder)
    fake_clock.now += FileSink.CHECK_INTERVAL
    with caplog.at_level(logging.WARNING, logger="poller.sinks"):
        await sink.write([presence("b")])
    await sink.aclose()
    assert read_jsonl(path.read_bytes()) == [presence("b")]
    [warning] = sink_warnings(caplog)
    assert str(path) in warning and "removed" in warning


async def test_file_sink_notices_a_replaced_file(
    tmp_path: Path, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "out.jsonl"
    sink = FileSink(path, clock=fake_clock)
    await sink.write([presence("a")])
    os.link(path, tmp_path / "old.jsonl")  # keep the replaced inode to inspect it
    replacement = tmp_path / "new.jsonl"
    replacement.write_bytes(b'{"other":1}\n')
    os.replace(replacement, path)
    with caplog.at_level(logging.WARNING, logger="poller.sinks"):
        fake_clock.now += FileSink.CHECK_INTERVAL / 2
        await sink.write([presence("b")])  # not checked yet: at most once per interval
        assert sink_warnings(caplog) == []
        fake_clock.now += FileSink.CHECK_INTERVAL / 2
        await sink.write([presence("c")])
    await sink.aclose()
    assert read_jsonl((tmp_path / "old.jsonl").read_bytes()) == [presence("a"), presence("b")]
    assert read_jsonl(path.read_bytes()) == [{"other": 1}, presence("c")]
    [warning] = sink_warnings(caplog)
    assert str(path) in warning and "another file" in warning


async def test_file_sink_unchanged_path_is_not_reopened(
    tmp_path: Path, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "out.jsonl"
    sink = FileSink(path, clock=fake_clock)
    with caplog.at_level(logging.WARNING, logger="poller.sinks"):
        for n in range(3):
            await sink.write([presence(str(n))])
            fake_clock.now += 5 * FileSink.CHECK_INTERVAL
    await sink.aclose()
    assert sink_warnings(caplog) == []
    assert read_jsonl(path.read_bytes()) == [presence("0"), presence("1"), presence("2")]


async def test_write_after_reopen_to_an_unwritable_location_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "records"
    path = folder / "out.jsonl"
    sink = FileSink(path)
    await sink.write([presence("a")])
    folder.rename(tmp_path / "moved")
    folder.write_text("a file where the directory was")  # root ignores modes; this blocks all
    with caplog.at_level(logging.WARNING, logger="poller.sinks"):
        await reopen_sinks([sink])  # the failure to open is logged, not raised here
    assert any(str(path) in w for w in sink_warnings(caplog))
    with pytest.raises(SinkError) as info:
        await sink.write([presence("b")])
    assert str(path) in str(info.value)
    await sink.aclose()
    assert read_jsonl((tmp_path / "moved" / "out.jsonl").read_bytes()) == [presence("a")]


# ----------------------------------------------------------------------------------------------
# StdoutSink


async def test_stdout_sink_with_injected_stream() -> None:
    buf = io.BytesIO()
    sink = StdoutSink(buf)
    await sink.write(AWKWARD[:3])
    await sink.write(AWKWARD[3:])
    await sink.flush()
    await sink.aclose()
    await sink.aclose()
    assert read_jsonl(buf.getvalue()) == AWKWARD
    assert not buf.closed  # closing the sink never closes the caller's stream


async def test_stdout_sink_default_writes_binary_stdout(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    sink = StdoutSink()
    await sink.write([presence("用户1"), presence("x\u2028y")])
    await sink.aclose()
    out = capsysbinary.readouterr().out
    assert read_jsonl(out) == [presence("用户1"), presence("x\u2028y")]


async def test_stdout_sink_closed_stream_raises_sink_error() -> None:
    buf = io.BytesIO()
    buf.close()
    with pytest.raises(SinkError, match="stdout"):
        await StdoutSink(buf).write([presence("u1")])


# ----------------------------------------------------------------------------------------------
# CallbackSink


async def test_callback_sink_sync() -> None:
    got: list[Record] = []
    sink = CallbackSink(got.append)
    await sink.write(AWKWARD[:2])
    await sink.write(AWKWARD[2:])
    await sink.flush()
    await sink.aclose()
    assert got == AWKWARD


async def test_callback_sink_async() -> None:
    got: list[Record] = []

    async def callback(record: Record) -> None:
        got.append(record)

    sink = CallbackSink(callback)
    await sink.write(AWKWARD[:1])
    await sink.write(AWKWARD[1:])
    assert got == AWKWARD


async def test_callback_sink_callable_object_returning_awaitable() -> None:
    got: list[str] = []

    class Collector:
        async def __call__(self, record: Record) -> None:
            got.append(record["uid"])

    await CallbackSink(Collector()).write(AWKWARD)
    assert got == [r["uid"] for r in AWKWARD]


async def test_callback_sink_sync_returning_value_is_not_awaited() -> None:
    got: list[str] = []

    def callback(record: Record) -> Any:
        got.append(record["uid"])
        return 42

    await CallbackSink(callback).write(AWKWARD)
    assert got == [r["uid"] for r in AWKWARD]


async def test_callback_errors_propagate() -> None:
    def callback(record: Record) -> None:
        raise RuntimeError("consumer broke")

    with pytest.raises(RuntimeError, match="consumer broke"):
        await CallbackSink(callback).write([presence("u1")])


def test_all_sinks_satisfy_protocol(tmp_path: Path) -> None:
    sinks: list[object] = [
        FileSink(tmp_path / "x"),
        StdoutSink(io.BytesIO()),
        CallbackSink(lambda r: None),
    ]
    assert all(isinstance(s, Sink) for s in sinks)


# The pipeline turns undecodable bytes of a UID file into lone surrogates and reports them as
# InvalidUserId error records carrying that uid, so sinks do receive such strings.
UNDECODABLE = "bad\udcff\udcfeid"


@pytest.mark.parametrize("kind", ["stdout", "file"])
async def test_record_with_undecodable_uid_is_written(tmp_path: Path, kind: str) -> None:
    records: list[Record] = [
        error(UNDECODABLE, "user ID is not valid UTF-8 (lone surrogate U+DCFF) (uids.txt:2)"),
        presence("u1"),
    ]
    buf = io.BytesIO()
    path = tmp_path / "out.jsonl"
    sink: StdoutSink | FileSink = StdoutSink(buf) if kind == "stdout" else FileSink(path)
    try:
        await sink.write(records)
    finally:
        await sink.aclose()
    rows = read_jsonl(buf.getvalue() if kind == "stdout" else path.read_bytes())
    assert [r["type"] for r in rows] == ["error", "presence"]
    assert rows[0]["uid"].startswith("bad") and rows[0]["uid"].endswith("id")
    assert rows[1] == presence("u1")


async def test_undecodable_ids_get_readable_uid_and_uid_bytes_and_stay_distinct() -> None:
    cases: list[tuple[str, dict[str, str]]] = [  # an ID as decoded -> its record's id fields
        ("\udcff", {"uid": "\ufffd", "uid_bytes": "ff"}),  # a UID file line of the byte 0xFF
        ("\\xff", {"uid": "\\xff"}),  # the four characters \xff: a valid ID
        ("\ufffd", {"uid": "\ufffd"}),  # a literal U+FFFD: a valid ID
        (UNDECODABLE, {"uid": "bad\ufffd\ufffdid", "uid_bytes": b"bad\xff\xfeid".hex()}),
        ("\ud800", {"uid": "\ufffd\ufffd\ufffd", "uid_bytes": "eda080"}),  # a caller's own
    ]
    buf = io.BytesIO()
    sink = StdoutSink(buf)
    await sink.write([error(uid, f"from {uid}") for uid, _ in cases])
    await sink.aclose()
    rows = read_jsonl(buf.getvalue())
    assert [{k: v for k, v in r.items() if k.startswith("uid")} for r in rows] == [
        fields for _, fields in cases
    ]
    assert list(rows[0])[list(rows[0]).index("uid") + 1] == "uid_bytes"  # right after uid
    assert rows[0]["message"] == "from \\xff"  # other fields: undecodable bytes as \xNN
    assert rows[1]["message"] == "from \\xff" and "uid_bytes" not in rows[1]
    identities = {r.get("uid_bytes", r["uid"]) for r in rows}
    assert len(identities) == len(cases)
