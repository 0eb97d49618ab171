"""On-demand lookups: questions coalesced into batches cut at their rate slot, shared in-flight
UIDs, the cache, the bounded queue, callers that give up, and closing."""

from __future__ import annotations

import asyncio
import gc
import random
import weakref
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.config import ApiConfig, LimitsConfig, LookupsConfig, PollerConfig
from poller.core.errors import AuthError, PollerError
from poller.core.records import Batch, Target
from poller.emulator import EmulatorConfig, EmulatorServer, GroupSpec
from poller.emulator.faults import Latency
from poller.engine.lookup import Answer, Lookup, LookupOverloaded
from poller.engine.poller import Poller
from tests.conftest import FakeClock, GateMeter, InstantRateMeter, ScriptedFetcher, settle

TARGET = Target("app", "group")


def make(
    fetcher: ScriptedFetcher,
    meter: GateMeter | InstantRateMeter | None = None,
    *,
    clock: FakeClock | None = None,
    **lookups: object,
) -> Poller:
    config = PollerConfig(lookups=LookupsConfig(**lookups))  # type: ignore[arg-type]
    return Poller(
        config,
        fetcher=fetcher,
        rate_meter=meter or InstantRateMeter(),
        clock=clock or FakeClock(),
    )


def sent(fetcher: ScriptedFetcher) -> list[str]:
    return [uid for batch in fetcher.calls for uid in batch.uids]


async def test_concurrent_questions_are_coalesced_into_full_batches() -> None:
    fetcher = ScriptedFetcher()
    async with make(fetcher) as poller:
        lookup = poller.lookup(TARGET)
        uids = [f"u{i:03d}" for i in range(1000)]
        records = await asyncio.gather(*(lookup.get(u) for u in uids))
    assert [r["uid"] for r in records] == uids
    assert all(r["type"] == "presence" and r["online"] for r in records)
    assert all(r["sweep"] == 0 and r["age_ms"] == 0 for r in records)
    assert [len(b.uids) for b in fetcher.calls] == [20] * 50
    assert lookup.stats.batches == 50 and lookup.stats.uids_sent == 1000


async def test_a_batch_is_cut_when_its_slot_is_granted_so_it_fills_while_it_waits() -> None:
    fetcher = ScriptedFetcher()
    gate = GateMeter()
    async with make(fetcher, gate) as poller:
        lookup = poller.lookup(TARGET, linger_ms=0)
        first = asyncio.create_task(lookup.get("u0"))
        await settle()
        assert gate.waiting == 1  # the first question asked for a slot at once...
        later = [asyncio.create_task(lookup.get(f"u{i}")) for i in range(1, 26)]
        await settle()
        gate.open()  # ...and the batch is cut now, with the company that came meanwhile
        await settle()
        assert [len(b.uids) for b in fetcher.calls] == [20]
        gate.open()
        await asyncio.gather(first, *later)
    assert [len(b.uids) for b in fetcher.calls] == [20, 6]


async def test_a_lone_question_waits_linger_ms_for_company_while_slots_are_free() -> None:
    fetcher = ScriptedFetcher()
    clock = FakeClock()
    async with make(fetcher, clock=clock) as poller:
        lookup = poller.lookup(TARGET, linger_ms=5)
        record = await lookup.get("u1")
        assert record["type"] == "presence"
        assert clock.sleeps == [pytest.approx(0.005)]
        # 20 questions at once make a full batch: nobody lingers for more
        clock.sleeps.clear()
        await asyncio.gather(*(lookup.get(f"v{i}") for i in range(20)))
    assert clock.sleeps == []
    assert [len(b.uids) for b in fetcher.calls] == [1, 20]


