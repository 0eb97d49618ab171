"""Apps, message groups and their members, with seeded, clock-driven churn.

Model
    ``(app_id, group_id)`` → :class:`Group` → ``uid`` → :class:`Member`. A member is *online*
    (answers ``Online: true`` with its ``JoinTime``) or *offline* (still a member, listed by
    ``ListMessageGroupUser``, but answers ``Online: false, JoinTime: 0``). For the legacy
    actions, any app/group that was never configured behaves as an existing, empty group: every
    UID answers not online, the member list is empty, and ``JoinMessageGroup`` creates it
    (without churn). The current family is stricter (below).

Start
    ``--group APP/GROUP:N`` creates ``user-000001`` … ``user-{N:06d}``. A ``random.Random(seed)``
    decides, member by member in configuration order, who is online (``online_fraction``) and
    when each joined (up to an hour before start).

Churn
    With ``churn_per_s = R`` each configured group of N members sees R flips per second on
    average: every member flips online↔offline with period ``N / R`` at a phase derived from a
    hash of ``(seed, app, group, uid)``. Going online is a re-join: ``JoinTime`` becomes the flip
    instant (epoch ms). The state at time *t* is computed in O(1) from the member's last explicit
    change, so answers depend only on the emulator's wall clock, never on when or how often it was
    asked. Explicit changes (API join/leave, ``/_emulator/members``) restart the member's schedule
    from that instant.

The current interactive-messaging family
    ``--app APP:DATACENTER`` (:class:`AppSpec`) declares an app of the current family in
    ``cn-shanghai`` or ``ap-southeast-1``; the ``--group`` s of that app are its groups. Unlike
    the legacy actions, the current ones are strict about existence: an app that was not declared
    with ``--app``, or a group of it that does not exist (neither configured nor created through
    ``/_emulator/members`` or ``JoinMessageGroup``), is ``ResourceNotExist``. Both families read
    the same membership (an emulator simplification: a legacy call naming a current-family group
    sees its members, and vice versa). The current family's answers have no join time:

    * ``CheckLiveMessageUsersInGroup``: ``Online`` is true when the user is a member of the group
      and online now (an offline member is not "in the group now");
    * ``CheckLiveMessageUsersOnline``: ``Online`` is true when the user is online in at least one
      group of the app (the emulator has no notion of a connected user outside any group);
    * ``ListLiveMessageGroupUsers`` lists every member, online or not (as ``ListMessageGroupUser``
      does), ordered by when it became a member (:attr:`Member.seq`: the initial members in the
      order of their seeded join times, later ones in the order they were added). Churn flips
      presence but not membership, so that order is stable and the page token is a cursor: the
      ``seq`` of the first member of the next page (``seq`` starts at 1, so 0 means "no next
      page"). Members who leave or join between pages never make a page skip or repeat anyone
      else.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DATA_CENTERS",
    "MEMBER_ID_FORMAT",
    "AppSpec",
    "EmulatorState",
    "Group",
    "GroupSpec",
    "Member",
]

MEMBER_ID_FORMAT: Final = "user-{:06d}"
INITIAL_JOIN_SPREAD_S: Final = 3600.0
DATA_CENTERS: Final = ("cn-shanghai", "ap-southeast-1")
"""The data centers an app of the current interactive-messaging family can live in."""


@dataclass(frozen=True, slots=True)
class AppSpec:
    """An app of the current interactive-messaging family: ``APP:DATACENTER``."""

    app_id: str
    data_center: str

    def __post_init__(self) -> None:
        if not self.app_id:
            raise ValueError("app specification needs an app ID")
        if self.data_center not in DATA_CENTERS:
            raise ValueError(
                f"app {self.app_id!r}: data center must be one of {', '.join(DATA_CENTERS)}, "
                f"got {self.data_center!r}"
            )

    @classmethod
    def parse(cls, spec: str) -> AppSpec:
        app_id, colon, data_center = spec.rpartition(":")
        if not colon or not app_id:
            raise ValueError(f"expected APP:DATACENTER, got {spec!r}")
        return cls(app_id, data_center)


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A group to create at start: ``APP/GROUP:N``."""

    app_id: str
    group_id: str
    size: int

    def __post_init__(self) -> None:
        if not self.app_id or not self.group_id:
            raise ValueError("group specification needs an app ID and a group ID")
        if self.size < 0:
            raise ValueError("group size must be >= 0")

    @classmethod
    def parse(cls, spec: str) -> GroupSpec:
        path, colon, count = spec.rpartition(":")
        app_id, slash, group_id = path.partition("/")
        if not colon or not slash or not count.isdigit():
            raise ValueError(f"expected APP/GROUP:N, got {spec!r}")
        return cls(app_id, group_id, int(count))


