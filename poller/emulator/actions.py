"""The four emulated API actions: parameter validation, the RAM check, and the ``Result``.

Each action takes the decoded business parameters (query and form body merged) and the calling
key, and returns the ``Result`` object of the response or raises :class:`~.errors.ApiError`.

Order inside an action: ``AppId`` present (``MissingParameter``) → the key is granted that app
(403 ``Forbidden``) → the other parameters (``MissingParameter`` / ``InvalidParameter``) → work.
Empty strings count as missing for ``AppId``, ``GroupId`` and ``UserId``; ``UserIds`` that is
empty, has an empty element (``a,,b``) or more than 20 IDs is ``InvalidParameter``.
``JoinMessageGroup``/``LeaveMessageGroup`` accept any UserId without a comma of at most 64
characters (the documentation's stricter ``[a-z0-9_.]{1,32}`` is not enforced, so that the
emulator's own ``user-000001`` style IDs can join), and both are idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from . import errors
from .accounts import AccessKey
from .state import EmulatorState

__all__ = [
    "ACTIONS",
    "MAX_USER_IDS",
    "Action",
    "batch_get_online_users",
    "join_message_group",
    "leave_message_group",
    "list_message_group_user",
    "split_user_ids",
]

MAX_USER_IDS: Final = 20
MAX_USER_ID_LENGTH: Final = 64

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


ACTIONS: Final[dict[str, Action]] = {
    "BatchGetOnlineUsers": batch_get_online_users,
    "ListMessageGroupUser": list_message_group_user,
    "JoinMessageGroup": join_message_group,
    "LeaveMessageGroup": leave_message_group,
}