async def test_a_uid_waiting_or_in_flight_is_asked_once_for_every_caller() -> None:
    fetcher = ScriptedFetcher(delay=0.01)
    async with make(fetcher) as poller:
        lookup = poller.lookup(TARGET)
        first = [asyncio.create_task(lookup.get(u)) for u in ("a", "b", "a", "a")]
        await asyncio.sleep(0.005)  # now in flight
        second = [asyncio.create_task(lookup.get(u)) for u in ("a", "b", "c")]
        many = await lookup.get_many(["a", "c", "c", "d"])
        records = await asyncio.gather(*first, *second)
    assert sorted(sent(fetcher)) == ["a", "b", "c", "d"]
    assert all(len(set(b.uids)) == len(b.uids) for b in fetcher.calls)
    assert [r["uid"] for r in records] == ["a", "b", "a", "a", "a", "b", "c"]
    assert list(many) == ["a", "c", "d"] and many["d"]["type"] == "presence"
    assert lookup.stats.shared == 6 and lookup.stats.questions == 10


async def test_recent_answers_come_from_the_cache_with_their_age() -> None:
    fetcher = ScriptedFetcher()
    clock = FakeClock()
    async with make(fetcher, clock=clock) as poller:
        lookup = poller.lookup(TARGET, cache_ttl_s=1.0, cache_size=2, linger_ms=0)
        assert (await lookup.get("a"))["age_ms"] == 0
        clock.now += 0.4
        cached = await lookup.get("a")
        assert cached["type"] == "presence" and cached["age_ms"] == 400
        assert len(fetcher.calls) == 1 and lookup.stats.cache_hits == 1
        clock.now += 0.7  # older than cache_ttl_s: asked again
        assert (await lookup.get("a"))["age_ms"] == 0
        assert len(fetcher.calls) == 2
        await lookup.get("b")
        await lookup.get("a")  # a is now the most recently used
        await lookup.get("c")  # the cache holds 2: b goes
        await lookup.get("a")
        assert len(fetcher.calls) == 4
        await lookup.get("b")
        assert len(fetcher.calls) == 5


async def test_errors_are_answered_not_cached() -> None:
    def script(batch: Batch, attempt: int) -> PollerError | None:
        return AuthError("key rejected", code="InvalidAccessKeyId.NotFound", http_status=404)

    fetcher = ScriptedFetcher(script)
    async with make(fetcher) as poller:
        lookup = poller.lookup(TARGET, cache_ttl_s=60, linger_ms=0)
        first = await lookup.get("a")
        again = await lookup.get("a")
    assert first["type"] == again["type"] == "error"
    assert first["code"] == "InvalidAccessKeyId.NotFound"
    assert len(fetcher.calls) == 2  # a fatal error in one lookup does not stop the next one


async def test_invalid_uids_are_answered_at_once_and_never_sent() -> None:
    fetcher = ScriptedFetcher()
    async with make(fetcher) as poller:
        lookup = poller.lookup(TARGET)
        bad = await lookup.get("a,b")
        many = await lookup.get_many(["ok", ""])
    assert bad["type"] == "error" and bad["code"] == "InvalidUserId"
    assert "','" in bad["message"]
    assert list(many) == ["ok", ""]  # in the order asked
    assert many[""]["type"] == "error" and many["ok"]["type"] == "presence"
    assert sent(fetcher) == ["ok"]


async def test_a_full_queue_refuses_new_questions_at_once() -> None:
    fetcher = ScriptedFetcher()
    gate = GateMeter()
    async with make(fetcher, gate, max_pending=3) as poller:
        lookup = poller.lookup(TARGET, linger_ms=0)
        waiting = [asyncio.create_task(lookup.get(u)) for u in ("a", "b", "c")]
        await settle()
        with pytest.raises(LookupOverloaded, match=r"3 questions wait .*max_pending 3"):
            await lookup.get("d")
        with pytest.raises(LookupOverloaded):
            await lookup.get_many(["a", "e"])  # the whole call is refused...
        shared = asyncio.create_task(lookup.get("a"))  # ...but a waiting UID can be shared
        await settle()
        assert lookup.pending == 3 and lookup.stats.overloaded == 2
        gate.open()
        records = await asyncio.gather(*waiting, shared)
    assert [r["uid"] for r in records] == ["a", "b", "c", "a"]
    assert sent(fetcher) == ["a", "b", "c"]


