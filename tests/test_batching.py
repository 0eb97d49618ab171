"""Validation, dedupe and batching of user IDs (poller.core.batching), by property and example."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.core.batching import MAX_BATCH, Batcher, Rejected, invalid_reason
from poller.core.records import Batch, Target

TARGET = Target("app", "group")

# Deterministic: the same examples on every run, no example database.
PROPS = settings(derandomize=True, deadline=None, max_examples=150)

# What the module documents as unsendable: control and invisible format characters (but the
# zero-width (non-)joiners that emoji and some scripts need), lone surrogates, line/paragraph
# separators. Private-use and unassigned code points are fine: they depend on the Unicode
# version, not on the ID.
_BAD = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_JOINERS = {"\u200c", "\u200d"}


def expected_valid(uid: str, max_bytes: int = 128) -> bool:
    """An oracle written from the documented rule, independent of the module's code path."""
    if not uid or "," in uid:
        return False
    if any(unicodedata.category(ch) in _BAD and ch not in _JOINERS for ch in uid):
        return False
    try:
        size = len(uid.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogate
        return False
    return size <= max_bytes


# Any code point, surrogates included, plus the separators hypothesis rarely draws by itself.
any_char = st.one_of(
    st.characters(exclude_categories=()),
    st.sampled_from([",", "\n", "\r", "\x00", "\x7f", "\u2028", "\u2029", "\ud800", "\udcff"]),
)
# st.text() never yields surrogates, so strings are joined from single characters.
short_text = st.lists(any_char, max_size=12).map("".join)
plain = st.one_of(
    st.integers(min_value=0, max_value=10**6).map(lambda n: f"u{n}"),
    st.text(alphabet="abcxyz019 -_~+/=%&*", min_size=1, max_size=6),
)
long_ascii = st.integers(min_value=120, max_value=140).map(lambda n: "a" * n)
long_multibyte = st.builds(
    lambda ch, n: ch * n,
    st.sampled_from(["é", "用", "🙂"]),
    st.integers(min_value=30, max_value=70),
)
# Long IDs built from a repeated piece: cheap for hypothesis to generate, up to ~500 chars.
very_long = st.builds(
    lambda piece, n: piece * n,
    st.lists(any_char, min_size=1, max_size=8).map("".join),
    st.integers(min_value=17, max_value=64),
)
with_comma = st.builds(lambda a, b: f"{a},{b}", plain, plain)

one_uid = st.one_of(plain, plain, short_text, long_ascii, long_multibyte, very_long, with_comma)

# Lists with many repeats (drawn from a small pool) and lists of mostly distinct IDs.
uid_lists = st.one_of(
    st.lists(one_uid, max_size=40),
    st.lists(st.one_of(plain, plain, one_uid), min_size=21, max_size=60),
    st.lists(one_uid, min_size=1, max_size=30).flatmap(
        lambda pool: st.lists(st.sampled_from(pool), max_size=100)
    ),
)


def run(uids: list[str], **kwargs: object) -> tuple[Batcher, list[Batch], list[Rejected]]:
    batcher = Batcher(TARGET, **kwargs)  # type: ignore[arg-type]
    batches: list[Batch] = []
    rejected: list[Rejected] = []
    for i, uid in enumerate(uids):
        out = batcher.add(uid, where=f"in:{i}")
        if isinstance(out, Batch):
            batches.append(out)
        elif isinstance(out, Rejected):
            rejected.append(out)
        else:
            assert out is None
    last = batcher.flush()
    if last is not None:
        batches.append(last)
    assert batcher.flush() is None  # nothing left behind
    return batcher, batches, rejected


def first_seen(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# ----------------------------------------------------------------------------------------------
# Properties


@PROPS
@given(uid_lists, st.integers(min_value=1, max_value=MAX_BATCH))
def test_dedupe_sends_each_distinct_valid_uid_once_in_order(uids: list[str], size: int) -> None:
    batcher, batches, rejected = run(uids, size=size)

    for batch in batches:
        assert 1 <= len(batch.uids) <= size <= MAX_BATCH
        assert batch.target == TARGET

    distinct = first_seen(uids)
    sent = [uid for batch in batches for uid in batch.uids]
    assert sent == [u for u in distinct if expected_valid(u)]
    assert len(sent) == len(set(sent))  # no UID in two batches

    assert [r.uid for r in rejected] == [u for u in distinct if not expected_valid(u)]
    for r in rejected:
        assert r.reason
        assert r.target == TARGET
        assert r.where is not None and r.where.startswith("in:")
        # where points at the first occurrence
        assert r.where == f"in:{uids.index(r.uid)}"
    assert not set(sent) & {r.uid for r in rejected}

    assert batcher.duplicates == len(uids) - len(distinct)


@PROPS
@given(uid_lists, st.integers(min_value=1, max_value=MAX_BATCH))
def test_without_dedupe_every_valid_occurrence_is_sent(uids: list[str], size: int) -> None:
    batcher, batches, rejected = run(uids, size=size, dedupe=False)

    for batch in batches:
        assert 1 <= len(batch.uids) <= size
        assert len(set(batch.uids)) == len(batch.uids), "one request asks twice for an ID"

    sent = [uid for batch in batches for uid in batch.uids]
    assert sent == [u for u in uids if expected_valid(u)]
    assert [r.uid for r in rejected] == [u for u in uids if not expected_valid(u)]
    assert batcher.duplicates == 0


@PROPS
@given(st.lists(one_uid, max_size=60))
def test_invalid_reason_agrees_with_documented_rule(uids: list[str]) -> None:
    for uid in uids:
        reason = invalid_reason(uid)
        assert (reason is None) == expected_valid(uid), (uid, reason)


# ----------------------------------------------------------------------------------------------
# Examples


def test_full_batches_then_a_short_one() -> None:
    uids = [f"u{i}" for i in range(45)]
    _, batches, rejected = run(uids)
    assert [len(b.uids) for b in batches] == [20, 20, 5]
    assert rejected == []


def test_batch_is_cut_exactly_at_twenty() -> None:
    batcher = Batcher(TARGET)
    outs = [batcher.add(f"u{i}") for i in range(20)]
    assert outs[:19] == [None] * 19
    assert isinstance(outs[19], Batch)
    assert outs[19].uids == tuple(f"u{i}" for i in range(20))
    assert batcher.flush() is None


def test_duplicate_invalid_uid_is_rejected_once_and_counted() -> None:
    batcher, batches, rejected = run(["a,b", "ok", "a,b", "ok", "a,b"])
    assert [b.uids for b in batches] == [("ok",)]
    assert [r.uid for r in rejected] == ["a,b"]
    assert batcher.duplicates == 3


def test_without_dedupe_repeat_starts_a_new_batch() -> None:
    _, batches, _ = run(["a", "b", "a", "c"], dedupe=False)
    assert [b.uids for b in batches] == [("a", "b"), ("a", "c")]


def test_custom_max_uid_bytes() -> None:
    _, batches, rejected = run(["abcd", "abcde"], max_uid_bytes=4)
    assert [b.uids for b in batches] == [("abcd",)]
    assert [r.uid for r in rejected] == ["abcde"]


@pytest.mark.parametrize("size", [0, -1, MAX_BATCH + 1])
def test_batch_size_out_of_range(size: int) -> None:
    with pytest.raises(ValueError, match="batch size"):
        Batcher(TARGET, size=size)


def test_flush_on_empty_batcher() -> None:
    assert Batcher(TARGET).flush() is None


@pytest.mark.parametrize(
    ("uid", "fragment"),
    [
        ("", "empty"),
        (",", "','"),
        ("a,b", "','"),
        ("u1,", "','"),
        ("用户,2", "','"),
        ("\n", "U+000A"),
        ("a\nb", "U+000A"),
        ("\x00", "U+0000"),
        ("\x7f", "U+007F"),
        ("a\tb", "U+0009"),
        ("é\r", "U+000D"),
        ("zero\u200bwidth", "U+200B"),
        ("bom\ufeff", "U+FEFF"),
        ("line\u2028sep", "U+2028"),
        ("\ud800", "surrogate"),
        ("abc\udcff", "surrogate"),
        ("x" * 200, "200 bytes"),
    ],
)
def test_invalid_reason_rejects(uid: str, fragment: str) -> None:
    reason = invalid_reason(uid)
    assert reason is not None
    assert fragment in reason


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("x" * 128, True),
        ("x" * 129, False),
        ("é" * 64, True),  # 64 characters, 128 bytes
        ("é" * 65, False),  # 65 characters, 130 bytes
        ("用" * 42, True),  # 126 bytes
        ("用" * 42 + "ab", True),  # 128 bytes
        ("用" * 43, False),  # 43 characters but 129 bytes
        ("🙂" * 32, True),  # 128 bytes
        ("🙂" * 32 + "a", False),  # 33 characters, 129 bytes
    ],
)
def test_length_limit_counts_utf8_bytes(uid: str, valid: bool) -> None:
    reason = invalid_reason(uid)
    assert (reason is None) is valid, reason
    if not valid:
        assert reason is not None
        assert f"{len(uid.encode())} bytes" in reason


@pytest.mark.parametrize(
    "uid", ["用户1", "a~b", "c*d", "e f", "g+h", "/", "=", "%", "&", " lead", "trail ", "Ωmega"]
)
def test_valid_ids_are_accepted_unchanged(uid: str) -> None:
    assert invalid_reason(uid) is None
    _, batches, rejected = run([uid])
    assert rejected == []
    assert [b.uids for b in batches] == [(uid,)]
