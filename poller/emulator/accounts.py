"""Accounts, access keys (RAM-like app grants, STS tokens) and the per-key nonce memory.

Key specification, as given on the command line::

    ID:SECRET[:APP1,APP2][@ACCOUNT]          --access-key
    ID:SECRET:TOKEN[:APP1,APP2][@ACCOUNT]    --sts-key

* The optional app list limits the key to those apps (a RAM policy in miniature); a call on any
  other app is denied with 403 ``Forbidden``. No list means every app.
* Keys belong to the account ``default`` unless suffixed ``@ACCOUNT``; the QPS budget is per
  account, shared by all of its keys, as on the real cloud.
* An STS key requires its security token on every request.

IDs, secrets and tokens given this way cannot contain ``:`` or ``@``; the programmatic API
(:class:`AccessKey`) has no such restriction. Secrets and tokens never appear in a ``repr``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DEFAULT_ACCOUNT",
    "DEFAULT_KEY",
    "AccessKey",
    "KeyStore",
    "NonceStore",
    "parse_access_key",
    "parse_sts_key",
]

DEFAULT_ACCOUNT: Final = "default"
DEFAULT_NONCE_CAPACITY: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class AccessKey:
    """One AccessKey pair, the account it belongs to and the apps it may touch."""

    key_id: str
    secret: str = field(repr=False)
    account: str = DEFAULT_ACCOUNT
    apps: frozenset[str] | None = None
    """``None``: every app. Otherwise the only apps this key is granted."""
    security_token: str | None = field(default=None, repr=False)
    """Set for STS credentials: requests must carry exactly this token."""

    def __post_init__(self) -> None:
        if not self.key_id or not self.secret:
            raise ValueError("an access key needs a non-empty ID and secret")
        if not self.account:
            raise ValueError(f"access key {self.key_id!r}: empty account name")
        if self.security_token == "":
            raise ValueError(f"access key {self.key_id!r}: empty security token")

    def may_access(self, app_id: str) -> bool:
        return self.apps is None or app_id in self.apps


DEFAULT_KEY: Final = AccessKey("demo-key", "demo-secret")


def _split_account(spec: str) -> tuple[str, str]:
    body, at, account = spec.rpartition("@")
    if not at:
        return spec, DEFAULT_ACCOUNT
    if not account or ":" in account:
        raise ValueError("invalid @ACCOUNT suffix in access key specification")
    return body, account


def _parse_apps(text: str) -> frozenset[str]:
    apps = frozenset(a.strip() for a in text.split(",") if a.strip())
    if not apps:
        raise ValueError("empty app list in access key specification")
    return apps


def parse_access_key(spec: str) -> AccessKey:
    """Parse ``ID:SECRET[:APP1,APP2][@ACCOUNT]``. Errors never echo the secret."""
    body, account = _split_account(spec)
    parts = body.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ValueError("expected ID:SECRET[:APP1,APP2][@ACCOUNT]")
    apps = _parse_apps(parts[2]) if len(parts) == 3 else None
    return AccessKey(parts[0], parts[1], account=account, apps=apps)


def parse_sts_key(spec: str) -> AccessKey:
    """Parse ``ID:SECRET:TOKEN[:APP1,APP2][@ACCOUNT]``."""
    body, account = _split_account(spec)
    parts = body.split(":")
    if len(parts) not in (3, 4) or not all(parts[:3]):
        raise ValueError("expected ID:SECRET:TOKEN[:APP1,APP2][@ACCOUNT]")
    apps = _parse_apps(parts[3]) if len(parts) == 4 else None
    return AccessKey(parts[0], parts[1], account=account, apps=apps, security_token=parts[2])


class KeyStore:
    """Lookup of :class:`AccessKey` by ID."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[AccessKey]) -> None:
        self._keys: dict[str, AccessKey] = {}
        for key in keys:
            if key.key_id in self._keys:
                raise ValueError(f"duplicate access key ID {key.key_id!r}")
            self._keys[key.key_id] = key

    def get(self, key_id: str) -> AccessKey | None:
        return self._keys.get(key_id)

    @property
    def accounts(self) -> list[str]:
        return sorted({k.account for k in self._keys.values()})

    def __len__(self) -> int:
        return len(self._keys)


class NonceStore:
    """Nonces seen per key, each remembered until the request's date would expire anyway.

    A nonce is kept until ``expiry`` (epoch seconds): past that instant the same signed request
    fails the date-window check, so remembering it longer buys nothing. Expired entries are
    purged on every insert from a min-heap, so memory follows the traffic of the last window.
    As a last resort the store is capped at ``capacity`` entries per key; beyond that the entries
    closest to expiry are dropped first.
    """

    __slots__ = ("_capacity", "_heaps", "_seen")

    def __init__(self, capacity: int = DEFAULT_NONCE_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("nonce capacity must be at least 1")
        self._capacity = capacity
        self._seen: dict[str, dict[str, float]] = {}
        self._heaps: dict[str, list[tuple[float, str]]] = {}

    def is_used(self, key_id: str, nonce: str, now: float) -> bool:
        seen = self._seen.get(key_id)
        if seen is None:
            return False
        expiry = seen.get(nonce)
        return expiry is not None and expiry >= now

    def record(self, key_id: str, nonce: str, expiry: float, now: float) -> None:
        seen = self._seen.get(key_id)
        if seen is None:
            seen = self._seen[key_id] = {}
            self._heaps[key_id] = []
        heap = self._heaps[key_id]
        self._purge(seen, heap, now)
        if len(seen) >= self._capacity:
            self._evict(seen, heap)
        seen[nonce] = expiry
        heapq.heappush(heap, (expiry, nonce))

    def __len__(self) -> int:
        return sum(len(s) for s in self._seen.values())

    def clear(self) -> None:
        self._seen.clear()
        self._heaps.clear()

    @staticmethod
    def _purge(seen: dict[str, float], heap: list[tuple[float, str]], now: float) -> None:
        while heap and heap[0][0] < now:
            expiry, nonce = heapq.heappop(heap)
            # A nonce re-recorded later has a newer expiry in ``seen``: keep that one.
            if seen.get(nonce) == expiry:
                del seen[nonce]

    @staticmethod
    def _evict(seen: dict[str, float], heap: list[tuple[float, str]]) -> None:
        while heap:
            expiry, nonce = heapq.heappop(heap)
            if seen.get(nonce) == expiry:
                del seen[nonce]
                return
