"""ChangeTracker: changes against the last *known* state, versions, forgetting, deltas."""

from __future__ import annotations

from poller.core.changes import ChangeTracker
from poller.core.records import (
    ChangeRecord,
    Record,
    Target,
    TargetKey,
    error_record,
    presence_record,
)

T = Target("app", "g")
KEY: TargetKey = T.key


def ok(uid: str, online: bool, sweep: int, join_time: int | None = 0) -> Record:
    return presence_record(T, uid, online, join_time, sweep=sweep, polled_at=sweep, request_id="r")


def err(uid: str, sweep: int) -> Record:
    return error_record(T, uid, "InternalError", "boom", sweep=sweep, polled_at=sweep)


def changes(out: list[Record]) -> list[ChangeRecord]:
    return [r for r in out if r["type"] == "change"]


def sweep(tracker: ChangeTracker, n: int, records: list[Record]) -> list[ChangeRecord]:
    out = changes(tracker.process(records))
    tracker.end_sweep(n, {KEY})
    return out


def test_first_sweep_is_learned_silently_then_flips_count_versions() -> None:
    tracker = ChangeTracker()
    assert sweep(tracker, 1, [ok("a", True, 1), ok("b", False, 1)]) == []
    [c] = sweep(tracker, 2, [ok("a", False, 2), ok("b", False, 2)])
    assert (c["uid"], c["online"], c["previous_online"], c["version"]) == ("a", False, True, 1)
    [c] = sweep(tracker, 3, [ok("a", True, 3), ok("b", False, 3)])
    assert (c["previous_online"], c["version"]) == (False, 2)
    [c] = sweep(tracker, 4, [ok("a", True, 4, join_time=9), ok("b", False, 4)])  # a re-join
    assert (c["online"], c["previous_online"], c["join_time"], c["version"]) == (True, True, 9, 3)
    assert tracker.changes == 3
    assert tracker.known(KEY) == {"a": (True, 9, 3, False), "b": (False, 0, 0, False)}


def test_a_failed_poll_keeps_the_last_known_state() -> None:
    tracker = ChangeTracker()
    sweep(tracker, 1, [ok("a", True, 1)])
    assert sweep(tracker, 2, [err("a", 2)]) == []
    assert sweep(tracker, 3, [err("a", 3)]) == []
    assert sweep(tracker, 4, [ok("a", True, 4)]) == []  # same as the last known: no change
    [c] = sweep(tracker, 5, [ok("a", False, 5)])
    assert (c["previous_online"], c["version"]) == (True, 1)


def test_a_uid_failing_since_the_first_sweep_is_learned_silently() -> None:
    """The spurious ``previous_online: null`` records of issue 12: never for an original UID."""
    tracker = ChangeTracker()
    assert sweep(tracker, 1, [ok("a", True, 1), err("b", 1)]) == []
    assert sweep(tracker, 2, [ok("a", True, 2), err("b", 2)]) == []
    assert sweep(tracker, 3, [ok("a", True, 3), ok("b", True, 3)]) == []
    assert tracker.known(KEY)["b"] == (True, 0, 0, False)
    [c] = sweep(tracker, 4, [ok("a", True, 4), ok("b", False, 4)])
    assert (c["uid"], c["previous_online"], c["version"]) == ("b", True, 1)


def test_a_uid_added_later_is_announced_once_even_after_failures() -> None:
    tracker = ChangeTracker()
    sweep(tracker, 1, [ok("a", True, 1)])
    # a UID that joins a known target starts at its first answer's polled_at (here the sweep)
    [c] = sweep(tracker, 2, [ok("a", True, 2), ok("new", False, 2)])
    assert (c["uid"], c["online"], c["previous_online"], c["version"]) == ("new", False, None, 2)
    assert sweep(tracker, 3, [ok("a", True, 3), err("late", 3)]) == []
    assert sweep(tracker, 4, [ok("a", True, 4), err("late", 4)]) == []
    [c] = sweep(tracker, 5, [ok("a", True, 5), ok("late", True, 5)])
    assert (c["uid"], c["previous_online"], c["version"]) == ("late", None, 5)
    assert sweep(tracker, 6, [ok("a", True, 6), ok("late", True, 6)]) == []


def test_emit_all_writes_presence_and_no_announcement() -> None:
    tracker = ChangeTracker("all")
    out = tracker.process([ok("a", True, 1)])
    tracker.end_sweep(1, {KEY})
    assert [r["type"] for r in out] == ["presence"]
    out = tracker.process([ok("a", False, 2), ok("new", True, 2)])
    assert [r["type"] for r in out] == ["presence", "change", "presence"]


