"""The emulated API actions: parameter validation, the RAM check, and the answer.

Each action takes the decoded business parameters (query and form body merged) and the calling
key, and returns its answer without ``RequestId`` or raises :class:`~.errors.ApiError`. A legacy
action's answer is the ``Result`` object of the response (``{"RequestId", "Result": {...}}``); an
action of the current interactive-messaging family (:data:`LIVE_MESSAGE_ACTIONS`) answers at the
top level (``{"RequestId", "Users": [...]}``), as the official SDK's models parse it.

Legacy actions (``BatchGetOnlineUsers``, ``ListMessageGroupUser``, ``JoinMessageGroup``,
``LeaveMessageGroup``). Order inside an action: ``AppId`` present (``MissingParameter``) → the key
is granted that app (403 ``Forbidden``) → the other parameters (``MissingParameter`` /
``InvalidParameter``) → work. Empty strings count as missing for ``AppId``, ``GroupId`` and
``UserId``; ``UserIds`` that is empty, has an empty element (``a,,b``) or more than 20 IDs is
``InvalidParameter``.
``JoinMessageGroup``/``LeaveMessageGroup`` accept any UserId without a comma of at most 64
characters (the documentation's stricter ``[a-z0-9_.]{1,32}`` is not enforced, so that the
emulator's own ``user-000001`` style IDs can join), and both are idempotent.

The current family (``CheckLiveMessageUsersInGroup``, ``CheckLiveMessageUsersOnline``,
``ListLiveMessageGroupUsers``; api-family.md). Order inside an action, first failure wins:

1. ``AppId`` present (the gateway's ``MissingParameter``);
2. the key is granted the app (403 ``NoAuth``);
3. ``GroupId`` present for the group actions (``MissingParameter``);
4. the other parameters: ``UserIds`` present (``MissingParameter``), 1 to 10 non-empty
   comma-separated IDs (the SDK's "simple" array style) else 400 ``InputInvalid``;
   ``ListLiveMessageGroupUsers``: ``PageSize`` (10-50) and ``SortType`` (1 ascending, 2
   descending) present (``MissingParameter``: the SDK marks both required) and valid, optional
   ``NextPageToken`` a non-negative integer (0 or absent: the first page), else ``InputInvalid``;
   ``DataCenter``, when given (empty counts as given), ``cn-shanghai`` or ``ap-southeast-1``,
   else ``InputInvalid``;
5. the app was declared with ``--app`` (404 ``ResourceNotExist``), and ``DataCenter``, when
   given, is its data center (400 ``InputInvalid``);
6. the group exists (404 ``ResourceNotExist``);
7. ``ListLiveMessageGroupUsers`` only: the group has at most 2,000 members, else 400
   ``InputInvalid`` "super group". **Assumption**: the reference says a super group's member list
   cannot be queried but names no code; ``InputInvalid`` is the family's code for a request it
   refuses to serve as asked, and a client must not retry it.

What ``Online`` means for each action, and the paging cursor, are described in :mod:`.state`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from . import errors
from .accounts import AccessKey
from .state import DATA_CENTERS, EmulatorState, Group

__all__ = [
    "ACTIONS",
    "LIVE_MESSAGE_ACTIONS",
    "MAX_LIVE_MESSAGE_USER_IDS",
    "MAX_USER_IDS",
    "SUPER_GROUP_SIZE",
    "USER_LISTS",
    "Action",
    "batch_get_online_users",
    "check_live_message_users_in_group",
    "check_live_message_users_online",
    "join_message_group",
    "leave_message_group",
    "list_live_message_group_users",
    "list_message_group_user",
    "split_user_ids",
]

MAX_USER_IDS: Final = 20
MAX_USER_ID_LENGTH: Final = 64
MAX_LIVE_MESSAGE_USER_IDS: Final = 10
SUPER_GROUP_SIZE: Final = 2000
"""A group of more members than this is a "super group": its member list cannot be queried."""
LIVE_PAGE_SIZES: Final = (10, 50)
MAX_PAGE_TOKEN: Final = 2**63 - 1

Action = Callable[[EmulatorState, dict[str, str], AccessKey], dict[str, Any]]


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise errors.missing_parameter(name)
    return value


def _app_id(params: dict[str, str], key: AccessKey) -> str:
    app_id = _required(params, "AppId")
    if not key.may_access(app_id):
        raise errors.forbidden()
    return app_id


def _int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.lstrip("-").isdigit():
        raise errors.invalid_parameter(name)
    value = int(raw)
    if not low <= value <= high:
        raise errors.invalid_parameter(name)
    return value


def split_user_ids(raw: str) -> list[str]:
    """``UserIds`` as sent: 1 to 20 non-empty, comma-separated IDs."""
    uids = raw.split(",")
    if len(uids) > MAX_USER_IDS or not all(uids):
        raise errors.invalid_parameter("UserIds")
    return uids


def _user_id(params: dict[str, str]) -> str:
    uid = _required(params, "UserId")
    if "," in uid or len(uid) > MAX_USER_ID_LENGTH:
        raise errors.invalid_parameter("UserId")
    return uid


def batch_get_online_users(
    state: EmulatorState, params: dict[str, str], key: AccessKey
) -> dict[str, Any]:
    app_id = _app_id(params, key)
    group_id = _required(params, "GroupId")
    raw = params.get("UserIds")
    if raw is None:
        raise errors.missing_parameter("UserIds")
    uids = split_user_ids(raw)
    return {"OnlineUsers": state.online_users(app_id, group_id, uids)}


def list_message_group_user(
    state: EmulatorState, params: dict[str, str], key: AccessKey
) -> dict[str, Any]:
    app_id = _app_id(params, key)
    group_id = _required(params, "GroupId")
    page_num = _int_param(params, "PageNum", 1, 1, 100_000)
    page_size = _int_param(params, "PageSize", 20, 1, 50)
    sort_type = _int_param(params, "SortType", 0, 0, 1)
    return state.list_members(app_id, group_id, page_num, page_size, descending=sort_type == 1)


def join_message_group(
    state: EmulatorState, params: dict[str, str], key: AccessKey
) -> dict[str, Any]:
    app_id = _app_id(params, key)
    group_id = _required(params, "GroupId")
    state.join(app_id, group_id, _user_id(params))
    return {"Success": True}


def leave_message_group(
    state: EmulatorState, params: dict[str, str], key: AccessKey
) -> dict[str, Any]:
    app_id = _app_id(params, key)
    group_id = _required(params, "GroupId")
    state.leave(app_id, group_id, _user_id(params))
    return {"Success": True}


# ------------------------------------------------------------------ the current family


def _live_app_id(params: dict[str, str], key: AccessKey) -> str:
    app_id = _required(params, "AppId")
    if not key.may_access(app_id):
        raise errors.no_auth()
    return app_id


def _invalid(name: str, why: str) -> errors.ApiError:
    return errors.input_invalid(f'The specified parameter "{name}" is not valid: {why}.')


def _live_user_ids(params: dict[str, str]) -> list[str]:
    raw = params.get("UserIds")
    if raw is None:
        raise errors.missing_parameter("UserIds")
    uids = raw.split(",")
    if len(uids) > MAX_LIVE_MESSAGE_USER_IDS or not all(uids):
        raise _invalid(
            "UserIds", f"1 to {MAX_LIVE_MESSAGE_USER_IDS} non-empty, comma-separated user IDs"
        )
    return uids


def _live_int(
    params: dict[str, str], name: str, low: int, high: int, *, required: bool, why: str
) -> int:
    raw = params.get(name)
    if raw is None:
        if required:
            raise errors.missing_parameter(name)
        return 0
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise _invalid(name, why)
    return int(raw)


def _requested_data_center(params: dict[str, str]) -> str | None:
    data_center = params.get("DataCenter")
    if data_center is not None and data_center not in DATA_CENTERS:
        raise _invalid("DataCenter", f"valid values are {' and '.join(DATA_CENTERS)}")
    return data_center


def _live_app(state: EmulatorState, app_id: str, data_center: str | None) -> None:
    """The app exists in the current family and ``data_center`` (when given) is its own."""
    actual = state.apps.get(app_id)
    if actual is None:
        raise errors.resource_not_exist("app", app_id)
    if data_center is not None and data_center != actual:
        raise _invalid("DataCenter", "it must be the data center the app was created in")


def _live_group(state: EmulatorState, app_id: str, group_id: str) -> Group:
    group = state.group(app_id, group_id)
    if group is None:
        raise errors.resource_not_exist("group", group_id)
    return group


def check_live_message_users_in_group(
    state: EmulatorState, params: dict[str, str], key: AccessKey
) -> dict[str, Any]:
    app_id = _live_app_id(params, key)
    group_id = _required(params, "GroupId")
    uids = _live_user_ids(params)
    data_center = _requested_data_center(params)
    _live_app(state, app_id, data_center)
    group = _live_group(state, app_id, group_id)
    return {"Users": state.users_in_group(group, uids)}


def check_live_message_users_online(
    state: EmulatorState, params: dict[str, str], key: AccessKey
) -> dict[str, Any]:
    app_id = _live_app_id(params, key)
    uids = _live_user_ids(params)
    data_center = _requested_data_center(params)
    _live_app(state, app_id, data_center)
    return {"UserList": state.users_online_in_app(app_id, uids)}


def list_live_message_group_users(
    state: EmulatorState, params: dict[str, str], key: AccessKey
) -> dict[str, Any]:
    app_id = _live_app_id(params, key)
    group_id = _required(params, "GroupId")
    low, high = LIVE_PAGE_SIZES
    page_size = _live_int(
        params, "PageSize", low, high, required=True, why=f"it must be {low} to {high}"
    )
    sort_type = _live_int(
        params, "SortType", 1, 2, required=True, why="1 (ascending) or 2 (descending)"
    )
    token = _live_int(
        params,
        "NextPageToken",
        0,
        MAX_PAGE_TOKEN,
        required=False,
        why="it must be a token from a previous answer",
    )
    data_center = _requested_data_center(params)
    _live_app(state, app_id, data_center)
    group = _live_group(state, app_id, group_id)
    if len(group.members) > SUPER_GROUP_SIZE:
        raise errors.input_invalid(
            f"The group {group_id!r} is a super group (more than {SUPER_GROUP_SIZE} members): "
            "its member list cannot be queried."
        )
    return state.list_group_users(group, page_size, sort_type == 2, token)


ACTIONS: Final[dict[str, Action]] = {
    "BatchGetOnlineUsers": batch_get_online_users,
    "ListMessageGroupUser": list_message_group_user,
    "JoinMessageGroup": join_message_group,
    "LeaveMessageGroup": leave_message_group,
    "CheckLiveMessageUsersInGroup": check_live_message_users_in_group,
    "CheckLiveMessageUsersOnline": check_live_message_users_online,
    "ListLiveMessageGroupUsers": list_live_message_group_users,
}

LIVE_MESSAGE_ACTIONS: Final = frozenset(
    {"CheckLiveMessageUsersInGroup", "CheckLiveMessageUsersOnline", "ListLiveMessageGroupUsers"}
)
"""Actions of the current family: top-level answers, ``--live-message-qps`` each."""

USER_LISTS: Final = {
    "BatchGetOnlineUsers": "OnlineUsers",
    "CheckLiveMessageUsersInGroup": "Users",
    "CheckLiveMessageUsersOnline": "UserList",
}
"""The per-UID answer list of each presence action (what a ``partial`` fault damages)."""
