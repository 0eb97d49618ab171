"""``poller once`` end to end: the CLI in one process, the emulator in another."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from poller.emulator.process import EmulatorProcess

pytestmark = pytest.mark.slow

SECRET = "demo-secret"


def run_once(
    tmp_path: Path, config_toml: str, *args: str, timeout: float = 120
) -> tuple[int, list[dict[str, Any]], str]:
    config = tmp_path / "poller.toml"
    config.write_text(config_toml, "utf-8")
    out = tmp_path / "out.jsonl"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "poller",
            "once",
            "--config",
            str(config),
            "--output",
            str(out),
            *args,
        ],
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    records = (
        [orjson.loads(line) for line in out.read_bytes().split(b"\n") if line]
        if out.exists()
        else []
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    assert SECRET not in stderr and SECRET not in proc.stdout.decode("utf-8", "replace")
    return proc.returncode, records, stderr


def once_over_file(
    tmp_path: Path, emulator: EmulatorProcess, uids_text: str
) -> tuple[int, list[dict[str, Any]], str]:
    """``poller once`` over ``uids_text`` written to a UID file, for demo-app/demo-group."""
    (tmp_path / "uids.txt").write_text(uids_text, "utf-8")
    return run_once(
        tmp_path,
        emulator.config_toml() + '\n[[targets]]\napp_id = "demo-app"\ngroup_id = "demo-group"\n',
        "--uids-file",
        str(tmp_path / "uids.txt"),
    )


def one_per_uid(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    counts = Counter(r["uid"] for r in records)
    assert counts and max(counts.values()) == 1
    return {r["uid"]: r for r in records}


def test_ten_thousand_uids_at_the_ceiling_never_over_it(tmp_path: Path) -> None:
    uids = [f"user-{i:06d}" for i in range(1, 10_001)]
    with EmulatorProcess("--qps", "100", "--group", "demo-app/demo-group:10000") as emulator:
        code, records, stderr = once_over_file(tmp_path, emulator, "\n".join(uids) + "\n")
        stats = emulator.stats()["total"]
        members = {m["user_id"]: m for m in emulator.members("demo-app", "demo-group")["members"]}
    assert code == 0, stderr
    got = one_per_uid(records)
    assert set(got) == set(uids)
    assert all(r["type"] == "presence" for r in records)
    for uid in ("user-000001", "user-004242", "user-010000"):
        assert got[uid]["online"] == members[uid]["online"]
    assert stats["requests_total"] == 500
    assert stats["max_requests_in_any_1s_window"] <= 100
    assert stats["throttled_total"] == 0
    print(
        f"\n10,000 UIDs: {stderr.strip().splitlines()[-1]}; emulator max window "
        f"{stats['max_requests_in_any_1s_window']}"
    )


def test_adapts_when_the_account_budget_is_lower_than_configured(tmp_path: Path) -> None:
    """The account admits 60 requests/s, poller is configured for 100: every UID still gets its
    answer (throttled requests are retried up to max_throttled_attempts, spending no retry
    budget), and the meter learns the lower budget in the 7 s the sweep takes. Without
    adapting, about 40 % of the requests would be throttled; while the meter learns (its cuts
    are trials, since throttles may be noise) some are. After the first 10 s fewer than 2 %
    are: see tests/test_ratelimit.py and benchmarks/throttles.py."""
    uids = [f"user-{i:06d}" for i in range(1, 8001)]
    with EmulatorProcess("--qps", "60", "--group", "demo-app/demo-group:8000") as emulator:
        code, records, stderr = once_over_file(tmp_path, emulator, "\n".join(uids))
        stats = emulator.stats()["total"]
    assert code == 0, stderr
    assert set(one_per_uid(records)) == set(uids)
    assert all(r["type"] == "presence" for r in records)
    assert stats["throttled_total"] < 0.2 * stats["requests_total"], stats
    print(f"\nqps 60: {stats['throttled_total']} of {stats['requests_total']} throttled")


def test_invalid_ids_never_sent_and_special_ids_round_trip(tmp_path: Path) -> None:
    special = ["用户1", "a~b", "c*d", "e f", "g+h", "i/j", "k=l", "m%n", "o&p", "~*+/= %&"]
    invalid = ["has,comma", "ctl\x01char", "x" * 200]
    lines = ["# a comment", "", *special, *invalid, "   ", "user-000001", ""]
    with EmulatorProcess("--group", "demo-app/demo-group:10", "--online-fraction", "1") as emulator:
        emulator.change_members("demo-app", "demo-group", join=special)
        code, records, stderr = once_over_file(tmp_path, emulator, "\n".join(lines))
        stats = emulator.stats()["total"]
    assert code == 0, stderr
    got = one_per_uid(records)
    assert set(got) == {*special, *invalid, "user-000001"}
    for uid in special:
        assert got[uid]["type"] == "presence" and got[uid]["online"] is True, got[uid]
        assert got[uid]["join_time"] > 0
    for uid in invalid:
        assert got[uid]["type"] == "error" and got[uid]["code"] == "InvalidUserId"
        assert "uids.txt:" in got[uid]["message"]
    assert stats["requests_total"] == 1  # 11 valid IDs: one request, the invalid ones never sent


def test_empty_id_from_the_command_line_is_an_error_record(tmp_path: Path) -> None:
    with EmulatorProcess() as emulator:
        code, records, stderr = run_once(
            tmp_path,
            emulator.config_toml(),
            "--target",
            "demo-app/demo-group",
            "--uids",
            "user-000001,,user-000002",
        )
    assert code == 0, stderr
    got = one_per_uid(records)
    assert got[""]["code"] == "InvalidUserId" and got[""]["message"] == "user ID is empty"
    assert got["user-000002"]["type"] == "presence"


def test_an_input_of_only_invalid_ids_exits_65_having_sent_nothing(tmp_path: Path) -> None:
    with EmulatorProcess() as emulator:
        code, records, stderr = run_once(
            tmp_path,
            emulator.config_toml(),
            "--target",
            "demo-app/demo-group",
            "--uids",
            ",bad\tid,a\u200bb",
        )
        sent = emulator.stats()["total"]["requests_total"]
    assert code == 65, stderr
    assert "nothing to poll" in stderr
    assert {r["code"] for r in records} == {"InvalidUserId"} and sent == 0


def test_forbidden_app_is_isolated_and_exit_77_when_everything_is_forbidden(
    tmp_path: Path,
) -> None:
    args = (
        "--access-key",
        "ram-user:ram-secret:app-ok",
        "--group",
        "app-ok/g:40",
        "--group",
        "app-denied/g:40",
    )
    two_targets = (
        '\n[[targets]]\napp_id = "app-ok"\ngroup_id = "g"\nuids = '
        + str([f"user-{i:06d}" for i in range(1, 41)]).replace("'", '"')
        + '\n\n[[targets]]\napp_id = "app-denied"\ngroup_id = "g"\nuids = '
        + str([f"user-{i:06d}" for i in range(1, 41)]).replace("'", '"')
        + "\n"
    )
    with EmulatorProcess(*args) as emulator:
        toml = emulator.config_toml("ram-user", "ram-secret")
        code, records, stderr = run_once(tmp_path, toml + two_targets)
        assert code == 0, stderr
        ok = [r for r in records if r["app_id"] == "app-ok"]
        denied = [r for r in records if r["app_id"] == "app-denied"]
        assert len(ok) == 40 and all(r["type"] == "presence" for r in ok)
        assert len(denied) == 40
        assert all(
            r["code"] == "Forbidden" and r["attempts"] == 1 and r["http_status"] == 403
            for r in denied
        )
        code, records, stderr = run_once(
            tmp_path, toml, "--target", "app-denied/g", "--uids", "user-000001,user-000002"
        )
    assert code == 77, stderr
    assert "permission denied" in stderr.lower()


def test_wrong_secret_exits_78_and_never_shows_the_secret(tmp_path: Path) -> None:
    with EmulatorProcess() as emulator:
        code, records, stderr = run_once(
            tmp_path,
            emulator.config_toml("demo-key", "not-the-" + SECRET),
            "--target",
            "demo-app/demo-group",
            "--uids",
            "user-000001,user-000002",
        )
        stats = emulator.stats()["total"]
    assert code == 78
    assert "signature" in stderr.lower() and "rejected" in stderr.lower()
    assert "not-the-" not in stderr
    assert {r["code"] for r in records} == {"SignatureDoesNotMatch"}
    assert stats["requests_total"] == 1  # no retry of a rejected signature


def test_bad_config_exits_78_naming_file_and_key(tmp_path: Path) -> None:
    code, _, stderr = run_once(tmp_path, '[limits]\nqps = "fast"\n', "--uids", "a")
    assert code == 78
    assert "poller.toml" in stderr and "limits.qps" in stderr


def test_once_discovers_members_of_a_discovery_target(tmp_path: Path) -> None:
    with EmulatorProcess("--group", "demo-app/lobby:75") as emulator:
        emulator.change_members("demo-app", "lobby", join=["late-joiner"])
        code, records, stderr = run_once(
            tmp_path,
            emulator.config_toml()
            + '\n[[targets]]\napp_id = "demo-app"\ngroup_id = "lobby"\ndiscover = true\n',
        )
    assert code == 0, stderr
    assert set(one_per_uid(records)) == {f"user-{i:06d}" for i in range(1, 76)} | {"late-joiner"}


def test_check_config_masks_secrets_and_rejects_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[credentials]\naccess_key_id = "AKID"\naccess_key_secret = "' + SECRET + '"\n'
        '[[targets]]\napp_id = "a"\ngroup_id = "g"\nuids = ["u1"]\n',
        "utf-8",
    )
    ok = subprocess.run(
        [sys.executable, "-m", "poller", "check-config", str(good)],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert ok.returncode == 0
    assert b'access_key_id = "AKID"' in ok.stdout and b"****" in ok.stdout
    assert SECRET.encode() not in ok.stdout + ok.stderr
    assert b"qps = 100.0" in ok.stdout  # defaults are shown too
    bad = tmp_path / "bad.toml"
    bad.write_text("[[targets]]\napp_id = 7\n", "utf-8")
    fail = subprocess.run(
        [sys.executable, "-m", "poller", "check-config", str(bad)],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert fail.returncode == 78
    assert b"bad.toml" in fail.stderr and b"targets[0].app_id" in fail.stderr


# -- standard output closed (issue 12) ---------------------------------------------------------

# `exec 1>&-` closes fd 1 before Python starts (subprocess.DEVNULL would be an open fd).
CLOSED_STDOUT = ("sh", "-c", 'exec 1>&- ; exec "$0" "$@"', sys.executable, "-m", "poller")


def test_once_with_stdout_closed_refuses_records_to_stdout_and_writes_to_output(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    once = ("once", "--target", "demo-app/demo-group", "--uids", "user-000001")
    with EmulatorProcess() as emulator:
        config = tmp_path / "poller.toml"
        config.write_text(emulator.config_toml(), "utf-8")
        refused = subprocess.run(
            [*CLOSED_STDOUT, *once, "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        written = subprocess.run(
            [*CLOSED_STDOUT, *once, "--config", str(config), "--output", str(out), "-q"],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        # stdin and stderr closed too: still no abort, and the records reach the file
        closed_in_err = ("sh", "-c", 'exec 0<&- 2>&- ; exec "$0" "$@"', *CLOSED_STDOUT[3:])
        quiet = subprocess.run(
            [*closed_in_err, *once, "--config", str(config), "--output", str(out)],
            stdout=subprocess.PIPE,
            timeout=60,
        )
    assert refused.returncode == 78, refused.stderr
    assert refused.stderr == b"poller: error: stdout is closed; use --output FILE\n"
    assert written.returncode == 0, written.stderr
    assert b"Assertion" not in written.stderr and written.stderr == b""
    assert quiet.returncode == 0 and quiet.stdout == b""
    records = [orjson.loads(line) for line in out.read_bytes().split(b"\n") if line]
    assert [(r["uid"], r["type"]) for r in records] == [("user-000001", "presence")] * 2


# -- undecodable IDs stay distinguishable (issue 12) -------------------------------------------


def test_undecodable_id_and_its_escaped_text_are_two_ids(tmp_path: Path) -> None:
    (tmp_path / "uids.txt").write_bytes(b"\xff\n\\xff\n\xef\xbf\xbd\nok\xfe\xffid\nuser-000001\n")
    with EmulatorProcess() as emulator:
        code, records, stderr = run_once(
            tmp_path,
            emulator.config_toml(),
            "--target",
            "demo-app/demo-group",
            "--uids-file",
            str(tmp_path / "uids.txt"),
        )
    assert code == 0, stderr
    by_id = Counter((r["uid"], r.get("uid_bytes")) for r in records)
    assert set(by_id.values()) == {1} and len(records) == 5
    got = {(r["uid"], r.get("uid_bytes")): r for r in records}
    raw_ff = got["\ufffd", "ff"]
    assert raw_ff["type"] == "error" and raw_ff["code"] == "InvalidUserId"
    assert "uids.txt:1" in raw_ff["message"]
    assert got["ok\ufffd\ufffdid", b"ok\xfe\xffid".hex()]["code"] == "InvalidUserId"
    for text in ("\\xff", "\ufffd", "user-000001"):  # valid IDs: sent, no uid_bytes
        assert got[text, None]["type"] == "presence", got[text, None]
