"""The daemon answers too: ``GET /v1/presence`` (:mod:`poller.apps.query`).

The app on a real listener on 127.0.0.1:0 (answers from state, fresh answers through a lookup,
bad requests, unknown targets, the bearer token, overload and timeouts), against the
in-process emulator where requests are counted; the config checks; the daemon's start
(a missing token variable, a port in use); one real ``poller run`` daemon against the
emulator subprocess; and a sharded fleet's shared state on a real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tomllib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from poller.apps.changes import LocalChanges
from poller.apps.daemon import Daemon
from poller.apps.exits import EX_CONFIG
from poller.apps.metrics import Metrics, Readiness
from poller.apps.query import QueryServer
from poller.config import (
    ApiConfig,
    ClusterConfig,
    CredentialsConfig,
    LookupsConfig,
    PollerConfig,
    QueryConfig,
    TargetConfig,
    parse_config,
    render_toml,
)
from poller.core.apis import APP_ONLINE_API
from poller.core.clock import epoch_ms
from poller.core.errors import ConfigError
from poller.core.records import Record, Target, error_record, presence_record
from poller.emulator import EmulatorConfig, EmulatorServer, GroupSpec
from poller.emulator.process import EmulatorProcess
from poller.engine.poller import Poller
from poller.engine.state import StateStore
from poller.engine.work import WorkBuilder
from poller.wire.signing import SigningCredentials
from tests.conftest import FakeClock, ScriptedFetcher
from tests.daemons import base_config, target, wait_until
from tests.redisserver import RedisServer

APP, GROUP = "demo-app", "demo-group"
LIVE = "live-app"
TARGET = Target(APP, GROUP)
APP_WIDE = Target(LIVE, None, APP_ONLINE_API, "cn-shanghai")
TOKEN = "query-token-0123456789abcdef"
LOOPBACK = QueryConfig(listen="127.0.0.1:0")


def config(
    *, query: QueryConfig = LOOPBACK, lookups: LookupsConfig | None = None, **changes: Any
) -> PollerConfig:
    targets = (
        TargetConfig(app_id=APP, group_id=GROUP, uids=("u1",)),
        TargetConfig(app_id=LIVE, api=APP_ONLINE_API, data_center="cn-shanghai", uids=("u1",)),
    )
    return PollerConfig(query=query, lookups=lookups or LookupsConfig(), targets=targets, **changes)


@dataclass
class Served:
    server: QueryServer
    poller: Poller
    metrics: Metrics
    http: aiohttp.ClientSession

    async def get(
        self, params: Sequence[tuple[str, str]], *, token: str | None = None, path: str = ""
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        url = self.server.url.replace("/v1/presence", path) if path else self.server.url
        async with self.http.get(url, params=params, headers=headers) as resp:
            body = await resp.read()
            assert resp.content_type == "application/json"
            return resp.status, orjson.loads(body), dict(resp.headers)

    def counted(self, status: int) -> float:
        value = self.metrics.registry.get_sample_value(
            "poller_query_requests_total", {"status": str(status)}
        )
        return value or 0.0

    def questions(self, source: str, action: str = TARGET.api) -> float:
        value = self.metrics.registry.get_sample_value(
            "poller_lookup_questions_total", {"action": action, "source": source}
        )
        return value or 0.0


def local_changes(tmp_path: Path) -> LocalChanges:
    return LocalChanges("changes", StateStore(tmp_path / "state"), presence=False)


@contextlib.asynccontextmanager
async def serving(
    cfg: PollerConfig,
    states: Any,
    *,
    token: str | None = None,
    clock: FakeClock | None = None,
    credentials: SigningCredentials | None = None,
) -> AsyncIterator[Served]:
    metrics = Metrics()
    fetcher = None if credentials is not None else ScriptedFetcher()
    async with Poller(cfg, fetcher=fetcher, credentials=credentials) as poller:
        server = QueryServer(cfg, poller, states, metrics, token=token, clock=clock)
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                yield Served(server, poller, metrics, http)
        finally:
            await server.close()


def q(*uids: str, app: str = APP, group: str | None = GROUP, **extra: str) -> list[tuple[str, str]]:
    params = [("app_id", app)]
    if group is not None:
        params.append(("group_id", group))
    params += [("uid", uid) for uid in uids]
    params += list(extra.items())
    return params


async def until(predicate: Any, what: str) -> None:
    """Let the loop run until ``predicate()`` holds (bounded: at most ~5 s)."""
    for _ in range(5000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


# -- answers from the last known state --------------------------------------------------------


async def test_state_answers_carry_their_age_and_unknown_uids_are_not_polled(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    now = epoch_ms(clock)
    changes = local_changes(tmp_path)
    first: list[Record] = [
        presence_record(TARGET, "u1", True, 5, sweep=3, polled_at=now - 9000, request_id="r"),
        presence_record(TARGET, "u2", False, None, sweep=3, polled_at=now - 9000, request_id="r"),
        error_record(TARGET, "u3", "InternalError", "boom", sweep=3, polled_at=now - 9000),
    ]
    changes.tracker.process(first)
    changes.tracker.end_sweep(3, {TARGET.key})
    # the next sweep confirms u1 (unchanged) and fails for u2: u2 keeps sweep 3's poll
    changes.tracker.process(
        [
            presence_record(TARGET, "u1", True, 5, sweep=4, polled_at=now - 1500, request_id="r"),
            error_record(TARGET, "u2", "InternalError", "boom", sweep=4, polled_at=now - 1000),
        ]
    )
    async with serving(config(), changes, clock=clock) as served:
        status, body, _ = await served.get(q("u2", "u1", "u1", "u3", "nobody", "bad,id"))
        assert served.poller.client is None  # nothing could have been sent anyway
    assert status == 200
    assert {k: body[k] for k in ("api", "app_id", "group_id", "fresh")} == {
        "api": "BatchGetOnlineUsers",
        "app_id": APP,
        "group_id": GROUP,
        "fresh": False,
    }
    records = body["records"]
    assert [r["uid"] for r in records] == ["u2", "u1", "u3", "nobody", "bad,id"]
    u2, u1, u3, nobody, bad = records
    assert u1 == {
        "type": "presence",
        "api": "BatchGetOnlineUsers",
        "app_id": APP,
        "group_id": GROUP,
        "uid": "u1",
        "online": True,
        "join_time": 5,
        "polled_at": now - 1500,
        "age_ms": 1500,
        "sweep": 4,
    }
    assert (u2["online"], u2["join_time"], u2["age_ms"], u2["sweep"]) == (False, None, 9000, 3)
    assert (u3["type"], u3["code"]) == ("error", "NotPolled")
    assert "failed" in u3["message"]
    assert (nobody["type"], nobody["code"], nobody["group_id"]) == ("error", "NotPolled", GROUP)
    assert (bad["type"], bad["code"]) == ("error", "InvalidUserId")
    assert "','" in bad["message"]


async def test_a_state_loaded_at_start_has_no_age_until_polled_again(tmp_path: Path) -> None:
    clock = FakeClock()
    changes = local_changes(tmp_path)
    changes.tracker.restore({TARGET.key: {"r1": (True, 7, 2, False)}}, 9)
    async with serving(config(), changes, clock=clock) as served:
        _, before, _ = await served.get(q("r1"))
        changes.tracker.process(
            [
                presence_record(
                    TARGET, "r1", True, 7, sweep=10, polled_at=epoch_ms(clock), request_id="r"
                )
            ]
        )
        _, after, _ = await served.get(q("r1"))
    [r] = before["records"]
    assert (r["online"], r["join_time"], r["polled_at"], r["age_ms"], r["sweep"]) == (
        True,
        7,
        None,
        None,
        None,
    )
    [r] = after["records"]
    assert (r["polled_at"], r["age_ms"], r["sweep"]) == (epoch_ms(clock), 0, 10)
    assert changes.tracker.known(TARGET.key) == {"r1": (True, 7, 2, False)}  # nothing changed


async def test_an_app_wide_target_is_asked_without_a_group(tmp_path: Path) -> None:
    changes = local_changes(tmp_path)
    changes.tracker.process(
        [presence_record(APP_WIDE, "u1", True, None, sweep=1, polled_at=1, request_id="r")]
    )
    async with serving(config(), changes) as served:
        status, body, _ = await served.get(q("u1", app=LIVE, group=None, api=APP_ONLINE_API))
    assert status == 200
    assert (body["api"], body["group_id"]) == (APP_ONLINE_API, None)
    [r] = body["records"]
    assert (r["type"], r["online"], r["group_id"], r["sweep"]) == ("presence", True, None, 1)


# -- bad requests, unknown targets, methods, paths -----------------------------------------------


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ([("group_id", GROUP), ("uid", "u1")], "app_id"),
        ([("app_id", ""), ("group_id", GROUP), ("uid", "u1")], "app_id"),
        ([("app_id", APP), ("uid", "u1")], "group_id"),
        ([("app_id", APP), ("group_id", ""), ("uid", "u1")], "group_id"),
        (q("u1", app=LIVE, api=APP_ONLINE_API), "group_id"),  # an app-wide API takes none
        (q("u1", api="GetEverything"), "api"),
        (q(), "uid"),
        (q("u1", "u2", "u3", "u4"), "uid"),  # max_uids 3
        (q("u1", fresh="yes"), "fresh"),
        (q("u1", fresh=""), "fresh"),
        (q("u1", colour="red"), "colour"),
        ([*q("u1"), ("app_id", APP)], "app_id"),
        ([*q("u1"), ("fresh", "0"), ("fresh", "1")], "fresh"),
    ],
)
async def test_bad_requests_are_400s_naming_the_parameter(
    tmp_path: Path, params: list[tuple[str, str]], parameter: str
) -> None:
    cfg = config(query=QueryConfig(listen="127.0.0.1:0", max_uids=3))
    async with serving(cfg, local_changes(tmp_path)) as served:
        status, body, _ = await served.get(params)
        assert served.counted(400) == 1
    assert status == 400
    assert body["parameter"] == parameter and body["error"]


async def test_repeated_uids_count_once_toward_max_uids(tmp_path: Path) -> None:
    cfg = config(query=QueryConfig(listen="127.0.0.1:0", max_uids=3))
    async with serving(cfg, local_changes(tmp_path)) as served:
        status, body, _ = await served.get(q("u1", "u2", "u3", "u1", "u2", fresh="false"))
    assert status == 200
    assert [r["uid"] for r in body["records"]] == ["u1", "u2", "u3"]


async def test_unknown_targets_paths_and_methods(tmp_path: Path) -> None:
    async with serving(config(), local_changes(tmp_path)) as served:
        status, body, _ = await served.get(q("u1", group="other-group"))
        assert status == 404
        assert "other-group" in body["error"] and APP in body["error"]
        assert body["group_id"] == "other-group"
        status, body, _ = await served.get(q("u1", api="CheckLiveMessageUsersInGroup"))
        assert status == 404 and "CheckLiveMessageUsersInGroup" in body["error"]
        status, _, _ = await served.get(q("u1"), path="/v1/elsewhere")
        assert status == 404
        async with served.http.post(served.server.url, params=q("u1")) as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "GET"
        assert (served.counted(404), served.counted(405)) == (3, 1)


# -- the bearer token -------------------------------------------------------------------------


async def test_a_token_is_required_and_compared(tmp_path: Path) -> None:
    async with serving(config(), local_changes(tmp_path), token=TOKEN) as served:
        answers = [
            await served.get(q("u1")),
            await served.get(q("u1"), token="wrong"),
            await served.get(q("u1"), token=TOKEN[:-1]),
            await served.get(q("u1"), token=TOKEN + "x"),
            await served.get(q("u1"), path="/v1/elsewhere"),  # every path
        ]
        async with served.http.get(
            served.server.url, params=q("u1"), headers={"Authorization": f"Basic {TOKEN}"}
        ) as resp:
            assert resp.status == 401
        ok_status, ok_body, _ = await served.get(q("u1"), token=TOKEN)
        async with served.http.get(
            served.server.url, params=q("u1"), headers={"Authorization": f"bearer  {TOKEN}"}
        ) as resp:
            lower_status = resp.status  # the scheme is case-insensitive
        assert served.counted(401) == 6 and served.counted(200) == 2
        text = repr(served.server)
    for status, body, headers in answers:
        assert status == 401
        assert headers["WWW-Authenticate"] == "Bearer"
        assert TOKEN not in orjson.dumps(body).decode()
    assert ok_status == lower_status == 200
    assert ok_body["records"][0]["code"] == "NotPolled"
    assert TOKEN not in text


# -- fresh answers through a lookup -----------------------------------------------------------


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    emulator_config = EmulatorConfig(port=0, qps=0, groups=(GroupSpec(APP, GROUP, 40),))
    async with EmulatorServer(emulator_config) as server:
        yield server


async def test_concurrent_fresh_requests_are_coalesced_into_few_api_requests(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    truth = {m["user_id"]: m for m in emulator.state.snapshot(APP, GROUP)}
    assert len(truth) == 40
    cfg = config(
        api=ApiConfig(endpoint=emulator.endpoint, protocol="http", timeout_s=5.0),
        lookups=LookupsConfig(linger_ms=200.0),
    )
    creds = SigningCredentials("demo-key", "demo-secret")
    async with serving(cfg, local_changes(tmp_path), credentials=creds) as served:
        answers = await asyncio.gather(*(served.get(q(uid, fresh="1")) for uid in truth))
        sent = emulator.stats()["total"]["requests_total"]
        # from state: nothing is sent, and nothing is known (no sweep ran)
        status, from_state, _ = await served.get(q(*list(truth)[:3]))
        assert emulator.stats()["total"]["requests_total"] == sent
        assert served.counted(200) == 41
        assert served.questions("new") == 40
    assert 2 <= sent <= 3  # 40 questions, 20 per request: two full batches (a third at worst)
    for (status, body, _), uid in zip(answers, truth, strict=True):
        assert status == 200 and body["fresh"] is True
        [r] = body["records"]
        assert (r["type"], r["uid"], r["sweep"]) == ("presence", uid, 0)
        assert r["online"] == truth[uid]["online"]
        if r["online"]:
            assert r["join_time"] == truth[uid]["join_time"]
        assert isinstance(r["age_ms"], int) and isinstance(r["polled_at"], int)
    assert {r["code"] for r in from_state["records"]} == {"NotPolled"}


async def test_fresh_answers_give_invalid_ids_their_error_record(tmp_path: Path) -> None:
    async with serving(config(), local_changes(tmp_path)) as served:
        status, body, _ = await served.get(q("u1", "a,b", fresh="true"))
    assert status == 200
    ok, bad = body["records"]
    assert (ok["type"], ok["online"]) == ("presence", True)  # the scripted fetcher's answer
    assert (bad["uid"], bad["type"], bad["code"]) == ("a,b", "error", "InvalidUserId")


async def test_an_overloaded_lookup_is_a_503_with_retry_after(tmp_path: Path) -> None:
    # Questions linger for a minute: the first one waits, the second finds the queue full.
    lookups = LookupsConfig(linger_ms=60_000.0, max_pending=1, timeout_s=60.0)
    query = QueryConfig(listen="127.0.0.1:0", max_uids=1)
    async with serving(config(query=query, lookups=lookups), local_changes(tmp_path)) as served:
        waiting = asyncio.ensure_future(served.get(q("u1", fresh="1")))
        try:
            await until(lambda: served.questions("new") == 1, "the first question to wait")
            status, body, headers = await served.get(q("u2", fresh="1"))
            assert served.questions("overloaded") == 1
        finally:
            await served.server.close()  # what waits is answered: Cancelled
            first_status, first, _ = await waiting
    assert (status, headers.get("Retry-After")) == (503, "1")
    assert "overloaded" in body["error"]
    assert first_status == 200
    assert first["records"][0]["code"] == "Cancelled"


async def test_a_lookup_that_times_out_is_a_504(tmp_path: Path) -> None:
    lookups = LookupsConfig(linger_ms=60_000.0, timeout_s=0.05)
    async with serving(config(lookups=lookups), local_changes(tmp_path)) as served:
        status, body, _ = await served.get(q("u1", fresh="1"))
        assert served.counted(504) == 1
    assert status == 504 and "within" in body["error"]


async def test_a_reload_replaces_the_lookup_and_drops_removed_targets(tmp_path: Path) -> None:
    cfg = config()
    async with serving(cfg, local_changes(tmp_path)) as served:
        status, _, _ = await served.get(q("u1", fresh="1"))
        assert status == 200
        lookup = served.server._handles[TARGET.key].lookup
        served.server.reconfigure(cfg.with_changes(lookups=LookupsConfig(cache_ttl_s=30.0)))
        status, _, _ = await served.get(q("u1", fresh="1"))
        assert status == 200
        assert served.server._handles[TARGET.key].lookup is not lookup
        assert served.server._handles[TARGET.key].lookup.cache_ttl_s == 30.0
        kept = served.server._handles[TARGET.key].lookup
        served.server.reconfigure(
            cfg.with_changes(lookups=LookupsConfig(cache_ttl_s=30.0, min_share=0.5))
        )
        assert served.server._handles[TARGET.key].lookup is kept  # min_share is the poller's
        served.server.reconfigure(cfg.with_changes(targets=cfg.targets[1:]))
        status, _, _ = await served.get(q("u1", fresh="1"))
        assert status == 404
        assert served.server._handles == {}


async def test_a_reload_cannot_raise_max_uids_past_the_request_line_set_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(query=QueryConfig(listen="127.0.0.1:0", max_uids=2))
    async with serving(cfg, local_changes(tmp_path)) as served:
        served.server.reconfigure(cfg.with_changes(query=QueryConfig(listen="127.0.0.1:0")))
        longest = [f"{i:0128d}" for i in range(3)]
        status, body, _ = await served.get(q(*longest))
        assert status == 400 and body["parameter"] == "uid"  # a JSON 400 naming the limit
        assert "at most 2 per request" in body["error"]
    assert "a larger [query] max_uids applies after a restart" in caplog.text


async def test_a_token_read_with_a_trailing_newline_still_matches(tmp_path: Path) -> None:
    async with serving(config(), local_changes(tmp_path), token=TOKEN + "\n") as served:
        status, _, _ = await served.get(q("u1"), token=TOKEN)
    assert status == 200


def test_max_uids_may_not_exceed_max_pending() -> None:
    query, lookups = QueryConfig(listen="127.0.0.1:0", max_uids=50), LookupsConfig(max_pending=20)
    with pytest.raises(ConfigError, match=r"exceeds \[lookups\] max_pending") as caught:
        config(query=query, lookups=lookups)
    assert caught.value.key == "query.max_uids"


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:9109", "127.1.2.3:0", "[::1]:9109", "localhost:9109", "LOCALHOST:1"]
)
def test_a_loopback_listener_needs_no_token(listen: str) -> None:
    assert QueryConfig(listen=listen).listen == listen


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9109", "[::]:9109", "10.1.2.3:9109", "query.internal:9109", "[fe80::1]:1"]
)
def test_a_non_loopback_listener_requires_token_env(listen: str) -> None:
    with pytest.raises(ConfigError, match="requires a bearer token") as caught:
        QueryConfig(listen=listen)
    assert caught.value.key == "query.token_env"
    with pytest.raises(ConfigError, match=r"poller\.toml, key 'query\.token_env'"):
        parse_config(tomllib.loads(f'[query]\nlisten = "{listen}"\n'), source="poller.toml")
    assert QueryConfig(listen=listen, token_env="POLLER_QUERY_TOKEN").token_env


def test_token_env_is_a_variable_name_never_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        QueryConfig(token_env="Bearer s3cr3t-v4lue!")
    assert caught.value.key == "query.token_env" and "s3cr3t" not in str(caught.value)
    cfg = config(query=QueryConfig(listen="0.0.0.0:9109", token_env="POLLER_QUERY_TOKEN"))
    assert 'token_env = "POLLER_QUERY_TOKEN"' in render_toml(cfg)  # check-config shows the name


def _daemon_config(listen: str = "127.0.0.1:0", **query: Any) -> PollerConfig:
    return PollerConfig(
        api=ApiConfig(endpoint="127.0.0.1:9", protocol="http"),
        credentials=CredentialsConfig(access_key_id="AKID", access_key_secret="ak-secret-1"),
        query=QueryConfig(listen=listen, **query),
        targets=(TargetConfig(app_id=APP, group_id=GROUP, uids=("u1",)),),
    )


def _config_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        str(getattr(r, "fields", {}).get("error"))
        for r in caplog.records
        if r.getMessage() == "configuration error"
    ]


@pytest.mark.parametrize("value", [None, "", "short-secret"])
async def test_the_daemon_refuses_to_start_without_its_token(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    value: str | None,
) -> None:
    if value is None:
        monkeypatch.delenv("POLLER_TEST_QUERY_TOKEN", raising=False)
    else:
        monkeypatch.setenv("POLLER_TEST_QUERY_TOKEN", value)
    cfg = _daemon_config(token_env="POLLER_TEST_QUERY_TOKEN")
    caplog.set_level(logging.INFO, logger="poller.daemon")
    assert await Daemon(tmp_path / "poller.toml", cfg).run() == EX_CONFIG
    [error] = _config_errors(caplog)
    assert "POLLER_TEST_QUERY_TOKEN" in error and "query.token_env" in error
    assert "short-secret" not in caplog.text
    if value:
        assert "12 characters long; use at least 16" in error
    assert not any(r.getMessage() == "query listening" for r in caplog.records)


async def test_a_port_in_use_is_a_config_error_naming_query_listen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        caplog.set_level(logging.INFO, logger="poller.daemon")
        code = await Daemon(tmp_path / "poller.toml", _daemon_config(f"127.0.0.1:{port}")).run()
    assert code == EX_CONFIG
    [error] = _config_errors(caplog)
    assert "query.listen" in error and f"127.0.0.1:{port}" in error


# -- a sharded fleet: every member answers from the fleet's shared state ------------------------


async def test_a_fleet_member_answers_for_uids_another_member_polled(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    from poller.apps.sharded import FleetSweeps
    from poller.fleet import Fleet
    from poller.fleet.state import SharedState

    def cluster(member: str) -> ClusterConfig:
        return ClusterConfig(redis_url=redis_server.url, member=member, account="acct")

    clock = FakeClock()
    now = epoch_ms(clock)
    other = Fleet(cluster("a"), account="acct")
    await other.start()
    try:  # member "a" polled u1 and u2 in sweep 7
        await SharedState(other, interval_s=1.0).process(
            [
                presence_record(
                    TARGET, "u1", True, 11, sweep=7, polled_at=now - 250, request_id="r"
                ),
                presence_record(TARGET, "u2", False, None, sweep=7, polled_at=now, request_id="r"),
                error_record(TARGET, "u3", "InternalError", "boom", sweep=7, polled_at=now),
            ],
            presence=False,
        )
    finally:
        await other.aclose()
    cfg = config(cluster=cluster("b"))
    metrics = Metrics()
    async with Poller(cfg, fetcher=ScriptedFetcher()) as poller:
        sweeps = FleetSweeps(poller, cfg, WorkBuilder(), metrics, Readiness(max_age_s=60.0))
        server = QueryServer(cfg, poller, sweeps, metrics, clock=clock)
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                served = Served(server, poller, metrics, http)
                status, body, _ = await served.get(q("u1", "u2", "u3", "u4"))
                redis_server.stop()
                down_status, down, headers = await served.get(q("u1"))
        finally:
            await server.close()
    assert status == 200
    u1, u2, u3, u4 = body["records"]
    assert (u1["online"], u1["join_time"], u1["age_ms"], u1["sweep"]) == (True, 11, 250, 7)
    assert (u2["online"], u2["age_ms"]) == (False, 0)
    assert u3["code"] == u4["code"] == "NotPolled"
    assert (down_status, headers["Retry-After"]) == (503, "1")
    assert "Redis" in down["error"]


# -- a real daemon --------------------------------------------------------------------------


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read())


@pytest.mark.slow
def test_a_daemon_answers_from_its_state_and_fresh(tmp_path: Path, daemons: Any) -> None:
    query_token = "e2e-" + os.urandom(12).hex()
    uids = [f"user-{i:06d}" for i in range(1, 21)]
    with EmulatorProcess("--group", f"{APP}/{GROUP}:20") as emu:
        cfg = (
            base_config(emu, interval_s=0.5)
            + '\n[query]\nlisten = "127.0.0.1:0"\ntoken_env = "POLLER_QUERY_TOKEN"\n'
            + target(APP, GROUP, uids=uids)
        )
        daemon = daemons(tmp_path, cfg, env={"POLLER_QUERY_TOKEN": query_token})
        logs = daemon.sweeps_done(1)
        url = next(e["url"] for e in logs if e["event"] == "query listening")
        truth = {m["user_id"]: m for m in emu.members(APP, GROUP)["members"]}
        query = f"{url}?app_id={APP}&group_id={GROUP}&" + "&".join(f"uid={u}" for u in uids)
        assert _get(query)[0] == 401
        status, state = _get(query, query_token)
        status_fresh, fresh = _get(query + "&fresh=1", query_token)
        records = wait_until(daemon.records, "the first sweep's records")
        assert daemon.stop() == 0
    assert status == status_fresh == 200
    assert (state["fresh"], fresh["fresh"]) == (False, True)
    polled = {r["uid"]: r for r in records if r["type"] == "presence"}
    for answer in (state, fresh):
        assert [r["uid"] for r in answer["records"]] == uids
        for r in answer["records"]:
            assert r["type"] == "presence"
            assert r["online"] == truth[r["uid"]]["online"]
            assert r["join_time"] == polled[r["uid"]]["join_time"]
            assert isinstance(r["age_ms"], int) and r["age_ms"] >= 0
    for r in state["records"]:
        assert r["sweep"] >= 1 and isinstance(r["polled_at"], int)
    assert {r["sweep"] for r in fresh["records"]} == {0}
    assert query_token not in daemon.stderr()