async def test_a_caller_that_gives_up_does_not_cancel_what_others_wait_on() -> None:
    fetcher = ScriptedFetcher(delay=0.02)
    async with make(fetcher) as poller:
        lookup = poller.lookup(TARGET, linger_ms=0)
        patient = asyncio.create_task(lookup.get("a"))
        impatient = asyncio.create_task(lookup.get("a"))
        await asyncio.sleep(0.005)  # in flight
        impatient.cancel()
        with pytest.raises(TimeoutError, match=r"no answer for a of app/group within 0\.001 s"):
            await lookup.get("a", timeout_s=0.001)
        record = await patient
    assert record["type"] == "presence" and record["uid"] == "a"
    assert impatient.cancelled() and len(fetcher.calls) == 1
    assert lookup.stats.timeouts == 1


async def test_a_question_nobody_waits_for_is_not_sent() -> None:
    fetcher = ScriptedFetcher()
    gate = GateMeter()
    async with make(fetcher, gate) as poller:
        lookup = poller.lookup(TARGET, linger_ms=0)
        gone = asyncio.create_task(lookup.get("gone"))
        kept = asyncio.create_task(lookup.get("kept"))
        await settle()
        gone.cancel()
        await settle()
        assert lookup.pending == 1
        gate.open()
        assert (await kept)["uid"] == "kept"
    assert sent(fetcher) == ["kept"]


async def test_closing_answers_every_waiting_caller_and_leaks_no_task() -> None:
    fetcher = ScriptedFetcher(delay=60)
    gate = GateMeter()
    before = asyncio.all_tasks()
    async with make(fetcher, gate) as poller:
        lookup = poller.lookup(TARGET, linger_ms=0)
        in_flight = asyncio.create_task(lookup.get("a"))
        await settle()
        gate.open()
        await settle()
        unsent = asyncio.create_task(lookup.get("b"))
        await settle()
        assert lookup.in_flight == 1 and lookup.pending == 1
    records = await asyncio.gather(in_flight, unsent)
    assert [(r["code"], r["message"]) for r in records if r["type"] == "error"] == [
        ("Cancelled", "cancelled in flight: the lookup was closed"),
        ("Cancelled", "not sent: the lookup was closed"),
    ]
    assert asyncio.all_tasks() - before == {asyncio.current_task()} - before
    with pytest.raises(RuntimeError, match="closed"):
        await lookup.get("c")


async def test_lookups_share_the_poller_meter_with_sweeps() -> None:
    fetcher = ScriptedFetcher()
    meter = InstantRateMeter()
    async with make(fetcher, meter) as poller:
        lookup = poller.lookup(TARGET)
        await lookup.get_many([f"l{i}" for i in range(40)])
        _ = [r async for r in poller.sweep(TARGET, [f"s{i}" for i in range(60)])]
    assert meter.granted == 5  # 2 lookup batches + 3 sweep batches, one meter


async def test_lookup_arguments_default_to_the_lookups_section() -> None:
    async with make(ScriptedFetcher(), cache_ttl_s=3.0, max_pending=7, timeout_s=4.0) as poller:
        lookup = poller.lookup(("app", "group"), linger_ms=1)
        assert isinstance(lookup, Lookup)
        assert (lookup.cache_ttl_s, lookup.max_pending, lookup.timeout_s) == (3.0, 7, 4.0)
        assert lookup.linger_s == pytest.approx(0.001) and lookup.batch_size == 20
        in_group = poller.lookup(Target("app", "g", api="CheckLiveMessageUsersInGroup"))
        assert in_group.batch_size == 10


# -- random interleavings -------------------------------------------------------------------

_UIDS = [f"u{i}" for i in range(30)]
_action = st.tuples(
    st.sampled_from(_UIDS),
    st.sampled_from(["wait", "cancel", "timeout", "many"]),
    st.integers(min_value=0, max_value=6),  # yields before the caller acts
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    actions=st.lists(_action, min_size=1, max_size=40),
    slots=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=30),
    seed=st.integers(min_value=0, max_value=2**16),
    cache=st.booleans(),
)
def test_random_interleavings_never_lose_an_answer_or_send_a_uid_twice(
    actions: list[tuple[str, str, int]], slots: list[int], seed: int, cache: bool
) -> None:
    asyncio.run(_interleave(actions, slots, seed, cache))


