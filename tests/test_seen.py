"""SeenSet behaves exactly like a set of strings, at a fraction of the memory."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from poller.core.seen import SeenSet

chars = st.one_of(st.characters(), st.sampled_from(["\ud800", "\udfff", "\x00", ","]))


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(st.text(chars, max_size=12), max_size=400))
def test_matches_a_builtin_set(items: list[str]) -> None:
    seen, reference = SeenSet(capacity=4), set()
    for item in items:
        assert seen.add(item) == (item not in reference)
        reference.add(item)
        assert item in seen
    assert len(seen) == len(reference)
    assert ("never-added-" + "x" * 20) not in seen


def test_survives_growth_and_is_compact() -> None:
    tracemalloc.start()
    seen = SeenSet()
    for i in range(200_000):
        assert seen.add(f"user-{i:07d}")
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert all(not seen.add(f"user-{i:07d}") for i in range(0, 200_000, 997))
    assert len(seen) == 200_000
    assert current / 200_000 < 64  # bytes per ID, just after a growth; a set of str: ~90


def test_batcher_switches_to_the_compact_set_without_losing_track() -> None:
    from poller.core.batching import COMPACT_AFTER, Batcher
    from poller.core.records import Batch, Target

    batcher = Batcher(Target("a", "g"))
    sent: list[str] = []
    n = COMPACT_AFTER + 500
    for i in [*range(n), *range(0, n, 7)]:  # every 7th ID comes back as a duplicate
        out = batcher.add(f"u{i}")
        if isinstance(out, Batch):
            sent.extend(out.uids)
    last = batcher.flush()
    if last is not None:
        sent.extend(last.uids)
    assert sent == [f"u{i}" for i in range(n)]
    assert batcher.duplicates == len(range(0, n, 7))
    assert isinstance(batcher._seen, SeenSet)


@settings(derandomize=True, max_examples=100, deadline=None)
@given(st.lists(st.text(chars, max_size=6), max_size=300))
def test_compact_batcher_batches_exactly_like_the_plain_one(items: list[str]) -> None:
    from poller.core.batching import Batcher
    from poller.core.records import Target

    def run(compact: bool) -> list[object]:
        batcher = Batcher(Target("a", "g"), compact=compact)
        out: list[object] = [batcher.add(i) for i in items]
        return [*out, batcher.flush(), batcher.duplicates]

    assert run(True) == run(False)


def test_ids_arriving_in_hash_order_do_not_cluster() -> None:
    """Iterating a set of str yields hash order; that must not build long probe runs."""
    items = {f"user-{i:06d}" for i in range(30_000)}
    seen = SeenSet.from_iterable(items)
    mask = seen._mask
    displacement = []
    for slot in range(mask + 1):
        if seen._index[slot] != 0xFFFFFFFF:
            home = ((seen._tags[slot] * 0x9E3779B1) & 0xFFFFFFFF) >> seen._shift
            displacement.append((slot - home) & mask)
    assert sum(displacement) / len(displacement) < 2.0
    assert max(displacement) < 64
