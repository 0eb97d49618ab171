"""``poller run`` and the files around it: a UID file replaced by a deploy, a rotated, removed
or torn records file (the daemon and the emulator as subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from poller.emulator.process import EmulatorProcess
from tests.daemons import DaemonProcess, base_config, readyz, target, wait_until

pytestmark = pytest.mark.slow

APP = "demo-app"


def sweeps(logs: list[dict[str, Any]]) -> int:
    return sum(e["event"] == "sweep" for e in logs)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a records file parsed; the file must end in a whole line."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path.name} ends in a partial line"
    return [orjson.loads(line) for line in data.split(b"\n") if line]


def uids_by_sweep(records: list[dict[str, Any]]) -> dict[int, Counter[str]]:
    """Per sweep, how many presence or error records each user ID got."""
    out: dict[int, Counter[str]] = defaultdict(Counter)
    for r in records:
        if r["type"] in ("presence", "error"):
            out[r["sweep"]][r["uid"]] += 1
    return out


def write_uid_file(path: Path, uids: list[str]) -> None:
    """Written beside ``path`` and renamed over it, as a deploy does."""
    new = path.with_name(path.name + ".new")
    new.write_text("\n".join(uids) + "\n", "utf-8")
    os.replace(new, path)


def test_a_uid_file_missing_for_a_while_keeps_the_last_good_list(
    tmp_path: Path, daemons: Any
) -> None:
    old = [f"user-{i:06d}" for i in range(1, 21)]
    new = [f"user-{i:06d}" for i in range(11, 41)]
    uid_file = tmp_path / "uids.txt"
    write_uid_file(uid_file, old)
    with EmulatorProcess("--group", f"{APP}/g:60") as emulator:
        config = (
            base_config(emulator)
            + '\n[metrics]\nlisten = "127.0.0.1:0"\n'
            + target(APP, "g", uids_file=str(uid_file))
        )
        daemon: DaemonProcess = daemons(tmp_path, config)
        logs = daemon.sweeps_done(2)
        url = next(e["url"] for e in logs if e["event"] == "metrics listening")
        assert readyz(url)[0] == 200

        uid_file.unlink()  # a deploy replacing it: gone for a while
        logs = daemon.wait_for(lambda logs: any(e["event"] == "UID file unreadable" for e in logs))
        missing_from = sweeps(logs) + 1  # the sweep that found it missing
        unreadable = next(e for e in logs if e["event"] == "UID file unreadable")
        assert unreadable["level"] == "error"
        assert unreadable["using"] == "the last good copy"
        assert str(uid_file) in unreadable["error"] and "demo-app" in unreadable["target"]
        daemon.sweeps_done(missing_from + 1)
        _, body = wait_until(lambda: (r := readyz(url))[0] == 503 and r, "/readyz to say not ready")
        assert body["status"] == "not ready"
        assert "UID file" in body["reason"] and "unreadable" in body["reason"]

        # A SIGHUP while the file is missing is not rejected: a good copy of it exists.
        daemon.proc.send_signal(signal.SIGHUP)
        logs = daemon.wait_for(
            lambda logs: any(e["event"] == "reloaded" or "rejected" in e["event"] for e in logs)
        )
        assert not any("rejected" in e["event"] for e in logs), daemon.stderr()
        still_missing = sweeps(logs) + 2
        logs = daemon.sweeps_done(still_missing)
        assert daemon.proc.poll() is None
        assert readyz(url)[0] == 503

        write_uid_file(uid_file, new)  # back, with other user IDs
        back_at = sweeps(daemon.logs()) + 1  # a sweep may be running with the old copy
        daemon.sweeps_done(back_at + 1)
        _, body = wait_until(lambda: (r := readyz(url))[0] == 200 and r, "ready again")
        assert body == {"status": "ready", "reason": "ok"}
        assert daemon.proc.poll() is None  # it never exited
        assert daemon.stop() == 0

    by_sweep = uids_by_sweep(daemon.records())
    assert all(max(c.values()) == 1 for c in by_sweep.values())  # never a duplicate
    # Every sweep while the file was missing polled the last good list, exactly.
    for sweep in range(missing_from, still_missing + 1):
        assert set(by_sweep[sweep]) == set(old), sweep
    # Once it came back, its new user IDs are polled.
    assert set(by_sweep[back_at + 1]) == set(new)
    assert set(by_sweep[max(by_sweep)]) == set(new)
    logs = daemon.logs()
    unreadable_sweeps = [e for e in logs if e["event"] == "UID file unreadable"]
    assert all(e["using"] == "the last good copy" for e in unreadable_sweeps)
    assert len(unreadable_sweeps) >= still_missing - missing_from + 1


def test_log_rotation_moves_new_records_to_a_new_file(tmp_path: Path, daemons: Any) -> None:
    uids = [f"user-{i:06d}" for i in range(1, 201)]
    with EmulatorProcess("--group", f"{APP}/g:200") as emulator:
        config = base_config(emulator) + target(APP, "g", uids=uids)
        daemon: DaemonProcess = daemons(tmp_path, config)
        daemon.sweeps_done(2)
        rotated = tmp_path / "out.jsonl.1"
        os.rename(daemon.out, rotated)  # logrotate: mv, then postrotate's SIGHUP
        daemon.proc.send_signal(signal.SIGHUP)
        logs = daemon.wait_for(lambda logs: any(e["event"] == "reloaded" for e in logs))
        size_after_reload = rotated.stat().st_size
        daemon.sweeps_done(sweeps(logs) + 3)
        assert daemon.stop() == 0

    assert rotated.stat().st_size == size_after_reload  # closed at the reload: not written since
    old, new = read_lines(rotated), read_lines(daemon.out)
    assert old and new
    old_sweeps = {r["sweep"] for r in old}
    new_sweeps = {r["sweep"] for r in new}
    # At most the sweep running at the `mv` is split, and then cleanly: its first lines in the
    # old file, the rest in the new one.
    assert max(old_sweeps) <= min(new_sweeps)
    assert max(new_sweeps) > max(old_sweeps)
    by_sweep = uids_by_sweep(old + new)
    assert sorted(by_sweep) == list(range(1, max(by_sweep) + 1))
    for sweep, counts in by_sweep.items():  # no record lost or duplicated across the files
        assert set(counts) == set(uids), sweep
        assert max(counts.values()) == 1, sweep


def test_a_removed_output_directory_is_recreated(tmp_path: Path, daemons: Any) -> None:
    uids = [f"user-{i:06d}" for i in range(1, 101)]
    out_dir = tmp_path / "records"
    out = out_dir / "out.jsonl"
    with EmulatorProcess("--group", f"{APP}/g:100") as emulator:
        config = base_config(emulator).replace(
            'path = "out.jsonl"', f"path = {json.dumps(str(out))}"
        )
        config += target(APP, "g", uids=uids)
        daemon: DaemonProcess = daemons(tmp_path, config)
        daemon.sweeps_done(2)
        removed_after = sweeps(daemon.logs())  # counted first: later ones may be recreating
        shutil.rmtree(out_dir)
        removed_at = time.monotonic()
        # The next sweeps' writes (every 0.5 s) notice it within a second and recreate it.
        wait_until(lambda: out.exists() and out.stat().st_size > 0, "a recreated records file")
        recreated_s = time.monotonic() - removed_at
        logs = daemon.wait_for(lambda logs: any("was removed" in e["event"] for e in logs))
        # The sweep that noticed it may still be running (and is in the new file only from
        # that write on): two more complete sweeps after it.
        daemon.sweeps_done(sweeps(logs) + 3)
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0

    assert recreated_s < 0.5 + 1.0 + 2.0, recreated_s  # interval + check interval + CI slack
    warning = next(e for e in daemon.logs() if "was removed" in e["event"])
    assert warning["level"] == "warning" and str(out) in warning["event"]
    records = read_lines(out)
    by_sweep = uids_by_sweep(records)
    first = min(by_sweep)
    assert first > removed_after  # the new file holds only records written after the removal
    complete = [s for s in sorted(by_sweep) if s > first]  # the first may have started earlier
    assert len(complete) >= 2
    for sweep in complete:
        assert set(by_sweep[sweep]) == set(uids) and max(by_sweep[sweep].values()) == 1


def test_a_torn_last_line_is_cut_off_on_restart(tmp_path: Path, daemons: Any) -> None:
    uids = [f"user-{i:06d}" for i in range(1, 51)]
    fragment = b'{"type":"pres'
    with EmulatorProcess("--group", f"{APP}/g:50") as emulator:
        config = base_config(emulator) + target(APP, "g", uids=uids)
        first: DaemonProcess = daemons(tmp_path, config)
        first.sweeps_done(2)
        assert first.stop() == 0
        whole = first.out.read_bytes()
        assert whole.endswith(b"\n")
        with first.out.open("ab") as f:  # a crash cut the last write short
            f.write(fragment)

        second: DaemonProcess = daemons(tmp_path, config)
        logs = second.wait_for(lambda logs: any("torn line" in e["event"] for e in logs))
        second.sweeps_done(sweeps(logs) + 2)
        assert second.stop() == 0

    warning = next(e for e in second.logs() if "torn line" in e["event"])
    assert warning["level"] == "warning"
    assert f"dropped its last {len(fragment)} bytes" in warning["event"]
    assert str(second.out) in warning["event"]
    data = second.out.read_bytes()
    assert data.startswith(whole)  # everything before the fragment kept as it was
    records = read_lines(second.out)  # every line parses
    assert len(records) > len(whole.split(b"\n")) - 1
    by_sweep = uids_by_sweep(records)
    assert sorted(by_sweep) == list(range(1, max(by_sweep) + 1))  # numbers continue
    for counts in by_sweep.values():
        assert set(counts) == set(uids) and max(counts.values()) == 1
