"""Group discovery: learn a group's members before polling it.

Legacy targets list with ``ListMessageGroupUser``: pages of 50 read newest-first
(``SortType=1``). With members joining and leaving while we page, newest-first order means a
re-join moves a member to the front, which at worst shows it twice (the batcher drops the
duplicate) rather than shifting an unread member past a page boundary. Targets of the current
family list with ``ListLiveMessageGroupUsers``: pages of 50 chained by ``NextPageToken`` (0: no
next page), newest first (``SortType=2``). The cloud does not list a group of more than 2,000
members (a "super group"): that answer is an error, and the caller keeps its last known list.

Discovery has its own small rate budget per list action (``limits.discovery_qps``): each is a
different API with its own limit, and it must not eat the presence budget.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from poller.core.apis import api_spec
from poller.core.errors import MalformedResponse
from poller.core.ratelimit import RateMeter
from poller.core.records import Target
from poller.core.retry import Retrier

__all__ = ["LIST_ACTION", "LIVE_LIST_ACTION", "MAX_PAGES", "PAGE_SIZE", "discover_members"]

log = logging.getLogger("poller.discovery")

LIST_ACTION = "ListMessageGroupUser"
LIVE_LIST_ACTION = "ListLiveMessageGroupUsers"
PAGE_SIZE = 50
MAX_PAGES = 100_000  # the API's PageNum limit


class _Caller(Protocol):
    async def call(self, action: str, params: Mapping[str, str]) -> tuple[dict[str, Any], str]: ...


async def discover_members(
    client: _Caller, target: Target, retrier: Retrier, meter: RateMeter
) -> list[str]:
    """Every member's user ID (possibly with duplicates, never with gaps we could avoid).

    Each page goes through ``retrier`` (policy, budget, events) and pays ``meter``; a page
    that still fails raises its error.
    """
    live = api_spec(target.api).list_action == LIVE_LIST_ACTION
    action = LIVE_LIST_ACTION if live else LIST_ACTION
    members: list[str] = []
    cursor = 0 if live else 1  # the next page's token (0: the first page) or number
    for _ in range(MAX_PAGES):
        params = _live_params(target, cursor) if live else _legacy_params(target, cursor)

        async def fetch_page(
            params: dict[str, str] = params, page: int = cursor
        ) -> tuple[list[str], int]:
            data, request_id = await client.call(action, params)
            if live:
                return _parse_live_page(data, request_id)
            users, has_more = _parse_page(data, request_id)
            return users, page + 1 if has_more else 0

        outcome = await retrier.run(fetch_page, meter, action=action)
        users, cursor = outcome.unwrap()
        members.extend(users)
        if not cursor or not users:
            return members
    log.warning("group %s has more than %d pages; stopped there", target, MAX_PAGES)
    return members


def _legacy_params(target: Target, page: int) -> dict[str, str]:
    return {
        "AppId": target.app_id,
        "GroupId": target.group_id or "",
        "PageNum": str(page),
        "PageSize": str(PAGE_SIZE),
        "SortType": "1",
    }


def _live_params(target: Target, token: int) -> dict[str, str]:
    params = {"AppId": target.app_id, "GroupId": target.group_id or ""}
    params.update(PageSize=str(PAGE_SIZE), SortType="2")
    if token:
        params["NextPageToken"] = str(token)
    if target.data_center is not None:
        params["DataCenter"] = target.data_center
    return params


def _parse_page(data: dict[str, object], request_id: str) -> tuple[list[str], bool]:
    result = data.get("Result")
    if not isinstance(result, dict):
        raise MalformedResponse("ListMessageGroupUser answer has no Result", request_id=request_id)
    user_list = result.get("UserList", [])
    has_more = result.get("HasMore", False)
    if not isinstance(user_list, list) or not isinstance(has_more, bool):
        raise MalformedResponse(
            "ListMessageGroupUser Result has the wrong shape", request_id=request_id
        )
    return _user_ids(user_list, request_id), has_more


def _parse_live_page(data: dict[str, object], request_id: str) -> tuple[list[str], int]:
    """The page's user IDs and the next page's token (0: none)."""
    user_list = data.get("UserList", [])
    has_more = data.get("Hasmore", False)
    token = data.get("NextPageToken", 0)
    if not isinstance(user_list, list) or not isinstance(has_more, bool) or type(token) is not int:
        raise MalformedResponse(
            f"{LIVE_LIST_ACTION} answer has the wrong shape", request_id=request_id
        )
    return _user_ids(user_list, request_id), token if has_more else 0


def _user_ids(user_list: list[object], request_id: str) -> list[str]:
    users = []
    for entry in user_list:
        uid = entry.get("UserId") if isinstance(entry, dict) else None
        if not isinstance(uid, str):
            raise MalformedResponse("UserList entry without a UserId", request_id=request_id)
        users.append(uid)
    return users
