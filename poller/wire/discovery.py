"""Group discovery: learn a group's members with ``ListMessageGroupUser`` before polling it.

Pages of 50 are read newest-first (``SortType=1``). With members joining and leaving while we
page, newest-first order means a re-join moves a member to the front, which at worst shows it
twice (the batcher drops the duplicate) rather than shifting an unread member past a page
boundary. Discovery has its own small rate budget (``limits.discovery_qps``): it is a different
API with its own limit, and it must not eat the presence budget.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from poller.core.errors import MalformedResponse
from poller.core.ratelimit import RateMeter
from poller.core.records import Target
from poller.core.retry import Retrier

__all__ = ["LIST_ACTION", "MAX_PAGES", "PAGE_SIZE", "discover_members"]

log = logging.getLogger("poller.discovery")

LIST_ACTION = "ListMessageGroupUser"
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
    members: list[str] = []
    for page in range(1, MAX_PAGES + 1):
        params = {
            "AppId": target.app_id,
            "GroupId": target.group_id or "",
            "PageNum": str(page),
            "PageSize": str(PAGE_SIZE),
            "SortType": "1",
        }

        async def fetch_page(params: dict[str, str] = params) -> tuple[list[str], bool]:
            data, request_id = await client.call(LIST_ACTION, params)
            return _parse_page(data, request_id)

        outcome = await retrier.run(fetch_page, meter, action=LIST_ACTION)
        users, has_more = outcome.unwrap()
        members.extend(users)
        if not has_more or not users:
            return members
    log.warning("group %s has more than %d pages; stopped there", target, MAX_PAGES)
    return members


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
    users = []
    for entry in user_list:
        uid = entry.get("UserId") if isinstance(entry, dict) else None
        if not isinstance(uid, str):
            raise MalformedResponse("UserList entry without a UserId", request_id=request_id)
        users.append(uid)
    return users, has_more
