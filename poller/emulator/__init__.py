"""A local emulator of the ApsaraVideo Live RPC endpoint, strict like the real cloud.

Serves the legacy interactive-messaging actions ``BatchGetOnlineUsers``, ``ListMessageGroupUser``,
``JoinMessageGroup`` and ``LeaveMessageGroup`` and the current family's presence actions
``CheckLiveMessageUsersInGroup``, ``CheckLiveMessageUsersOnline`` and ``ListLiveMessageGroupUsers``
(apps declared with ``--app APP:DATACENTER``; see :mod:`.actions` and :mod:`.state`)
(``Version=2016-11-01``) at ``/``, verifies V3 and V1 signatures, enforces per-account, per-action
QPS over sliding one-second windows, keeps seeded group membership with churn, injects seeded
latency and faults, and exposes inspection endpoints under ``/_emulator/``.

Modules: :mod:`.server` (pipeline, app, server), :mod:`.sockets` (TLS, listening, hang-ups),
:mod:`.auth` (signature checks), :mod:`.accounts` (keys, RAM grants, nonces), :mod:`.state`
(groups and churn), :mod:`.throttle` (windows and statistics), :mod:`.faults`, :mod:`.errors`
(envelope and codes), :mod:`.actions` (the seven APIs), :mod:`.inspection`, :mod:`.config`,
:mod:`.cli`.

Usage::

    async with EmulatorServer(EmulatorConfig(port=0)) as server:
        ...  # point a client at server.endpoint with protocol "http"
"""

from __future__ import annotations

from .accounts import DEFAULT_ACCOUNT, AccessKey, parse_access_key, parse_sts_key
from .config import EmulatorConfig
from .errors import ApiError
from .faults import FAULT_KINDS, FaultRates, Latency
from .server import EMULATOR_KEY, Emulator, EmulatorServer, build_app
from .state import DATA_CENTERS, AppSpec, EmulatorState, GroupSpec

__all__ = [
    "DATA_CENTERS",
    "DEFAULT_ACCOUNT",
    "EMULATOR_KEY",
    "FAULT_KINDS",
    "AccessKey",
    "ApiError",
    "AppSpec",
    "Emulator",
    "EmulatorConfig",
    "EmulatorServer",
    "EmulatorState",
    "FaultRates",
    "GroupSpec",
    "Latency",
    "build_app",
    "parse_access_key",
    "parse_sts_key",
]
