"""Record sinks: JSON Lines files, standard output, callbacks."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from poller.core.errors import SinkError
from poller.core.records import ChangeRecord, ErrorRecord, PresenceRecord, Record
from poller.engine.sinks import CallbackSink, FileSink, Sink, StdoutSink


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
