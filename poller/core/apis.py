"""The presence APIs a target can name, as data: what the pipeline takes from each (pure).

Two generations of the interactive-messaging service answer presence. The legacy
``BatchGetOnlineUsers`` works on apps made with ``CreateMessageApp``; the current family
(``CheckLiveMessageUsersInGroup``, ``CheckLiveMessageUsersOnline``) on apps made with
``CreateLiveMessageApp``, which live in one data center (``DataCenter``). Each action has its
own per-account rate limit, batch size and answer shape; the wire side of each lives in
:mod:`poller.wire.backends`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "API_ACTIONS",
    "API_SPECS",
    "APP_ONLINE_API",
    "APP_WIDE_ACTIONS",
    "IN_GROUP_API",
    "LEGACY_API",
    "ApiSpec",
    "api_spec",
]

#: The legacy presence action, the default of every target.
LEGACY_API: Final = "BatchGetOnlineUsers"
#: Is the user in this group now (the current family).
IN_GROUP_API: Final = "CheckLiveMessageUsersInGroup"
#: Is the user online in the app (the current family; no group).
APP_ONLINE_API: Final = "CheckLiveMessageUsersOnline"


@dataclass(frozen=True, slots=True)
class ApiSpec:
    """What the pipeline needs to know of one presence action."""

    action: str
    #: User IDs per request.
    batch_size: int
    #: The cloud's documented requests per second per account (the ``[limits]`` default).
    qps: float
    #: The action asks about a whole app: its targets have no group.
    app_wide: bool
    #: Its answers carry a join time (the current family's do not: ``join_time`` is null).
    join_time: bool
    #: It takes the app's ``DataCenter`` (the current family).
    data_center: bool
    #: The action that lists a group's members (``discover = true``).
    list_action: str
    #: The ``[limits]`` key of its rate limit.
    qps_key: str


API_SPECS: Final[dict[str, ApiSpec]] = {
    spec.action: spec
    for spec in (
        ApiSpec(LEGACY_API, 20, 100.0, False, True, False, "ListMessageGroupUser", "qps"),
        ApiSpec(
            IN_GROUP_API, 10, 50.0, False, False, True, "ListLiveMessageGroupUsers", "in_group_qps"
        ),
        ApiSpec(
            APP_ONLINE_API,
            10,
            50.0,
            True,
            False,
            True,
            "ListLiveMessageGroupUsers",
            "app_online_qps",
        ),
    )
}
#: Presence actions a target may name.
API_ACTIONS: Final = frozenset(API_SPECS)
#: Actions that ask about a whole app: their targets have no group.
APP_WIDE_ACTIONS: Final = frozenset(a for a, spec in API_SPECS.items() if spec.app_wide)


def api_spec(api: str) -> ApiSpec:
    """The spec of presence action ``api`` (``KeyError`` for an unknown one)."""
    return API_SPECS[api]
