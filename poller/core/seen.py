"""A compact, exact set of strings for per-sweep de-duplication of millions of user IDs.

A Python ``set[str]`` costs about 90 bytes per short ID (the ``str`` object kept alive plus the
hash-table slot), ~90 MB for a million IDs. :class:`SeenSet` keeps the UTF-8 bytes of every ID
back to back in one ``bytearray`` and finds them through an open-addressing table of 32-bit
indices and 32-bit hash tags (two ``array`` s), 30 to 45 bytes per short ID depending on load.
Membership is exact: a candidate is compared byte for byte, so a hash collision can never drop
a distinct ID.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Final

__all__ = ["SeenSet"]

_EMPTY: Final = 0xFFFFFFFF
_MAX_LOAD: Final = 0.7
_TAG: Final = 0xFFFFFFFF  # the low 32 bits of the hash are kept as a tag
# Fibonacci hashing picks the slot from the tag's top bits after a multiply, so that inputs
# arriving in hash order (iterating a set of str gives exactly that) do not pile up in one run.
_FIB: Final = 0x9E3779B1


class SeenSet:
    __slots__ = ("_arena", "_count", "_index", "_mask", "_offsets", "_shift", "_tags")

    def __init__(self, capacity: int = 1024) -> None:
        size = 1
        while size < capacity:
            size *= 2
        self._arena = bytearray()
        # Item i is arena[offsets[i]:offsets[i + 1]]; 32-bit offsets: up to 4 GiB of IDs.
        self._offsets = array("I", [0])
        self._index = array("I", [_EMPTY]) * size
        self._tags = array("I", [0]) * size  # growing re-slots from these, never rehashes
        self._mask = size - 1
        self._shift = 32 - (size.bit_length() - 1)
        self._count = 0

    @classmethod
    def from_iterable(cls, items: Iterable[str], capacity: int = 1024) -> SeenSet:
        seen = cls(capacity)
        for item in items:
            seen.add(item)
        return seen

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item: str) -> bool:
        data = item.encode("utf-8", "surrogatepass")
        return self._find(data, hash(data) & _TAG)[0]

    def add(self, item: str) -> bool:
        """Add ``item``; return ``True`` if it was not there before."""
        data = item.encode("utf-8", "surrogatepass")
        h = hash(data) & _TAG
        found, slot = self._find(data, h)
        if found:
            return False
        arena = self._arena
        arena += data
        self._offsets.append(len(arena))
        self._index[slot] = self._count
        self._tags[slot] = h
        self._count += 1
        if self._count > _MAX_LOAD * (self._mask + 1):
            self._grow()
        return True

    def _find(self, data: bytes, h: int) -> tuple[bool, int]:
        index, tags, offsets, arena, mask = (
            self._index,
            self._tags,
            self._offsets,
            self._arena,
            self._mask,
        )
        slot = ((h * _FIB) & _TAG) >> self._shift
        while True:
            i = index[slot]
            if i == _EMPTY:
                return False, slot
            if tags[slot] == h and arena[offsets[i] : offsets[i + 1]] == data:
                return True, slot
            slot = (slot + 1) & mask

    def _grow(self) -> None:
        size = (self._mask + 1) * 2
        index = array("I", [_EMPTY]) * size
        tags = array("I", [0]) * size
        mask = size - 1
        shift = 32 - (size.bit_length() - 1)
        for i, h in zip(self._index, self._tags, strict=True):
            if i == _EMPTY:
                continue
            slot = ((h * _FIB) & _TAG) >> shift
            while index[slot] != _EMPTY:
                slot = (slot + 1) & mask
            index[slot] = i
            tags[slot] = h
        self._index, self._tags, self._mask, self._shift = index, tags, mask, shift