async def _interleave(
    actions: list[tuple[str, str, int]], slots: list[int], seed: int, cache: bool
) -> None:
    rng = random.Random(seed)
    fetcher = ScriptedFetcher(delay=0)
    gate = GateMeter()
    before = asyncio.all_tasks()
    many: list[tuple[set[str], dict[str, Answer]]] = []
    single: list[tuple[str, Answer]] = []

    async def caller(lookup: Lookup, uid: str, how: str, delay: int) -> None:
        for _ in range(delay):
            await asyncio.sleep(0)
        if how == "many":
            uids = {uid, rng.choice(_UIDS)}
            many.append((uids, await lookup.get_many(sorted(uids))))
        elif how == "timeout":
            try:
                record = await lookup.get(uid, timeout_s=0)
            except TimeoutError:
                return
            assert record.get("age_ms") is not None and cache  # only a cached answer is at once
            single.append((uid, record))
        else:
            single.append((uid, await lookup.get(uid)))

    async with make(fetcher, gate, clock=FakeClock(), max_pending=25) as poller:
        lookup = poller.lookup(TARGET, linger_ms=0, cache_ttl_s=10 if cache else 0)
        tasks = []
        for uid, how, delay in actions:
            task = asyncio.create_task(caller(lookup, uid, how, delay))
            tasks.append((task, how))
        for n in slots:
            await asyncio.sleep(0)
            gate.open(n)
            for task, how in tasks:
                if how == "cancel" and rng.random() < 0.3:
                    task.cancel()
        gate.open(100)
        for task, how in tasks:
            if how == "cancel":
                task.cancel()
        results = await asyncio.gather(*(t for t, _ in tasks), return_exceptions=True)
    for result in results:
        assert result is None or isinstance(result, asyncio.CancelledError | LookupOverloaded)
    # every caller that waited got its own UIDs' answers: presence (nothing here fails)
    for uids, got in many:
        assert set(got) == uids and all(got[u]["uid"] == u for u in uids)
        assert all(got[u]["type"] == "presence" for u in uids)
    for uid, record in single:
        assert record["uid"] == uid and record["type"] == "presence"
    waited = [r for (_, how), r in zip(tasks, results, strict=True) if how == "wait"]
    assert len(single) >= sum(r is None for r in waited)
    for batch in fetcher.calls:
        assert len(set(batch.uids)) == len(batch.uids) <= 20
    assert asyncio.all_tasks() - before <= {asyncio.current_task()}


# -- the README's handler ------------------------------------------------------------------


async def test_the_readme_handler_answers_through_a_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    at = readme.index('LOOKUP = web.AppKey("lookup", Lookup)')
    code = readme[readme.rindex("```python", 0, at) + len("```python") : readme.index("```", at)]
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "demo-key")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "demo-secret")
    groups = (GroupSpec("my-app", "my-group", 50),)
    async with EmulatorServer(EmulatorConfig(port=0, groups=groups)) as server:
        config = f"PollerConfig(api=ApiConfig(endpoint={server.endpoint!r}, protocol='http'))"
        assert code.count("PollerConfig()") == 1
        namespace: dict[str, object] = {"__name__": "readme", "ApiConfig": ApiConfig}
        exec(code.replace("PollerConfig()", config), namespace)
        app = namespace["app"]
        assert isinstance(app, web.Application)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            answers = []
            for uid in ("user-000001", "user-000002", "a,b"):
                response = await client.get(f"/presence/{uid}")
                assert response.status == 200
                answers.append(await response.json())
        truth = server.state.online_users("my-app", "my-group", ["user-000001", "user-000002"])
    assert [a["type"] for a in answers] == ["presence", "presence", "error"]
    assert [a["online"] for a in answers[:2]] == [t["Online"] for t in truth]
    assert answers[2]["code"] == "InvalidUserId"


