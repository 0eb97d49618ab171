"""The engine's public lifecycle and identity: Poller open/close and reconfigure, one Attempt
event per request (discovery included), the work builder, targets keyed by API and group."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from poller.config import ApiConfig, LimitsConfig, PollerConfig, RetryConfig, TargetConfig
from poller.core.changes import ChangeTracker
from poller.core.errors import ConfigError, PollerError, ServerError
from poller.core.records import Batch, Record, Target
from poller.core.stats import Attempt
from poller.emulator import EmulatorConfig, EmulatorServer, FaultRates, GroupSpec
from poller.engine.poller import Poller
from poller.engine.sources import UidFile
from poller.engine.work import Plan, WorkBuilder, plan_targets
from poller.wire.signing import SigningCredentials
from tests.conftest import FakeClock, InstantRateMeter, ScriptedFetcher

TARGET = Target("app", "group")


def make(fetcher: ScriptedFetcher, config: PollerConfig | None = None, **kw: object) -> Poller:
    return Poller(
        config or PollerConfig(),
        fetcher=fetcher,
        rate_meter=InstantRateMeter(),
        clock=FakeClock(),
        **kw,  # type: ignore[arg-type]
    )


async def test_a_poller_opens_once_and_refuses_use_outside_its_block() -> None:
    poller = make(ScriptedFetcher())
    with pytest.raises(RuntimeError, match="outside 'async with'"):
        await anext(poller.sweep_batches([(TARGET, ["u1"])]))
    async with poller:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        await poller.__aenter__()
    with pytest.raises(RuntimeError, match="outside 'async with'"):
        await poller.reconfigure(PollerConfig())


async def test_every_request_is_one_event_and_the_sweep_counts_the_same() -> None:
    def script(batch: Batch, attempt: int) -> PollerError | None:
        return ServerError("x", code="InternalError", http_status=500) if attempt == 1 else None

    events: list[Attempt] = []
    fetcher = ScriptedFetcher(script)
    async with make(fetcher, on_attempt=events.append) as poller:
        records = [r async for r in poller.sweep(TARGET, [f"u{i}" for i in range(60)])]
    stats = poller.last
    assert stats is not None and len(records) == 60
    assert len(events) == len(fetcher.calls) == stats.requests == 6
    assert sum(e.retry_of == "InternalError" for e in events) == stats.retries == 3
    assert {e.sweep for e in events} == {1} and {e.action for e in events} == {TARGET.api}


async def test_reconfigure_between_sweeps_applies_new_retry_settings() -> None:
    def script(batch: Batch, attempt: int) -> PollerError | None:
        return ServerError("x", code="InternalError", http_status=500)

    fetcher = ScriptedFetcher(script)
    async with make(fetcher, PollerConfig(retry=RetryConfig(max_attempts=2))) as poller:
        first = [r async for r in poller.sweep(TARGET, ["u1"])]
        meter = poller.rate_meter
        await poller.reconfigure(
            PollerConfig(retry=RetryConfig(max_attempts=3), limits=LimitsConfig(qps=50))
        )
        second = [r async for r in poller.sweep(TARGET, ["u1"])]
        assert poller.rate_meter is meter  # a caller's own meter is kept as it is
        assert poller.config.retry.max_attempts == 3
    assert first[0]["type"] == "error" and first[0].get("attempts") == 2
    assert second[0]["type"] == "error" and second[0].get("attempts") == 3


async def test_reconfigure_during_a_sweep_is_refused() -> None:
    async with make(ScriptedFetcher()) as poller:
        sweep = poller.sweep_batches([(TARGET, ["u1", "u2"])])
        await anext(sweep)
        with pytest.raises(RuntimeError, match="between sweeps"):
            await poller.reconfigure(PollerConfig())
        await sweep.aclose()


async def test_each_api_polls_in_its_batch_size_on_its_own_meter() -> None:
    fetcher = ScriptedFetcher()
    uids = [f"u{i:02d}" for i in range(25)]
    in_group = Target("app", "group", api="CheckLiveMessageUsersInGroup", data_center="cn-x")
    app_wide = Target("app", api="CheckLiveMessageUsersOnline")
    async with make(fetcher) as poller:
        legacy = [r async for r in poller.sweep(TARGET, uids)]
        assert [len(b.uids) for b in fetcher.calls] == [20, 5]
        assert {(r["api"], r["group_id"], r["join_time"]) for r in legacy} == {  # type: ignore[typeddict-item]
            ("BatchGetOnlineUsers", "group", 3)
        }
        fetcher.calls.clear()
        newer = [r async for r in poller.sweep(in_group, uids)]
        assert [len(b.uids) for b in fetcher.calls] == [10, 10, 5]
        # the current family's answers have no join time: the records say null
        assert {(r["api"], r["join_time"]) for r in newer} == {  # type: ignore[typeddict-item]
            ("CheckLiveMessageUsersInGroup", None)
        }
        whole_app = [r async for r in poller.sweep(app_wide, uids[:3])]
        assert {r["group_id"] for r in whole_app} == {None}
        meters = {poller.meter_for(t.api) for t in (TARGET, in_group, app_wide)}
        assert len(meters) == 3 and poller.rate_meter is poller.meter_for(TARGET.api)


def test_target_identity_is_api_app_and_group() -> None:
    in_group = Target("app", "g", api="CheckLiveMessageUsersInGroup", data_center="cn-shanghai")
    assert in_group.key == ("CheckLiveMessageUsersInGroup", "app", "g")
    assert in_group == Target("app", "g", api="CheckLiveMessageUsersInGroup")  # not the DC
    assert in_group != Target("app", "g")
    app_wide = Target("app", api="CheckLiveMessageUsersOnline")
    assert app_wide.group_id is None and str(app_wide) == "CheckLiveMessageUsersOnline:app"
    with pytest.raises(ValueError, match="whole app"):
        Target("app", "g", api="CheckLiveMessageUsersOnline")
    with pytest.raises(ValueError, match="needs a group_id"):
        Target("app")
    with pytest.raises(ValueError, match="unknown API"):
        Target("app", "g", api="GetOnline")


def _presence(api: str, uid: str, online: bool, sweep: int) -> Record:
    return {
        "type": "presence",
        "sweep": sweep,
        "api": api,
        "app_id": "app",
        "group_id": "g",
        "uid": uid,
        "online": online,
        "join_time": None,
        "polled_at": 0,
        "request_id": "r",
    }


def test_change_state_is_kept_per_api() -> None:
    """The same app, group and UID under two APIs are two states, never one."""
    tracker = ChangeTracker()
    legacy, newer = "BatchGetOnlineUsers", "CheckLiveMessageUsersInGroup"
    tracker.process([_presence(legacy, "u1", True, 1), _presence(newer, "u1", False, 1)])
    out = tracker.process([_presence(legacy, "u1", True, 2), _presence(newer, "u1", True, 2)])
    changes = [r for r in out if r["type"] == "change"]
    assert [(c["api"], c["previous_online"], c["online"]) for c in changes] == [
        (newer, False, True)
    ]
    online = tracker.end_sweep(2, {(legacy, "app", "g"), (newer, "app", "g")})
    assert online == {(legacy, "app", "g"): 1, (newer, "app", "g"): 1}


def test_plans_name_the_target_without_a_source() -> None:
    targets = (
        TargetConfig(app_id="a", group_id="g1", uids=("u1",)),
        TargetConfig(app_id="a", group_id="g2"),
    )
    with pytest.raises(ConfigError, match=r"targets\[1\].*needs uids, uids_file or discover"):
        plan_targets(targets, source="poller.toml")


# -- discovery through the retry loop, against the in-process emulator ---------------------


@pytest.fixture
async def flaky_emulator() -> AsyncIterator[EmulatorServer]:
    config = EmulatorConfig(
        port=0,
        qps=0,
        groups=(GroupSpec("demo-app", "lobby", 500),),
        faults=FaultRates((("500", 0.4),)),
        fault_seed=5,
    )
    async with EmulatorServer(config) as server:
        yield server


def _real_config(server: EmulatorServer, **changes: object) -> PollerConfig:
    return PollerConfig(
        api=ApiConfig(endpoint=server.endpoint, protocol="http", timeout_s=2.0),
        retry=RetryConfig(max_attempts=8, backoff_base_s=0.0, backoff_cap_s=0.0),
        **changes,  # type: ignore[arg-type]
    )


async def test_discovery_pages_go_through_the_retry_loop_and_its_budget(
    flaky_emulator: EmulatorServer,
) -> None:
    events: list[Attempt] = []
    lobby = Target("demo-app", "lobby")
    creds = SigningCredentials("demo-key", "demo-secret")
    config = _real_config(flaky_emulator)
    async with Poller(config, credentials=creds, on_attempt=events.append) as poller:
        members = await poller.discover(lobby)
        work = await WorkBuilder().build(poller, [Plan(lobby, None)])
    truth = {m["user_id"] for m in flaky_emulator.state.snapshot("demo-app", "lobby")}
    [(_, listed)] = work
    assert isinstance(listed, list)
    assert set(members) == truth and set(listed) == truth
    assert {e.action for e in events} == {"ListMessageGroupUser"}
    retries = [e for e in events if e.retry_of is not None]
    assert retries and all(e.retry_of == "InternalError" for e in retries)
    assert len(events) == flaky_emulator.stats()["total"]["requests_total"]


async def test_a_failed_listing_keeps_the_last_member_list_when_asked_to(
    flaky_emulator: EmulatorServer,
) -> None:
    lobby = Target("demo-app", "lobby")
    creds = SigningCredentials("demo-key", "demo-secret")
    failures: list[tuple[Target, str, int | None]] = []
    builder = WorkBuilder(
        on_discovery_error=lambda t, e, known: failures.append(
            (t, e.code, None if known is None else len(known))
        )
    )
    async with Poller(_real_config(flaky_emulator), credentials=creds) as poller:
        first = await builder.build(poller, [Plan(lobby, None)])
        flaky_emulator.emulator.faults.configure(FaultRates((("500", 1.0),)))
        second = await builder.build(poller, [Plan(lobby, None)])
        with pytest.raises(ServerError):
            await WorkBuilder().build(poller, [Plan(lobby, None)])
    assert second == first
    [(_, listed)] = first
    assert isinstance(listed, list) and len(listed) == 500
    assert failures == [(lobby, "InternalError", 500)]


# -- UID files: read through a kept copy, so a briefly missing file is not fatal -------------


async def test_a_missing_uid_file_uses_the_last_good_copy(tmp_path: Path) -> None:
    uids = tmp_path / "uids.txt"
    uids.write_text("u1\nu2\n")
    failures: list[tuple[Target, str, bool]] = []
    builder = WorkBuilder(
        copies_dir=tmp_path / "state",
        on_source_error=lambda t, e, kept: failures.append((t, str(e), kept)),
    )
    plans = [Plan(TARGET, UidFile(uids))]
    async with make(ScriptedFetcher()) as poller:
        first = await builder.build(poller, plans)
        uids.write_text("u1\nu2\nu3\n")
        uids.rename(tmp_path / "uids.old")  # a deploy replaces the file: it is briefly gone
        second = await builder.build(poller, plans)
        records = [r async for r in poller.sweep(*second[0])]
    assert [w[1] for w in first] == [w[1] for w in second]  # the same copy, read again
    assert sorted(r["uid"] for r in records) == ["u1", "u2"]  # the last good list
    [(target, message, kept)] = failures
    assert target == TARGET and kept and "uids.txt" in message and "cannot read" in message
    assert builder.has_copy(TARGET, uids)


async def test_a_target_whose_file_was_never_read_is_left_out(tmp_path: Path) -> None:
    failures: list[bool] = []
    builder = WorkBuilder(
        copies_dir=tmp_path / "state", on_source_error=lambda t, e, kept: failures.append(kept)
    )
    async with make(ScriptedFetcher()) as poller:
        work = await builder.build(poller, [Plan(TARGET, UidFile(tmp_path / "missing.txt"))])
    assert work == [] and failures == [False]
    with pytest.raises(ConfigError, match="UID file not found"):
        plan_targets(
            (TargetConfig(app_id="app", group_id="group", uids_file=tmp_path / "missing.txt"),),
            check_files=True,
            known_good=builder.has_copy,
        )


async def test_the_sweep_reads_a_snapshot_not_the_file_being_replaced(tmp_path: Path) -> None:
    uids = tmp_path / "uids.txt"
    uids.write_text("".join(f"u{i}\n" for i in range(100)))
    builder = WorkBuilder(copies_dir=tmp_path / "state")
    async with make(ScriptedFetcher()) as poller:
        [(target, source)] = await builder.build(poller, [Plan(TARGET, UidFile(uids))])
        uids.write_text("other\n")  # replaced while the sweep is about to read
        records = [r async for r in poller.sweep(target, source)]
    assert len(records) == 100


async def test_users_whose_first_polls_failed_get_no_spurious_change_records() -> None:
    """Under faults, a sweep whose batches failed must not make the next sweep announce those
    users as changed: they are learned silently (nothing changed at the emulator)."""
    emulator_config = EmulatorConfig(
        port=0,
        qps=0,
        groups=(GroupSpec("demo-app", "demo-group", 2000),),
        churn_per_s=0.0,
        faults=FaultRates((("500", 0.3),)),
        fault_seed=7,
    )
    target = Target("demo-app", "demo-group")
    uids = [f"user-{i:06d}" for i in range(1, 2001)]
    tracker = ChangeTracker("changes")
    creds = SigningCredentials("demo-key", "demo-secret")
    async with EmulatorServer(emulator_config) as server:
        config = _real_config(server).with_changes(retry=RetryConfig(max_attempts=1))
        async with Poller(config, credentials=creds) as poller:
            written: list[list[Record]] = []
            for _ in range(2):
                out: list[Record] = []
                async for records in poller.sweep_batches([(target, uids)]):
                    out += tracker.process(records)
                assert poller.last is not None
                tracker.end_sweep(poller.last.sweep, {target.key})
                written.append(out)
                server.emulator.faults.configure(FaultRates(()))  # the second sweep is clean
    failed_first = sum(r["type"] == "error" for r in written[0])
    assert failed_first > 200  # many users' first poll failed ...
    assert [r for r in written[1] if r["type"] == "change"] == []  # ... and none "changed"
