"""The wire side of each presence API: its request parameters and where its answer keeps the
per-user entries. Batch sizes, rate limits and the rest live in :mod:`poller.core.apis`; adding
an API is one spec there and one backend here.

``BatchGetOnlineUsers``
    ``AppId``, ``GroupId``, ``UserIds``; entries ``Result.OnlineUsers[{UserId, Online, JoinTime}]``
``CheckLiveMessageUsersInGroup``
    ``AppId``, ``GroupId``, ``UserIds``, ``DataCenter``; entries ``Users[{UserId, Online}]``
``CheckLiveMessageUsersOnline``
    ``AppId``, ``UserIds``, ``DataCenter``; entries ``UserList[{UserId, Online}]``

``UserIds`` is one comma-joined parameter, as the official SDK sends it (its "shrink" form of
the list); ``DataCenter`` is sent only when the target names one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from poller.core.apis import APP_ONLINE_API, IN_GROUP_API, LEGACY_API
from poller.core.errors import MalformedResponse
from poller.core.records import Target

__all__ = ["BACKENDS", "Backend", "backend_for"]


@dataclass(frozen=True, slots=True)
class Backend:
    """How one presence action is asked and answered on the wire."""

    action: str
    #: The answer's path to the list of per-user entries.
    entries_path: tuple[str, ...]

    def params(self, target: Target, uids: Sequence[str]) -> dict[str, str]:
        params = {"AppId": target.app_id}
        if target.group_id is not None:
            params["GroupId"] = target.group_id
        params["UserIds"] = ",".join(uids)
        if target.data_center is not None:
            params["DataCenter"] = target.data_center
        return params

    def entries(self, data: dict[str, Any], request_id: str) -> list[Any]:
        """The answer's per-user entries; :class:`MalformedResponse` when they are missing."""
        node: Any = data
        for key in self.entries_path:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, list):
            raise MalformedResponse(
                f"answer has no {'.'.join(self.entries_path)} list",
                http_status=200,
                request_id=request_id,
            )
        return node


BACKENDS: Final[dict[str, Backend]] = {
    backend.action: backend
    for backend in (
        Backend(LEGACY_API, ("Result", "OnlineUsers")),
        Backend(IN_GROUP_API, ("Users",)),
        Backend(APP_ONLINE_API, ("UserList",)),
    )
}


def backend_for(target: Target) -> Backend:
    return BACKENDS[target.api]
