"""Every presence backend end to end against the emulator (issue 15): the legacy
``BatchGetOnlineUsers`` and the current family's ``CheckLiveMessageUsersInGroup`` and
``CheckLiveMessageUsersOnline``, through the library, ``poller once``, the daemon and
``check-config``. What is asserted is what a user sees: records, exit codes, logs, readiness,
metrics, and the emulator's own per-action counters (never wall-clock speed)."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from poller import Poller, Target
from poller.config import RetryConfig
from poller.core.apis import APP_ONLINE_API, IN_GROUP_API, LEGACY_API
from poller.core.errors import InvalidRequestError
from poller.emulator.process import EmulatorProcess
from tests.daemons import (
    DaemonProcess,
    base_config,
    http_get,
    readyz,
    sweeps_before,
    target,
    wait_until,
)

pytestmark = pytest.mark.slow

SH, SG = "cn-shanghai", "ap-southeast-1"
LIST = "ListLiveMessageGroupUsers"
SECRET = "demo-secret"
# The emulator's (the cloud's) messages for the current family's errors.
DC_MISMATCH = (
    'The specified parameter "DataCenter" is not valid: '
    "it must be the data center the app was created in."
)
NO_APP = "The specified app 'nope' does not exist."
NO_GROUP = "The specified group 'nope' does not exist."


def uid_range(first: int, last: int) -> list[str]:
    return [f"user-{i:06d}" for i in range(first, last + 1)]


def online_of(emu: EmulatorProcess, app: str, group: str) -> dict[str, bool]:
    return {m["user_id"]: m["online"] for m in emu.members(app, group)["members"]}


def requests_of(emu: EmulatorProcess, action: str) -> int:
    return int(emu.action_stats(action)["requests_total"])


async def sweep(emu: EmulatorProcess, tgt: Target, uids: list[str], **changes: Any) -> list[Any]:
    """One library sweep over ``uids``: its records as plain dicts."""
    async with Poller(emu.poller_config(**changes)) as poller:
        return [cast(dict[str, Any], r) async for r in poller.sweep(tgt, uids)]


def one_per_uid(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    counts = Counter(r["uid"] for r in records)
    assert counts and max(counts.values()) == 1, counts.most_common(3)
    return {r["uid"]: r for r in records}


@pytest.fixture(scope="module")
def live() -> Iterator[EmulatorProcess]:
    """One emulator for the library tests (each reads the per-action counters as deltas):
    two apps of the current family in different data centers, a legacy app, a group of 120
    and a super group (more than 2,000 members)."""
    with EmulatorProcess(
        "--app",
        f"live:{SH}",
        "--app",
        f"live-sg:{SG}",
        "--group",
        "live/room:95",
        "--group",
        "live/big:120",
        "--group",
        "live/super:2001",
        "--group",
        "live-sg/room:30",
        "--group",
        "live-sg/lobby:5",
        "--group",
        "demo-app/demo-group:10",
    ) as emu:
        yield emu


# ------------------------------------------------------------------------- 1. library sweeps


async def test_in_group_sweep_one_record_per_uid_at_most_ten_ids_per_request(
    live: EmulatorProcess,
) -> None:
    members = online_of(live, "live", "room")
    assert 0 < sum(members.values()) < len(members)  # both states present
    uids = [*members, "stranger-1", "stranger-2", "用户1", "a b", "x%y"]  # 100 UIDs
    before = requests_of(live, IN_GROUP_API)
    legacy_before = requests_of(live, LEGACY_API)
    records = await sweep(live, Target("live", "room", IN_GROUP_API, SH), uids)
    got = one_per_uid(records)
    assert set(got) == set(uids)
    for uid, r in got.items():
        assert r["type"] == "presence", r
        assert (r["api"], r["app_id"], r["group_id"]) == (IN_GROUP_API, "live", "room")
        assert r["join_time"] is None
        assert r["online"] is members.get(uid, False), r  # "in the group now"
    assert requests_of(live, IN_GROUP_API) - before == math.ceil(len(uids) / 10)
    assert requests_of(live, LEGACY_API) == legacy_before  # nothing on the legacy action
    assert live.action_stats(IN_GROUP_API)["throttled_total"] == 0


async def test_app_online_sweep_is_app_wide_with_no_group(live: EmulatorProcess) -> None:
    room = online_of(live, "live-sg", "room")
    live.change_members("live-sg", "lobby", join=["only-in-lobby"])  # online in another group
    lobby = online_of(live, "live-sg", "lobby")
    live.change_members("live", "room", join=["other-app-only"])  # online, but in another app
    uids = [*room, "only-in-lobby", "other-app-only", "nobody"]  # 33 UIDs
    before = requests_of(live, APP_ONLINE_API)
    records = await sweep(live, Target("live-sg", None, APP_ONLINE_API, SG), uids)
    got = one_per_uid(records)
    assert set(got) == set(uids)
    for uid, r in got.items():
        assert r["type"] == "presence", r
        assert (r["api"], r["app_id"], r["group_id"]) == (APP_ONLINE_API, "live-sg", None)
        assert r["join_time"] is None
        assert r["online"] is (room.get(uid, False) or lobby.get(uid, False)), r
    assert got["only-in-lobby"]["online"] is True
    assert got["other-app-only"]["online"] is False and got["nobody"]["online"] is False
    assert requests_of(live, APP_ONLINE_API) - before == math.ceil(len(uids) / 10)


# ------------------------------------------------------------------------- 2. errors


@pytest.mark.parametrize(
    ("tgt", "code", "status", "message"),
    [
        (Target("live", "room", IN_GROUP_API, SG), "InputInvalid", 400, DC_MISMATCH),
        (Target("live", None, APP_ONLINE_API, SG), "InputInvalid", 400, DC_MISMATCH),
        (Target("nope", "room", IN_GROUP_API, SH), "ResourceNotExist", 404, NO_APP),
        (Target("nope", None, APP_ONLINE_API), "ResourceNotExist", 404, NO_APP),
        (Target("live", "nope", IN_GROUP_API, SH), "ResourceNotExist", 404, NO_GROUP),
    ],
    ids=[
        "in-group-dc-mismatch",
        "app-online-dc-mismatch",
        "in-group-unknown-app",
        "app-online-unknown-app",
        "in-group-unknown-group",
    ],
)
async def test_invalid_requests_become_error_records_without_retry(
    live: EmulatorProcess, tgt: Target, code: str, status: int, message: str
) -> None:
    uids = uid_range(1, 25)
    before = requests_of(live, tgt.api)
    records = await sweep(live, tgt, uids)
    got = one_per_uid(records)
    assert set(got) == set(uids)
    for r in records:
        assert r["type"] == "error", r
        assert (r["api"], r["app_id"], r["group_id"]) == (tgt.api, tgt.app_id, tgt.group_id)
        assert (r["code"], r["http_status"], r["attempts"]) == (code, status, 1), r
        assert r["message"] == message
        assert r["request_id"]
    assert requests_of(live, tgt.api) - before == 3  # one per batch: never retried


def run_poller(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "poller", *args],
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    assert SECRET not in out and SECRET not in err
    return proc.returncode, out, err


def run_once(tmp_path: Path, config_toml: str, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    config = tmp_path / "poller.toml"
    config.write_text(config_toml, "utf-8")
    out = tmp_path / "out.jsonl"
    out.unlink(missing_ok=True)
    code, _, stderr = run_poller(
        tmp_path, "once", "--config", str(config), "--output", str(out), *args
    )
    data = out.read_bytes() if out.exists() else b""
    return code, [orjson.loads(line) for line in data.split(b"\n") if line], stderr


def test_a_key_not_granted_the_app_exits_77(tmp_path: Path) -> None:
    with EmulatorProcess(
        "--access-key",
        f"demo-key:{SECRET}:other-app",
        "--app",
        f"live:{SH}",
        "--group",
        "live/room:20",
    ) as emu:
        uids = ",".join(uid_range(1, 15))
        for tgt, api in (("live/room", IN_GROUP_API), ("live", APP_ONLINE_API)):
            code, records, stderr = run_once(
                tmp_path,
                emu.config_toml(),
                "--target",
                tgt,
                "--api",
                api,
                "--data-center",
                SH,
                "--uids",
                uids,
            )
            assert code == 77, stderr
            assert "permission denied" in stderr
            assert len(one_per_uid(records)) == 15
            for r in records:
                assert (r["type"], r["code"], r["http_status"]) == ("error", "NoAuth", 403), r
                assert r["attempts"] == 1 and r["api"] == api
            assert requests_of(emu, api) == 2  # no retry


async def test_server_errors_are_retried_until_every_uid_is_answered() -> None:
    with EmulatorProcess(
        "--app",
        f"live:{SH}",
        "--group",
        "live/room:200",
        "--faults",
        "server_error=0.3",
        "--fault-seed",
        "7",
    ) as emu:
        members = online_of(emu, "live", "room")
        retry = RetryConfig(max_attempts=10, budget_ratio=1.0, backoff_cap_s=0.5)
        records = await sweep(
            emu, Target("live", "room", IN_GROUP_API, SH), [*members], retry=retry
        )
        stats = emu.action_stats(IN_GROUP_API)
        faults = emu.stats()["faults_injected"]
    got = one_per_uid(records)
    assert set(got) == set(members)
    assert all(r["type"] == "presence" for r in records), [r for r in records if "code" in r][:3]
    assert {uid: r["online"] for uid, r in got.items()} == members
    served = stats["responses_by_code"].get("ServerError", 0)
    assert served > 0 and faults.get("server_error", 0) == served, (stats, faults)
    assert stats["requests_total"] == 20 + served  # each ServerError retried once more


# ------------------------------------------------------------------------- 3. discovery


async def test_discover_pages_to_the_end_then_polls_exactly_the_members(
    live: EmulatorProcess,
) -> None:
    tgt = Target("live", "big", IN_GROUP_API, SH)
    members = online_of(live, "live", "big")
    lists_before = requests_of(live, LIST)
    async with Poller(live.poller_config()) as poller:
        listed = await poller.discover(tgt)
    assert len(listed) == 120 and set(listed) == set(members)
    assert requests_of(live, LIST) - lists_before == 3  # 50 + 50 + 20: pages to the end
    before = requests_of(live, IN_GROUP_API)
    got = one_per_uid(await sweep(live, tgt, listed))
    assert {uid: r["online"] for uid, r in got.items()} == members
    assert requests_of(live, IN_GROUP_API) - before == 12


async def test_discovering_a_super_group_raises_the_clouds_error(live: EmulatorProcess) -> None:
    before = requests_of(live, LIST)
    async with Poller(live.poller_config()) as poller:
        with pytest.raises(InvalidRequestError) as info:
            await poller.discover(Target("live", "super", IN_GROUP_API, SH))
    assert info.value.code == "InputInvalid" and info.value.http_status == 400
    assert "super group" in info.value.message and "'super'" in info.value.message
    assert requests_of(live, LIST) - before == 1  # not retried


def sweeps_logged(logs: list[dict[str, Any]]) -> int:
    return sum(e["event"] == "sweep" for e in logs)


def metric(metrics_url: str, name: str) -> float:
    status, body = http_get(metrics_url)
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"{name} not in /metrics")


def test_daemon_keeps_the_last_list_when_the_group_becomes_a_super_group(
    tmp_path: Path, daemons: Any
) -> None:
    with EmulatorProcess("--app", f"live:{SH}", "--group", "live/big:120") as emu:
        config = (
            base_config(emu)
            + '\n[metrics]\nlisten = "127.0.0.1:0"\n'
            + target("live", "big", api=IN_GROUP_API, data_center=SH, discover=True)
        )
        daemon: DaemonProcess = daemons(tmp_path, config)
        logs = daemon.sweeps_done(1)
        url = next(e["url"] for e in logs if e["event"] == "metrics listening")
        original = set(online_of(emu, "live", "big"))
        assert len(original) == 120
        wait_until(lambda: readyz(url)[0] == 200, "ready after the first sweep")

        crowd = [f"crowd-{i:04d}" for i in range(1, 1901)]
        emu.change_members("live", "big", join=crowd)  # 2,020 members: the cloud won't list it
        logs = daemon.wait_for(lambda logs: any(e["event"] == "discovery failed" for e in logs))
        failed = next(e for e in logs if e["event"] == "discovery failed")
        kept_in = sweeps_before(logs, lambda e: e["event"] == "discovery failed") + 1
        daemon.sweeps_done(kept_in)
        _, body = wait_until(lambda: (r := readyz(url))[0] == 503 and r, "/readyz not ready")
        assert "super group" in body["reason"], body
        assert metric(url, "poller_discovery_errors_total") >= 1

        emu.change_members("live", "big", leave=crowd)  # listable again
        back_from = sweeps_logged(daemon.logs()) + 2  # a sweep may be running with the old list
        daemon.sweeps_done(back_from)
        wait_until(lambda: readyz(url)[0] == 200, "ready again once the group can be listed")
        assert daemon.stop() == 0

    assert failed["level"] == "warning"
    assert "InputInvalid" in failed["error"] and "super group" in failed["error"]
    assert failed["using"] == "the last member list"
    assert "live/big" in failed["target"]
    by_sweep: dict[int, set[str]] = {}
    records = daemon.records()
    last = max(r["sweep"] for r in records)
    for r in records:
        assert r["api"] == IN_GROUP_API, r
        if r["type"] == "error":  # only the sweep that SIGTERM cut short
            assert (r["sweep"], r["code"]) == (last, "Cancelled"), r
            continue
        assert r["type"] == "presence", r
        assert r["uid"] not in by_sweep.setdefault(r["sweep"], set()), "duplicate in a sweep"
        by_sweep[r["sweep"]].add(r["uid"])
    assert by_sweep[1] == original
    assert by_sweep[kept_in] == original  # the last known list, never a partial one
    assert by_sweep[back_from] == original


# ------------------------------------------------------------------------- 4. budgets


def test_legacy_and_in_group_targets_each_keep_to_their_own_budget(tmp_path: Path) -> None:
    legacy_uids, live_uids = uid_range(1, 4000), uid_range(1, 1000)
    (tmp_path / "legacy.txt").write_text("\n".join(legacy_uids) + "\n", "utf-8")
    (tmp_path / "live.txt").write_text("\n".join(live_uids) + "\n", "utf-8")
    with EmulatorProcess(
        "--group",
        "demo-app/demo-group:4000",
        "--app",
        f"live:{SH}",
        "--group",
        "live/room:1000",
    ) as emu:
        config = (
            emu.config_toml()
            + target("demo-app", "demo-group", uids_file=str(tmp_path / "legacy.txt"))
            + target(
                "live",
                "room",
                api=IN_GROUP_API,
                data_center=SH,
                uids_file=str(tmp_path / "live.txt"),
            )
        )
        code, records, stderr = run_once(tmp_path, config)
        legacy = emu.action_stats(LEGACY_API)
        in_group = emu.action_stats(IN_GROUP_API)
        legacy_online = online_of(emu, "demo-app", "demo-group")
        live_online = online_of(emu, "live", "room")
    assert code == 0, stderr
    by_api: dict[str, list[dict[str, Any]]] = {LEGACY_API: [], IN_GROUP_API: []}
    for r in records:
        assert r["type"] == "presence", r
        by_api[r["api"]].append(r)
    old, new = one_per_uid(by_api[LEGACY_API]), one_per_uid(by_api[IN_GROUP_API])
    assert set(old) == set(legacy_uids) and set(new) == set(live_uids)
    assert {u: r["online"] for u, r in old.items()} == legacy_online
    assert {u: r["online"] for u, r in new.items()} == live_online
    assert all(isinstance(r["join_time"], int) for r in old.values())
    assert all(r["join_time"] is None for r in new.values())
    assert (legacy["requests_total"], in_group["requests_total"]) == (200, 100)
    assert legacy["max_requests_in_any_1s_window"] <= 100, legacy
    assert in_group["max_requests_in_any_1s_window"] <= 50, in_group
    assert legacy["throttled_total"] == 0 and in_group["throttled_total"] == 0
    # Side by side, not one after the other: the two targets' polling overlapped in time.
    old_times = [r["polled_at"] for r in old.values()]
    new_times = [r["polled_at"] for r in new.values()]
    assert min(new_times) < max(old_times) and min(old_times) < max(new_times)


# ------------------------------------------------------------------------- 5. daemon, config


def test_daemon_change_records_of_an_in_group_target(tmp_path: Path, daemons: Any) -> None:
    with EmulatorProcess("--app", f"live:{SH}", "--group", "live/room:20") as emu:
        members = online_of(emu, "live", "room")
        on = [u for u, o in members.items() if o]
        off = [u for u, o in members.items() if not o]
        assert len(on) >= 3 and len(off) >= 1
        uids = [*on[:3], *off[:3], "stranger"]  # one request per sweep: one snapshot
        config = base_config(emu, emit="changes") + target(
            "live", "room", api=IN_GROUP_API, data_center=SH, uids=uids
        )
        daemon: DaemonProcess = daemons(tmp_path, config)
        daemon.sweeps_done(1)
        # Two leave-like flips, one member coming online, one re-join of an online member
        # (no join time in this family: not a change).
        emu.change_members("live", "room", offline=on[:2], join=[off[0], on[2]])
        wait_until(lambda: len(daemon.records()) >= 3, "the first change records")
        emu.change_members("live", "room", join=[on[0]])
        wait_until(lambda: len(daemon.records()) >= 4, "the flip back")
        daemon.sweeps_done(sweeps_logged(daemon.logs()) + 2)  # nothing more comes
        assert daemon.stop() == 0
    records = daemon.records()
    for r in records:
        assert r["type"] == "change", r
        assert (r["api"], r["app_id"], r["group_id"]) == (IN_GROUP_API, "live", "room")
        assert r["join_time"] is None and isinstance(r["polled_at"], int)
    got = sorted((r["uid"], r["version"], r["online"], r["previous_online"]) for r in records)
    assert got == sorted(
        [
            (on[0], 1, False, True),
            (on[1], 1, False, True),
            (off[0], 1, True, False),
            (on[0], 2, True, False),
        ]
    )
    first = {r["sweep"] for r in records if r["version"] == 1}
    [flip_back] = [r for r in records if r["version"] == 2]
    assert len(first) == 1 and flip_back["sweep"] > first.pop()


def test_check_config_renders_api_and_data_center(tmp_path: Path) -> None:
    path = tmp_path / "poller.toml"
    path.write_text(
        '[api]\nendpoint = "127.0.0.1:9"\nprotocol = "http"\n\n'
        f'[credentials]\naccess_key_id = "demo-key"\naccess_key_secret = "{SECRET}"\n'
        "\n[limits]\nin_group_qps = 40\n"
        + target("demo-app", "demo-group", uids=["u1"])
        + target("live", "room", api=IN_GROUP_API, data_center=SH, uids=["u1"])
        + f'\n[[targets]]\napp_id = "live-sg"\napi = "{APP_ONLINE_API}"\n'
        f'data_center = "{SG}"\nuids = ["u1"]\n',
        "utf-8",
    )
    code, out, err = run_poller(tmp_path, "check-config", str(path))
    assert code == 0, err
    assert "in_group_qps = 40.0" in out and "app_online_qps = 50.0" in out
    assert "\nqps = 100.0" in out
    blocks = out.split("[[targets]]")[1:]
    assert len(blocks) == 3
    legacy, in_group, app_wide = (b.split("\n\n")[0] for b in blocks)
    assert f'api = "{LEGACY_API}"' in legacy and "data_center" not in legacy
    assert f'api = "{IN_GROUP_API}"' in in_group and f'data_center = "{SH}"' in in_group
    assert 'group_id = "room"' in in_group
    assert f'api = "{APP_ONLINE_API}"' in app_wide and f'data_center = "{SG}"' in app_wide
    assert "group_id" not in app_wide