async def test_a_lookup_closed_early_is_not_kept_by_the_poller() -> None:
    async with make(ScriptedFetcher()) as poller:
        lookup = poller.lookup(TARGET)
        await lookup.get("a")
        await lookup.aclose()
        gone = weakref.ref(lookup)
        del lookup
        gc.collect()
        assert gone() is None  # e.g. a daemon's reload replacing its lookups


class BrokenOnceMeter(InstantRateMeter):
    """A meter whose first acquire fails (a bug somewhere below the lookup)."""

    async def acquire(self) -> float:
        if self.granted == 0:
            self.granted = -1
            raise RuntimeError("boom")
        return await super().acquire()


async def test_a_failed_dispatcher_answers_what_waits_and_the_next_question_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fetcher = ScriptedFetcher()
    meter = BrokenOnceMeter()
    async with make(fetcher, meter) as poller:
        lookup = poller.lookup(TARGET, linger_ms=0)
        failed = await lookup.get("a")
        again = await lookup.get("a")
    assert failed["type"] == "error" and failed["code"] == "Error"
    assert failed["message"] == "not sent: internal error (RuntimeError)"
    assert again["type"] == "presence" and sent(fetcher) == ["a"]
    assert "lookup dispatcher of app/group failed" in caplog.text


async def test_a_reload_that_replaces_the_client_lets_lookups_in_flight_finish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "demo-key")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "demo-secret")
    groups = (GroupSpec("my-app", "my-group", 50),)
    async with EmulatorServer(EmulatorConfig(port=0, groups=groups, latency=Latency(200))) as emu:
        config = PollerConfig(api=ApiConfig(endpoint=emu.endpoint, protocol="http"))
        async with Poller(config) as poller:
            lookup = poller.lookup(Target("my-app", "my-group"), linger_ms=0)
            asked = asyncio.create_task(lookup.get("user-000001"))
            for _ in range(500):  # until the request is on the wire (bounded: 5 s)
                if lookup.in_flight:
                    break
                await asyncio.sleep(0.01)
            assert lookup.in_flight == 1
            wider = LimitsConfig(max_in_flight=config.limits.max_in_flight + 1)
            await poller.reconfigure(config.with_changes(limits=wider))  # a new client
            record = await asyncio.wait_for(asked, 10)
            assert record["type"] == "presence"  # not an error from the closed client
            assert (await lookup.get("user-000002"))["type"] == "presence"  # the new client


class Recorder:
    """A LookupListener that keeps what it was told."""

    def __init__(self) -> None:
        self.questions: list[str] = []
        self.batches: list[int] = []
        self.answers: list[float] = []

    def on_question(self, source: str) -> None:
        self.questions.append(source)

    def on_batch(self, uids: int) -> None:
        self.batches.append(uids)

    def on_answer(self, wait_s: float) -> None:
        self.answers.append(wait_s)


async def test_the_listener_hears_each_question_batch_and_call() -> None:
    recorder = Recorder()
    gate = GateMeter()
    async with make(ScriptedFetcher(), gate, max_pending=2) as poller:
        lookup = poller.lookup(TARGET, cache_ttl_s=60, linger_ms=0, listener=recorder)
        gate.open(1)
        await lookup.get_many(["a", "b"])  # one batch, one call
        shared = asyncio.create_task(lookup.get_many(["a", "c", "d", "bad,uid"]))
        await settle()
        twin = asyncio.create_task(lookup.get("c"))
        await settle()
        with pytest.raises(LookupOverloaded):
            await lookup.get("e")
        gate.open(1)
        await asyncio.gather(shared, twin)
    assert recorder.questions == [
        *("new", "new"),
        *("cache", "new", "new", "invalid"),
        "shared",
        "overloaded",
    ]
    assert recorder.batches == [2, 2]
    assert len(recorder.answers) == 3  # one per call that was answered, not per UID
