"""The work builder: configured targets → ``(target, UID source)`` work for a sweep.

Used by ``poller once`` and the daemon alike. A target's UIDs come from its ``uids`` list, its
``uids_file`` (streamed, re-read at every sweep) or, with ``discover = true``, from listing the
group's members through the poller (``Poller.discover``) before each sweep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from poller.config import TargetConfig
from poller.core.errors import ConfigError, PollerError, collapse
from poller.core.records import Target, TargetKey

from .poller import Poller
from .sources import UidFile, UidInput
from .sweep import Work

__all__ = ["DiscoveryFailed", "Plan", "WorkBuilder", "plan_targets"]


@dataclass(frozen=True, slots=True)
class Plan:
    """One target and its UID source; ``source is None`` means "discover the members"."""

    target: Target
    source: UidInput | None


def plan_targets(
    targets: Sequence[TargetConfig], *, source: str | None = None, check_files: bool = False
) -> list[Plan]:
    """Where each configured target's UIDs come from.

    Raises :class:`ConfigError` naming the key when a target has no source, or (with
    ``check_files``) when its UID file does not exist.
    """
    plans = []
    for i, t in enumerate(targets):
        uid_source: UidInput | None
        if t.uids is not None:
            uid_source = list(t.uids)
        elif t.uids_file is not None:
            if check_files and not t.uids_file.is_file():
                raise ConfigError(
                    f"UID file not found: {t.uids_file}",
                    source=source,
                    key=f"targets[{i}].uids_file",
                )
            uid_source = UidFile(t.uids_file)
        elif t.discover:
            uid_source = None
        else:
            raise ConfigError(
                "needs uids, uids_file or discover = true", source=source, key=f"targets[{i}]"
            )
        plans.append(Plan(t.target, uid_source))
    return plans


DiscoveryFailed: TypeAlias = Callable[[Target, PollerError, list[str] | None], None]
"""Called when listing a target's members failed, with the last known list (or ``None``)."""


class WorkBuilder:
    """Turns plans into work, listing the members of discovery targets.

    Without ``on_discovery_error`` a failed listing raises its error. With it, the failure is
    reported there and the last member list that was listed is used (a target never listed is
    left out of that sweep). Member lists are remembered across builds.
    """

    def __init__(self, *, on_discovery_error: DiscoveryFailed | None = None) -> None:
        self._on_error = on_discovery_error
        self._members: dict[TargetKey, list[str]] = {}

    async def build(self, poller: Poller, plans: Sequence[Plan]) -> list[Work]:
        wanted = [p.target for p in plans if p.source is None]
        if wanted:
            try:
                async with asyncio.TaskGroup() as tg:
                    for target in wanted:
                        tg.create_task(self._discover(poller, target))
            except BaseExceptionGroup as group:
                raise collapse(group) from None
        work: list[Work] = []
        for plan in plans:
            if plan.source is not None:
                work.append((plan.target, plan.source))
            elif (members := self._members.get(plan.target.key)) is not None:
                work.append((plan.target, members))
        return work

    async def _discover(self, poller: Poller, target: Target) -> None:
        try:
            members = await poller.discover(target)
        except PollerError as exc:
            if self._on_error is None:
                raise
            self._on_error(target, exc, self._members.get(target.key))
            return
        self._members[target.key] = members
