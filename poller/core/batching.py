"""Pure planning: validate user IDs, drop duplicates, cut batches of at most 20.

No I/O, no clock, no asyncio: the same input always gives the same batches, which the
property tests in ``tests/test_batching.py`` rely on.

A valid user ID is a non-empty string of at most ``max_uid_bytes`` UTF-8 bytes with no ``,``
(the API's separator), no control characters, no invisible format characters (zero-width space,
BOM, bidi overrides; the zero-width joiners that emoji need are allowed), no line/paragraph
separators and no lone surrogates (undecodable input). Private-use and not-yet-assigned code
points are accepted, so validity does not depend on the Python version's Unicode tables. IDs are
never trimmed or altered: what is valid is sent exactly as given.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Final

from .records import Batch, Target
from .seen import SeenSet

__all__ = ["COMPACT_AFTER", "MAX_BATCH", "Batcher", "Rejected", "invalid_reason"]

#: The API answers for at most this many user IDs per call.
MAX_BATCH: Final = 20
#: Distinct IDs per sweep kept in a plain set before de-duplication switches to a SeenSet.
COMPACT_AFTER: Final = 100_000

_BAD_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: Format characters that real text needs (emoji ZWJ sequences, Persian/Indic scripts).
_JOINERS: Final = frozenset({"\u200c", "\u200d"})


def invalid_reason(uid: str, max_uid_bytes: int = 128) -> str | None:
    """Why ``uid`` cannot be sent, or ``None`` if it can."""
    if not uid:
        return "user ID is empty"
    if uid.isascii() and uid.isprintable():  # the common case, checked cheaply
        if "," in uid:
            return "user ID contains ','"
        if len(uid) > max_uid_bytes:
            return f"user ID is {len(uid)} bytes long (at most {max_uid_bytes})"
        return None
    if "," in uid:
        return "user ID contains ','"
    for ch in uid:
        category = unicodedata.category(ch)
        if category in _BAD_CATEGORIES and ch not in _JOINERS:
            if category == "Cs":
                return f"user ID is not valid UTF-8 (lone surrogate U+{ord(ch):04X})"
            return f"user ID contains a control or format character U+{ord(ch):04X}"
    size = len(uid.encode("utf-8"))
    if size > max_uid_bytes:
        return f"user ID is {size} bytes long (at most {max_uid_bytes})"
    return None


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input user ID that will not be sent, and why (``where`` is e.g. ``uids.txt:12``)."""

    target: Target
    uid: str
    reason: str
    where: str | None = None


class Batcher:
    """Feed user IDs one by one; get a :class:`Batch` whenever 20 valid distinct ones are ready.

    With ``dedupe`` (the default) each distinct ID, valid or not, is handled once per sweep.
    Up to :data:`COMPACT_AFTER` distinct IDs live in a plain ``set`` (fast, ~90 bytes each);
    beyond that they move to a :class:`~poller.core.seen.SeenSet` (~45 bytes each, slower), so a
    million-ID sweep stays well under 100 MB.
    """

    __slots__ = (
        "_compact_after",
        "_max_bytes",
        "_pending",
        "_seen",
        "_size",
        "dedupe",
        "duplicates",
        "target",
    )

    def __init__(
        self,
        target: Target,
        *,
        size: int = MAX_BATCH,
        dedupe: bool = True,
        max_uid_bytes: int = 128,
        compact: bool | None = None,
    ) -> None:
        if not 1 <= size <= MAX_BATCH:
            raise ValueError(f"batch size must be 1..{MAX_BATCH}, got {size}")
        self.target = target
        self.dedupe = dedupe
        self.duplicates = 0
        self._size = size
        self._max_bytes = max_uid_bytes
        self._pending: list[str] = []
        # compact=True: the input is known to be large, start compact; False: never compact
        # (the caller holds the strings anyway, e.g. a list); None: switch after COMPACT_AFTER.
        self._seen: set[str] | SeenSet = SeenSet() if compact else set()
        self._compact_after = COMPACT_AFTER if compact is None else None

    def add(self, uid: str, where: str | None = None) -> Batch | Rejected | None:
        if self.dedupe:
            seen = self._seen
            if isinstance(seen, set):
                if uid in seen:
                    self.duplicates += 1
                    return None
                seen.add(uid)
                if self._compact_after is not None and len(seen) >= self._compact_after:
                    self._seen = SeenSet.from_iterable(seen)
            elif not seen.add(uid):
                self.duplicates += 1
                return None
        reason = invalid_reason(uid, self._max_bytes)
        if reason is not None:
            return Rejected(self.target, uid, reason, where)
        if not self.dedupe and uid in self._pending:
            # Even without sweep-wide dedupe one request never asks twice for the same ID.
            return self._cut(uid)
        self._pending.append(uid)
        if len(self._pending) >= self._size:
            return self._cut()
        return None

    def _cut(self, carry: str | None = None) -> Batch:
        batch = Batch(self.target, tuple(self._pending))
        self._pending = [carry] if carry is not None else []
        return batch

    def flush(self) -> Batch | None:
        """The last, possibly short, batch (``None`` if nothing is pending)."""
        if not self._pending:
            return None
        return self._cut()