class Member:
    """One member. ``online``/``join_ms`` hold its state as of ``since`` (wall seconds);
    ``seq`` (from 1, unique in its group) orders members by when they became members."""

    __slots__ = ("join_ms", "online", "phase", "seq", "since", "uid")

    def __init__(
        self, uid: str, online: bool, join_ms: int, since: float, phase: float, seq: int = 0
    ) -> None:
        self.uid = uid
        self.online = online
        self.join_ms = join_ms  # last time it joined (ms), 0 if never
        self.since = since
        self.phase = phase  # churn phase in [0, period)
        self.seq = seq

    def at(self, now: float, period: float | None) -> tuple[bool, int]:
        """``(online, last join ms)`` at wall time ``now`` under a churn ``period`` (or none)."""
        if period is None or now <= self.since:
            return self.online, self.join_ms
        k_now = math.floor((now - self.phase) / period)
        flips = k_now - math.floor((self.since - self.phase) / period)
        if flips <= 0:
            return self.online, self.join_ms
        online = self.online ^ bool(flips & 1)
        last_flip = self.phase + k_now * period
        if online:
            return True, int(last_flip * 1000)
        if flips == 1:  # was online at `since`, has just gone offline
            return False, self.join_ms
        return False, int((last_flip - period) * 1000)

    def set(self, now: float, online: bool, join_ms: int) -> None:
        self.online, self.join_ms, self.since = online, join_ms, now


class Group:
    """The members of one message group and its churn period (``None``: no churn)."""

    __slots__ = ("_next_seq", "_salt", "app_id", "group_id", "members", "period")

    def __init__(self, app_id: str, group_id: str, period: float | None, seed: int) -> None:
        self.app_id = app_id
        self.group_id = group_id
        self.period = period
        self.members: dict[str, Member] = {}
        self._salt = f"{seed}\0{app_id}\0{group_id}\0".encode()
        self._next_seq = 1

    def phase_of(self, uid: str) -> float:
        if self.period is None:
            return 0.0
        digest = hashlib.blake2b(self._salt + uid.encode("utf-8", "surrogatepass"), digest_size=8)
        return int.from_bytes(digest.digest(), "big") / 2.0**64 * self.period

    def add(self, uid: str, online: bool, join_ms: int, now: float) -> Member:
        member = Member(uid, online, join_ms, now, self.phase_of(uid), self._next_seq)
        self._next_seq += 1
        self.members[uid] = member
        return member

    def order_by_join_time(self) -> None:
        """Renumber ``seq`` by (join time, uid): the seeded members joined in that order."""
        ordered = sorted(self.members.values(), key=lambda m: (m.join_ms, m.uid))
        for seq, member in enumerate(ordered, 1):
            member.seq = seq
        self._next_seq = len(ordered) + 1

    def is_online(self, uid: str, now: float) -> bool:
        member = self.members.get(uid)
        if member is None:
            return False
        return member.online if self.period is None else member.at(now, self.period)[0]

    def presence(self, uid: str, now: float) -> tuple[bool, int]:
        """What ``BatchGetOnlineUsers`` answers: ``(Online, JoinTime)``, JoinTime 0 if offline."""
        member = self.members.get(uid)
        if member is None:
            return False, 0
        online, join_ms = member.at(now, self.period)
        return (True, join_ms) if online else (False, 0)