def test_absent_uids_and_targets_are_forgotten_errors_count_as_present() -> None:
    tracker = ChangeTracker()
    other = Target("app", "other")
    tracker.process([ok("a", True, 1), ok("b", True, 1)])
    tracker.process([presence_record(other, "x", True, 0, sweep=1, polled_at=1, request_id="")])
    tracker.end_sweep(1, {KEY, other.key})
    tracker.process([err("a", 2)])  # b is absent from sweep 2; a failed but is present
    online = tracker.end_sweep(2, {KEY})
    assert online == {KEY: 1}
    assert set(tracker.known(KEY)) == {"a"}
    assert tracker.known(other.key) == {}
    # b comes back: it is a new UID of a known target now
    [c] = sweep(tracker, 3, [ok("a", True, 3), ok("b", True, 3)])
    assert (c["uid"], c["previous_online"], c["version"]) == ("b", None, 3)


def test_a_uid_listed_again_after_it_was_forgotten_never_repeats_a_version() -> None:
    """Sinks de-duplicate changes on (target, uid, version): a UID dropped from the list and
    listed again must not reuse its earlier versions (it used to start over at 1)."""
    tracker = ChangeTracker()
    versions: list[int] = []
    online = True
    for n in range(1, 40):
        listed = n % 10 not in (4, 5)  # absent from sweeps 4-5, 14-15, ...: forgotten each time
        if not listed:
            sweep(tracker, n, [ok("a", True, n)])
            continue
        online = not online if n % 3 else online
        out = sweep(tracker, n, [ok("a", True, n), ok("u", online, n)])
        versions += [c["version"] for c in out]
    assert len(versions) > 20 and len(set(versions)) == len(versions)
    assert versions == sorted(versions)  # and they only grow


def test_deltas_hold_only_what_changed() -> None:
    tracker = ChangeTracker()
    sweep(tracker, 1, [ok("a", True, 1), ok("b", True, 1), err("c", 1)])
    first = tracker.take_delta(1)
    assert first.full and first.sweep == 1
    assert first.upserts == {
        KEY: {"a": (True, 0, 0, False), "b": (True, 0, 0, False), "c": (None, None, 0, False)}
    }
    sweep(tracker, 2, [ok("a", False, 2), err("c", 2)])  # b forgotten, c still unknown
    delta = tracker.take_delta(2)
    assert not delta.full
    assert delta.upserts == {KEY: {"a": (False, 0, 1, False)}}
    assert delta.deletes == {KEY: {"b"}}
    sweep(tracker, 3, [ok("a", False, 3), err("c", 3)])
    assert len(tracker.take_delta(3)) == 0
    tracker.end_sweep(4, set())
    assert tracker.take_delta(4).dropped == {KEY}
    tracker.save_failed()
    assert tracker.take_delta(4).full


def test_restore_continues_versions_and_reports_what_changed_meanwhile() -> None:
    tracker = ChangeTracker()
    tracker.restore({KEY: {"a": (True, 0, 4, False), "u": (None, None, 0, True)}}, 7)
    out = sweep(tracker, 8, [ok("a", False, 8), ok("u", True, 8), ok("n", True, 8)])
    got = {(c["uid"], c["previous_online"], c["version"]) for c in out}
    assert got == {("a", True, 5), ("u", None, 8), ("n", None, 8)}
    assert not tracker.take_delta(8).full


def test_invalid_ids_are_written_but_never_kept_as_state() -> None:
    """An ID that was never sent (it may not even be valid text) has no state to remember."""
    tracker = ChangeTracker()
    bad = error_record(T, "bad\udcff", "InvalidUserId", "not UTF-8", sweep=1, polled_at=1)
    out = tracker.process([ok("u1", True, 1), bad])
    assert bad in out
    tracker.end_sweep(1, {KEY})
    assert list(tracker.take_delta(1).upserts.get(KEY, {})) == ["u1"]


def test_a_target_listed_again_or_added_after_a_restart_never_repeats_a_version() -> None:
    tracker = ChangeTracker()
    sweep(tracker, 1, [ok("u", True, 1)])
    [first] = sweep(tracker, 2, [ok("u", False, 2)])
    tracker.end_sweep(3, set())  # the target is dropped from the config: forgotten
    assert sweep(tracker, 4, [ok("u", False, 4)]) == []  # back: learned silently...
    [again] = sweep(tracker, 5, [ok("u", True, 5)])
    assert (first["version"], again["version"]) == (1, 5)  # ...at a fresh base, not 0
    restarted = ChangeTracker()
    restarted.restore({}, 5)  # saved after sweep 5; this target is not in it
    assert sweep(restarted, 6, [ok("u", True, 6)]) == []
    [later] = sweep(restarted, 7, [ok("u", False, 7)])
    assert later["version"] == 7
    fresh = ChangeTracker()
    fresh.restore({}, 0)  # nothing ever saved: a new daemon starts at 0
    sweep(fresh, 1, [ok("u", True, 1)])
    [flip] = sweep(fresh, 2, [ok("u", False, 2)])
    assert flip["version"] == 1
