"""The emulator's configuration (:class:`EmulatorConfig`), its command-line flags, and its
clock (:class:`ServerClock`)."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from poller.core.clock import http_date

from .accounts import DEFAULT_KEY, AccessKey, parse_access_key, parse_sts_key
from .faults import FaultRates, Latency
from .state import DATA_CENTERS, AppSpec, GroupSpec

__all__ = ["DEFAULT_GROUP", "DEFAULT_PORT", "EmulatorConfig", "ServerClock", "build_parser"]

DEFAULT_PORT: Final = 8780
DEFAULT_GROUP: Final = GroupSpec("demo-app", "demo-group", 1000)
NO_LATENCY: Final = Latency()
NO_FAULTS: Final = FaultRates()


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Everything the emulator can be told. Frozen; validated on construction.

    ``wall_clock`` (epoch seconds) drives date checks, nonce expiry, join times and churn;
    ``monotonic`` drives the QPS windows. Inject both in tests to control time.
    ``clock_offset_s`` is added to ``wall_clock`` for the date checks, nonce expiry and the
    ``Date`` header (the gateway's clock), not for membership (see :class:`ServerClock`).
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    keys: tuple[AccessKey, ...] = (DEFAULT_KEY,)
    groups: tuple[GroupSpec, ...] = (DEFAULT_GROUP,)
    apps: tuple[AppSpec, ...] = ()
    """Apps of the current interactive-messaging family (``--app APP:DATACENTER``); the groups
    of such an app belong to it."""
    qps: int = 100
    """Per account and legacy action (``BatchGetOnlineUsers``, ...), over every sliding
    one-second window; 0 = unlimited."""
    live_message_qps: int = 50
    """Per account and action of the current family (``CheckLiveMessageUsersInGroup``,
    ``CheckLiveMessageUsersOnline``, ``ListLiveMessageGroupUsers``); 0 = unlimited."""
    online_fraction: float = 0.5
    churn_per_s: float = 0.0
    """Online/offline flips per second per configured group (0 = static membership)."""
    seed: int = 0
    latency: Latency = NO_LATENCY
    faults: FaultRates = NO_FAULTS
    fault_seed: int | None = None
    """Seed of the fault sequence; ``None`` uses ``seed``."""
    hang_s: float = 30.0
    date_window_s: float = 900.0
    """Accepted distance between the request's date and the wall clock (either direction)."""
    clock_offset_s: float = 0.0
    """Seconds added to the gateway's clock (set at run time with ``/_emulator/clock``)."""
    nonce_capacity: int = 1_000_000
    """Upper bound of remembered nonces per key (expired ones are purged long before)."""
    tls_cert: str | None = None
    """PEM certificate chain: serve HTTPS (the real endpoint is HTTPS only)."""
    tls_key: str | None = None
    wall_clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    monotonic: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be within 0..65535")
        if not self.keys:
            raise ValueError("at least one access key is required")
        ids = [k.key_id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("access key IDs must be unique")
        pairs = [(g.app_id, g.group_id) for g in self.groups]
        if len(set(pairs)) != len(pairs):
            raise ValueError("each APP/GROUP may be given once")
        app_ids = [a.app_id for a in self.apps]
        if len(set(app_ids)) != len(app_ids):
            raise ValueError("each --app may be given once")
        if self.qps < 0:
            raise ValueError("qps must be >= 0 (0 = unlimited)")
        if self.live_message_qps < 0:
            raise ValueError("live message qps must be >= 0 (0 = unlimited)")
        if not 0.0 <= self.online_fraction <= 1.0:
            raise ValueError("online fraction must be within [0, 1]")
        for name in ("churn_per_s", "hang_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0")
        if not math.isfinite(self.clock_offset_s):
            raise ValueError("clock offset must be a finite number of seconds")
        if not (math.isfinite(self.date_window_s) and self.date_window_s > 0):
            raise ValueError("date window must be > 0 seconds")
        if self.nonce_capacity < 1:
            raise ValueError("nonce capacity must be >= 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")

    @property
    def effective_fault_seed(self) -> int:
        return self.seed if self.fault_seed is None else self.fault_seed

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, **overrides: Any) -> EmulatorConfig:
        """Parse command-line flags (argparse: bad flags exit with status 2).

        ``overrides`` set fields that have no flag, e.g. ``wall_clock=...``.
        """
        parser = build_parser()
        return cls.from_namespace(parser.parse_args(argv), parser, **overrides)

    @classmethod
    def from_namespace(
        cls, args: argparse.Namespace, parser: argparse.ArgumentParser, **overrides: Any
    ) -> EmulatorConfig:
        """Build from parsed flags; invalid values are reported through ``parser.error``."""
        try:
            keys = [parse_access_key(s) for s in args.access_key]
            keys += [parse_sts_key(s) for s in args.sts_key]
            groups = [GroupSpec.parse(s) for s in args.group]
            apps = [AppSpec.parse(s) for s in args.app]
            fields: dict[str, Any] = {
                "host": args.host,
                "port": args.port,
                "keys": tuple(keys) or (DEFAULT_KEY,),
                "groups": tuple(groups) if groups else (DEFAULT_GROUP,),
                "apps": tuple(apps),
                "qps": args.qps,
                "live_message_qps": args.live_message_qps,
                "online_fraction": args.online_fraction,
                "churn_per_s": args.churn_per_s,
                "seed": args.seed,
                "latency": Latency.parse(args.latency_ms),
                "faults": FaultRates.parse(args.faults),
                "fault_seed": args.fault_seed,
                "hang_s": args.hang_s,
                "date_window_s": args.date_window_s,
                "clock_offset_s": args.clock_offset_s,
                "tls_cert": args.tls_cert,
                "tls_key": args.tls_key,
            }
            fields.update(overrides)
            return cls(**fields)
        except ValueError as exc:
            parser.error(str(exc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poller emulator",
        description="Local emulator of the ApsaraVideo Live RPC endpoint: the legacy "
        "interactive-messaging actions (BatchGetOnlineUsers, ListMessageGroupUser, "
        "JoinMessageGroup, LeaveMessageGroup) and the current family's presence actions "
        "(CheckLiveMessageUsersInGroup, CheckLiveMessageUsersOnline, ListLiveMessageGroupUsers). "
        "Prints its base URL as the first line of stdout; inspection under /_emulator/.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    add("--port", type=int, default=DEFAULT_PORT, help="0 = any free port (default: %(default)s)")
    add(
        "--access-key",
        action="append",
        default=[],
        metavar="ID:SECRET[:APPS][@ACCOUNT]",
        help="accepted key, repeatable; APPS (comma-separated) limits it to those apps; "
        "default: demo-key:demo-secret for all apps",
    )
    add(
        "--sts-key",
        action="append",
        default=[],
        metavar="ID:SECRET:TOKEN[:APPS][@ACCOUNT]",
        help="accepted STS key that requires TOKEN, repeatable",
    )
    add(
        "--group",
        action="append",
        default=[],
        metavar="APP/GROUP:N",
        help="group with N members user-000001..., repeatable (default: demo-app/demo-group:1000);"
        " a group of an --app app belongs to the current family",
    )
    add(
        "--app",
        action="append",
        default=[],
        metavar="APP:DATACENTER",
        help="app of the current interactive-messaging family, repeatable; DATACENTER is "
        f"{' or '.join(DATA_CENTERS)}",
    )
    add(
        "--qps",
        type=int,
        default=100,
        help="per account and legacy action (BatchGetOnlineUsers, ...), sliding 1 s; "
        "0 = unlimited (default: %(default)s)",
    )
    add(
        "--live-message-qps",
        type=int,
        default=50,
        help="per account and current-family action (CheckLiveMessageUsersInGroup, "
        "CheckLiveMessageUsersOnline, ListLiveMessageGroupUsers), sliding 1 s; 0 = unlimited "
        "(default: %(default)s)",
    )
    add("--online-fraction", type=float, default=0.5, help="share online at start")
    add("--churn-per-s", type=float, default=0.0, help="online/offline flips per second per group")
    add("--seed", type=int, default=0, help="seed of membership, churn, latency and faults")
    add("--latency-ms", default="0", metavar="MS[±JITTER]", help="added delay, e.g. 50 or 50±10")
    add("--faults", default="", metavar="KIND=RATE,...", help="e.g. 500=0.05,hang=0.01")
    add("--fault-seed", type=int, default=None, help="seed of the fault sequence (default: --seed)")
    add("--hang-s", type=float, default=30.0, help="how long a 'hang' fault holds the request")
    add("--date-window-s", type=float, default=900.0, help="accepted clock skew, seconds")
    add(
        "--clock-offset-s",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="added to the gateway's clock (date checks and the Date header), e.g. -3600",
    )
    add("--tls-cert", default=None, metavar="PEM", help="serve HTTPS with this certificate chain")
    add("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert")
    add("--log-level", default="INFO", help="stderr log level (default: %(default)s)")
    return parser


class ServerClock:
    """The gateway's clock: ``wall_clock() + offset_s``. It dates the timestamp checks, nonce
    expiry and the ``Date`` header of API answers; ``offset_s`` may be changed at run time."""

    __slots__ = ("_date", "_wall", "offset_s")

    def __init__(self, wall_clock: Callable[[], float], offset_s: float = 0.0) -> None:
        self._wall = wall_clock
        self.offset_s = offset_s
        self._date: tuple[int, str] = (-1, "")

    def now(self) -> float:
        return self._wall() + self.offset_s

    def http_date(self) -> str:
        """The ``Date`` header for an answer sent now (formatted once per second)."""
        second = int(self.now())
        if second != self._date[0]:
            self._date = (second, http_date(second))
        return self._date[1]