class EmulatorState:
    """All groups, created from :class:`GroupSpec` s and driven by an injectable wall clock."""

    def __init__(
        self,
        specs: Sequence[GroupSpec],
        *,
        online_fraction: float,
        churn_per_s: float,
        seed: int,
        wall_clock: Callable[[], float],
        apps: Sequence[AppSpec] = (),
    ) -> None:
        self._specs = tuple(specs)
        #: Apps of the current interactive-messaging family: app ID → data center.
        self.apps: dict[str, str] = {a.app_id: a.data_center for a in apps}
        self._online_fraction = online_fraction
        self._churn_per_s = churn_per_s
        self._seed = seed
        self.clock = wall_clock
        self.groups: dict[tuple[str, str], Group] = {}
        self._by_app: dict[str, dict[str, Group]] = {}
        self.reset()

    def reset(self) -> None:
        """Recreate the configured groups as at start, with the clock's current time."""
        now = self.clock()
        rng = random.Random(self._seed)
        self.groups = {}
        self._by_app = {}
        for spec in self._specs:
            period = None
            if self._churn_per_s > 0 and spec.size > 0:
                period = spec.size / self._churn_per_s
            group = Group(spec.app_id, spec.group_id, period, self._seed)
            self._register(group)
            for i in range(1, spec.size + 1):
                online = rng.random() < self._online_fraction
                join_ms = int((now - rng.random() * INITIAL_JOIN_SPREAD_S) * 1000)
                group.add(MEMBER_ID_FORMAT.format(i), online, join_ms, now)
            group.order_by_join_time()

    def _register(self, group: Group) -> None:
        self.groups[(group.app_id, group.group_id)] = group
        self._by_app.setdefault(group.app_id, {})[group.group_id] = group

    def group(self, app_id: str, group_id: str) -> Group | None:
        return self.groups.get((app_id, group_id))

    def _group_for_write(self, app_id: str, group_id: str) -> Group:
        group = self.groups.get((app_id, group_id))
        if group is None:
            group = Group(app_id, group_id, None, self._seed)
            self._register(group)
        return group

    # ---------------------------------------------------------------------------- API answers

    def online_users(self, app_id: str, group_id: str, uids: Iterable[str]) -> list[dict[str, Any]]:
        """``Result.OnlineUsers`` for ``BatchGetOnlineUsers``, in request order."""
        group = self.groups.get((app_id, group_id))
        if group is None:
            return [{"UserId": uid, "Online": False, "JoinTime": 0} for uid in uids]
        members = group.members
        period = group.period
        now = self.clock()
        out = []
        for uid in uids:  # the hot path: inlined Group.presence
            member = members.get(uid)
            if member is None:
                online, join_ms = False, 0
            elif period is None:
                online, join_ms = member.online, member.join_ms
            else:
                online, join_ms = member.at(now, period)
            out.append({"UserId": uid, "Online": online, "JoinTime": join_ms if online else 0})
        return out

    def list_members(
        self, app_id: str, group_id: str, page_num: int, page_size: int, descending: bool
    ) -> dict[str, Any]:
        """``Result`` of ``ListMessageGroupUser``: members ordered by (last) join time."""
        group = self.groups.get((app_id, group_id))
        rows: list[tuple[int, str]] = []
        if group is not None:
            now = self.clock()
            for uid, member in group.members.items():
                rows.append((member.at(now, group.period)[1], uid))
        rows.sort(reverse=descending)
        start = (page_num - 1) * page_size
        page = rows[start : start + page_size]
        return {
            "HasMore": start + page_size < len(rows),
            "Total": len(rows),
            "UserList": [{"UserId": uid, "JoinTime": join_ms} for join_ms, uid in page],
        }

    # ------------------------------------------------------- the current family's answers

    def users_in_group(self, group: Group, uids: Iterable[str]) -> list[dict[str, Any]]:
        """``Users`` of ``CheckLiveMessageUsersInGroup``, in request order."""
        now = self.clock()
        return [{"UserId": uid, "Online": group.is_online(uid, now)} for uid in uids]

    def users_online_in_app(self, app_id: str, uids: Iterable[str]) -> list[dict[str, Any]]:
        """``UserList`` of ``CheckLiveMessageUsersOnline``: online in any group of the app."""
        now = self.clock()
        groups = tuple(self._by_app.get(app_id, {}).values())
        return [
            {"UserId": uid, "Online": any(g.is_online(uid, now) for g in groups)} for uid in uids
        ]

    @staticmethod
    def list_group_users(
        group: Group, page_size: int, descending: bool, token: int
    ) -> dict[str, Any]:
        """``ListLiveMessageGroupUsers`` without ``RequestId``: one page from cursor ``token``
        (0: the first page) in membership order; see the module docstring."""
        members = sorted(group.members.values(), key=lambda m: m.seq, reverse=descending)
        if token:
            if descending:
                members = [m for m in members if m.seq <= token]
            else:
                members = [m for m in members if m.seq >= token]
        page, rest = members[:page_size], members[page_size:]
        return {
            "GroupId": group.group_id,
            "UserList": [{"UserId": m.uid, "UserInfo": ""} for m in page],
            "Hasmore": bool(rest),
            "NextPageToken": rest[0].seq if rest else 0,
        }

    # ---------------------------------------------------------------------------- changes

    def join(self, app_id: str, group_id: str, uid: str) -> None:
        """Join, or re-join: online from now, with a new ``JoinTime``."""
        self.set_online(app_id, group_id, uid)

    def leave(self, app_id: str, group_id: str, uid: str) -> bool:
        """Remove the member; ``False`` if it was not one."""
        group = self.groups.get((app_id, group_id))
        return group is not None and group.members.pop(uid, None) is not None

    def set_online(self, app_id: str, group_id: str, uid: str) -> None:
        now = self.clock()
        group = self._group_for_write(app_id, group_id)
        member = group.members.get(uid)
        if member is None:
            group.add(uid, True, int(now * 1000), now)
        else:
            member.set(now, True, int(now * 1000))

    def set_offline(self, app_id: str, group_id: str, uid: str) -> None:
        """Keep (or make) ``uid`` a member, offline from now."""
        now = self.clock()
        group = self._group_for_write(app_id, group_id)
        member = group.members.get(uid)
        if member is None:
            group.add(uid, False, 0, now)
        else:
            member.set(now, False, member.at(now, group.period)[1])

    # ---------------------------------------------------------------------------- inspection

    def snapshot(self, app_id: str, group_id: str) -> list[dict[str, Any]]:
        """Every member: ``user_id``, ``online``, ``join_time`` (as BatchGetOnlineUsers would
        answer it, 0 when offline) and ``last_join_time`` (as ListMessageGroupUser lists it)."""
        group = self.groups.get((app_id, group_id))
        if group is None:
            return []
        now = self.clock()
        out = []
        for uid, member in group.members.items():
            online, last_join = member.at(now, group.period)
            out.append(
                {
                    "user_id": uid,
                    "online": online,
                    "join_time": last_join if online else 0,
                    "last_join_time": last_join,
                }
            )
        return out

    def summary(self) -> list[dict[str, Any]]:
        now = self.clock()
        out = []
        for (app_id, group_id), group in self.groups.items():
            online = sum(1 for m in group.members.values() if m.at(now, group.period)[0])
            out.append(
                {
                    "app_id": app_id,
                    "group_id": group_id,
                    "members": len(group.members),
                    "online": online,
                    "churn_period_s": group.period,
                    "data_center": self.apps.get(app_id),
                }
            )
        return out
