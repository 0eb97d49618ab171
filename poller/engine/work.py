"""The work builder: configured targets → ``(target, UID source)`` work for a sweep.

Used by ``poller once`` and the daemon alike. A target's UIDs come from its ``uids`` list, its
``uids_file`` (streamed, re-read at every sweep) or, with ``discover = true``, from listing the
group's members through the poller (``Poller.discover``) before each sweep.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from poller.config import TargetConfig
from poller.core.errors import ConfigError, PollerError, collapse
from poller.core.records import Target, TargetKey

from .poller import Poller
from .sources import UidFile, UidInput
from .sweep import Work

__all__ = ["DiscoveryFailed", "Plan", "SourceFailed", "WorkBuilder", "plan_targets"]


@dataclass(frozen=True, slots=True)
class Plan:
    """One target and its UID source; ``source is None`` means "discover the members"."""

    target: Target
    source: UidInput | None


def plan_targets(
    targets: Sequence[TargetConfig],
    *,
    source: str | None = None,
    check_files: bool = False,
    known_good: Callable[[Target, Path], bool] | None = None,
) -> list[Plan]:
    """Where each configured target's UIDs come from.

    Raises :class:`ConfigError` naming the key when a target has no source, or (with
    ``check_files``) when its UID file does not exist and ``known_good`` (e.g.
    :meth:`WorkBuilder.has_copy`) knows no good copy of it either.
    """
    plans = []
    for i, t in enumerate(targets):
        uid_source: UidInput | None
        if t.uids is not None:
            uid_source = list(t.uids)
        elif t.uids_file is not None:
            missing = check_files and not t.uids_file.is_file()
            if missing and not (known_good and known_good(t.target, t.uids_file)):
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

SourceFailed: TypeAlias = Callable[[Target, ConfigError, bool], None]
"""Called when a UID file could not be read, and whether the last good copy is used instead."""


class WorkBuilder:
    """Turns plans into work, listing the members of discovery targets.

    Without ``on_discovery_error`` a failed listing raises its error. With it, the failure is
    reported there and the last member list that was listed is used (a target never listed is
    left out of that sweep). Member lists are remembered across builds.

    With ``copies_dir``, every UID file is copied there before each sweep and the sweep reads the
    copy (a stable snapshot, however the file is replaced meanwhile). A file that cannot be read
    is reported to ``on_source_error`` and its last good copy is used; a target with no good copy
    yet is left out of that sweep. Million-UID lists stay streamed: the copy is a file, not a list.
    """

    def __init__(
        self,
        *,
        on_discovery_error: DiscoveryFailed | None = None,
        copies_dir: Path | None = None,
        on_source_error: SourceFailed | None = None,
    ) -> None:
        self._on_error = on_discovery_error
        self._members: dict[TargetKey, list[str]] = {}
        self._copies = copies_dir
        self._on_source_error = on_source_error
        #: Lists a discovery target's members instead of ``poller.discover`` (a fleet member
        #: reads the list its leader shared).
        self.discoverer: Callable[[Target], Awaitable[list[str]]] | None = None

    def has_copy(self, target: Target, path: Path) -> bool:
        """A good copy of ``target``'s UID file ``path`` is kept."""
        return self._copies is not None and self._copy_path(target, path).is_file()

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
            if isinstance(plan.source, UidFile) and self._copies is not None:
                copy = await self._snapshot(plan.target, plan.source.path)
                if copy is not None:
                    work.append((plan.target, copy))
            elif plan.source is not None:
                work.append((plan.target, plan.source))
            elif (members := self._members.get(plan.target.key)) is not None:
                work.append((plan.target, members))
        return work

    async def _discover(self, poller: Poller, target: Target) -> None:
        try:
            members = await (self.discoverer or poller.discover)(target)
        except PollerError as exc:
            if self._on_error is None:
                raise
            self._on_error(target, exc, self._members.get(target.key))
            return
        self._members[target.key] = members

    def _copy_path(self, target: Target, path: Path) -> Path:
        assert self._copies is not None
        digest = hashlib.sha256(repr((target.key, str(path))).encode()).hexdigest()[:16]
        return self._copies / f"uids-{digest}.txt"

    async def _snapshot(self, target: Target, path: Path) -> UidFile | None:
        copy = self._copy_path(target, path)
        try:
            await asyncio.to_thread(_copy_file, path, copy)
        except OSError as exc:
            error = ConfigError(f"cannot read UID file: {exc.strerror or exc}", source=str(path))
            kept = copy.is_file()
            if self._on_source_error is None:
                raise error from exc
            self._on_source_error(target, error, kept)
            return UidFile(copy) if kept else None
        return UidFile(copy)


def _copy_file(source: Path, copy: Path) -> None:
    """``source`` copied to ``copy``, replacing it only once the whole file was read."""
    copy.parent.mkdir(parents=True, exist_ok=True)
    partial = copy.with_name(copy.name + ".part")
    with source.open("rb") as src, partial.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    os.replace(partial, copy)
