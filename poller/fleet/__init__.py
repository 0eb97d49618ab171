"""Several poller processes on one account, coordinated through Redis (``[cluster]``).

Imported only when a config has a ``[cluster]`` section: without one, poller never imports
``redis``. :mod:`poller.fleet.budget` shares the account's request budget between members;
:mod:`poller.fleet.scripts` holds what runs inside Redis and the key layout;
:mod:`poller.fleet.status` reads the fleet for ``poller cluster status``.
"""

from __future__ import annotations

from .budget import (
    Fleet,
    FleetStatus,
    FleetUnavailable,
    SharedRateMeter,
    account_of,
    open_redis,
    redis_secrets,
)

__all__ = [
    "Fleet",
    "FleetStatus",
    "FleetUnavailable",
    "SharedRateMeter",
    "account_of",
    "open_redis",
    "redis_secrets",
]
