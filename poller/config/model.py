"""The configuration model: frozen dataclasses whose fields carry their defaults and checks.

Each default is written once, as the field's default. A field's own check sits in its metadata
(``metadata=FINITE_GT_0``) and runs at construction; checks of several fields live in the
``__post_init__`` of their dataclass. Errors are :class:`ConfigError` naming the dotted key
(``limits.qps``); an entry of an array (:class:`TargetConfig`, :class:`SinkConfig`) names keys
relative to itself (``app_id``), prefixed by the loader (``targets[2].app_id``).

Metadata keys the loader and the renderer read:

``check``
    ``(value) -> problem or None``, run by ``__post_init__``.
``file_check``
    ``(path) -> problem or None``, run by the loader only (it touches the file system, so a
    dataclass built in code is not checked).
``secret``
    the value is never echoed in an error and is masked by ``render_toml``.
``mask``
    ``(value) -> str``: how ``render_toml`` shows a secret that is partly public (a URL whose
    password alone is hidden); without it a secret shows as ``****``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from poller.core.apis import API_SPECS, APP_ONLINE_API, IN_GROUP_API, LEGACY_API, api_spec
from poller.core.errors import ConfigError
from poller.core.records import Target
from poller.core.retry import (
    DEFAULT_BUDGET_MIN_TOKENS,
    DEFAULT_BUDGET_RATIO,
    RetryBudget,
    RetryPolicy,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "ApiConfig",
    "ClusterConfig",
    "CredentialsConfig",
    "DaemonConfig",
    "LimitsConfig",
    "MetricsConfig",
    "PollerConfig",
    "RetryConfig",
    "SinkConfig",
    "SweepConfig",
    "TargetConfig",
    "split_endpoint",
]

DEFAULT_ENDPOINT: Final = "live.aliyuncs.com"

Check = Callable[[Any], "str | None"]


# ----------------------------------------------------------------------------------------------
# Field checks, as metadata


def _finite(bound: float, *, inclusive: bool) -> Mapping[str, Check]:
    op = ">=" if inclusive else ">"

    def check(value: float) -> str | None:
        ok = math.isfinite(value) and (value >= bound if inclusive else value > bound)
        return None if ok else f"must be a finite number {op} {bound:g}; got {value!r}"

    return {"check": check}


def _between(low: int, high: int | None = None) -> Mapping[str, Check]:
    def check(value: int) -> str | None:
        if value >= low and (high is None or value <= high):
            return None
        if high is None:
            return f"must be >= {low}; got {value!r}"
        return f"must be between {low} and {high}; got {value!r}"

    return {"check": check}


def _host_port(value: str) -> str | None:
    if not value:
        return None  # off
    host, sep, port = value.rpartition(":")
    if sep and host and port.isascii() and port.isdigit() and int(port) <= 65535:
        return None
    return f"must be host:port, e.g. 127.0.0.1:9108; got {value!r}"


def _endpoint(value: str) -> str | None:
    try:
        split_endpoint(value, 443)
    except ConfigError as exc:
        return exc.detail
    return None


def _ca_bundle(path: Path) -> str | None:
    """A readable PEM bundle of CA certificates, or what is wrong with it."""
    import ssl  # only a config with a ca_file pays for it

    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:  # before OSError: SSLError is one
        return f"not a valid PEM CA bundle: {str(path)!r} ({exc.reason or exc})"
    except OSError as exc:
        return f"cannot read the CA bundle {str(path)!r}: {exc.strerror or exc}"
    return None


def _masked_authority(rest: str, *, keep_lone_user: bool) -> tuple[str, str]:
    """``rest`` (a URL after ``scheme://``) as its authority, with the password (or, unless
    ``keep_lone_user``, a lone user name) replaced by ``****``, and the tail after it."""
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        if colon:
            netloc = f"{user}:****@{hostport}"
        else:
            netloc = f"{user}@{hostport}" if keep_lone_user else f"****@{hostport}"
    return netloc, tail


def mask_url(url: str) -> str:
    """``url`` with its password (or a lone user name) replaced by ``****``, and without a query
    or fragment (they may hold tokens): ``http://user:secret@host:3128`` becomes
    ``http://user:****@host:3128``. Safe to log and print; for proxy and Redis URLs alike."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc, tail = _masked_authority(rest, keep_lone_user=False)
    return f"{scheme}{sep}{netloc}{tail.split('?', 1)[0].split('#', 1)[0]}"


def env_secret(variable: str, *, key: str) -> str:
    """The value of the environment variable ``variable`` that a config key (``key``) names,
    e.g. a password or a DSN; :class:`ConfigError` naming both when it is unset or empty."""
    value = os.environ.get(variable, "")
    if not value:
        raise ConfigError(f"environment variable {variable} is not set", key=key)
    return value


_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")


def _redis_url(value: str) -> str | None:
    scheme, sep, rest = value.partition("://")
    if not value:
        return "required: the Redis server of the fleet, e.g. redis://127.0.0.1:6379/0"
    if not sep or scheme not in _REDIS_SCHEMES or not rest:
        # Without a scheme the value may be a bare password: it is not echoed.
        got = f"; got {mask_url(value)!r}" if sep else " (it has no scheme)"
        return f"must be a redis://host:port/db, rediss://host:port/db or unix:///path URL{got}"
    return None


def _env_name(value: str) -> str | None:
    if not value or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        return None
    # Not echoed: it may be the secret itself, written where its variable's name belongs.
    return "must be the name of an environment variable (letters, digits, _), not its value"


def is_loopback(listen: str) -> bool:
    """Whether the host of ``listen`` (``host:port``) is a loopback address: 127.0.0.0/8,
    ``::1`` or ``localhost``. Host names other than ``localhost`` are not resolved: not."""
    host = listen.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _api_name(value: str) -> str | None:
    if value in API_SPECS:
        return None
    return f"unknown API {value!r}; one of {', '.join(sorted(API_SPECS))}"


def _data_center(value: str | None) -> str | None:
    if value is None or re.fullmatch(r"[a-z]{2}(-[a-z0-9]+)+", value):
        return None
    return f"must be a region ID such as cn-shanghai or ap-southeast-1; got {value!r}"


RECORD_TYPES: Final = ("presence", "change", "error")
#: Keys of one kind of sink only (``check-config`` shows them for that kind).
WEBHOOK: Final = {"kinds": ("webhook",)}
FILE: Final = {"kinds": ("file", "stdout")}


def _record_types(value: tuple[str, ...] | None) -> str | None:
    if value is None:
        return None
    bad = [t for t in value if t not in RECORD_TYPES]
    if bad or not value:
        return f"must be a non-empty list of {', '.join(RECORD_TYPES)}; got {list(value)!r}"
    return None


def _webhook_url(value: str) -> str | None:
    if not value or re.match(r"https?://[^/\s]+", value):
        return None
    return "must be an http:// or https:// URL"


def _headers(value: tuple[str, ...]) -> str | None:
    for item in value:
        name, sep, _ = item.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", name.strip()):
            return "every item must be 'Name: value'"  # never the value: it may be a token
    return None


def _key_part(value: str) -> str | None:
    """A piece of a Redis key: no braces (they would break the hash tag), no spaces."""
    if any(c in value for c in "{} \t\r\n"):
        return f"must contain no braces or white space; got {value!r}"
    return None


FINITE_GT_0: Final = _finite(0, inclusive=False)
FINITE_GE_0: Final = _finite(0, inclusive=True)
AT_LEAST_1: Final = _between(1)
HOST_PORT: Final = {"check": _host_port}
ENDPOINT: Final = {"check": _endpoint}
CA_BUNDLE: Final = {"file_check": _ca_bundle}
SECRET: Final = {"secret": True}


def split_endpoint(endpoint: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` (``[v6]:port`` for IPv6 literals) into host and port.

    Raises :class:`ConfigError` (key ``api.endpoint``) for a scheme, a path, an empty host or a
    port that is not 1-65535 in ASCII digits.
    """
    if not endpoint or "/" in endpoint:
        raise ConfigError(
            f"must be host[:port] without scheme or path; got {endpoint!r}", key="api.endpoint"
        )
    if endpoint.startswith("["):
        host, bracket, rest = endpoint[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(
                f"must be [IPv6]:port or [IPv6]; got {endpoint!r}", key="api.endpoint"
            )
        port_text = rest.removeprefix(":")
    elif endpoint.count(":") == 1:
        host, _, port_text = endpoint.partition(":")
    else:
        host, port_text = endpoint, ""  # no port, or an unbracketed IPv6 literal
    if not host:
        raise ConfigError(f"must be host[:port]; no host in {endpoint!r}", key="api.endpoint")
    if not port_text:
        return host, default_port
    if port_text.isascii() and port_text.isdigit() and len(port_text) <= 5:
        port = int(port_text)
        if 0 < port < 65536:
            return host, port
    raise ConfigError(f"bad port in endpoint {endpoint!r} (must be 1-65535)", key="api.endpoint")


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_fields(obj: _Checked) -> None:
    """Run every ``check`` in the field metadata of a config dataclass."""
    for f in fields(obj):  # type: ignore[arg-type]
        check = f.metadata.get("check")
        if check is not None and (problem := check(getattr(obj, f.name))) is not None:
            raise ConfigError(problem, key=_key(obj.key_prefix, f.name))


class _Checked:
    """Base of the config dataclasses: field checks at construction."""

    __slots__ = ()
    #: The dotted key of this table in the file; "" for entries of an array of tables.
    key_prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self)


# ----------------------------------------------------------------------------------------------
# The sections


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiConfig(_Checked):
    key_prefix: ClassVar[str] = "api"

    endpoint: str = field(default=DEFAULT_ENDPOINT, metadata=ENDPOINT)
    protocol: Literal["https", "http"] = "https"
    signature: Literal["v3", "v1"] = "v3"
    #: Per attempt; the clock starts once the rate token and the in-flight slot are granted.
    timeout_s: float = field(default=10.0, metadata=FINITE_GT_0)
    connect_timeout_s: float = field(default=5.0, metadata=FINITE_GT_0)
    user_agent: str | None = None
    verify_tls: bool = True
    #: Extra CA bundle (PEM) to trust, e.g. a corporate proxy's; the system store is kept.
    ca_file: Path | None = field(default=None, metadata=CA_BUNDLE)
    #: What carries the requests: an aiohttp session (honours HTTP(S)_PROXY/NO_PROXY), or
    #: poller's lean HTTP/1.1 client (no proxy support; for many accounts in one process).
    transport: Literal["builtin", "aiohttp"] = "aiohttp"
    #: Idle keep-alive connections are closed after this long; keep it below the gateway's own
    #: idle timeout, so that we, not the gateway, close an idle connection.
    keepalive_s: float = field(default=15.0, metadata=FINITE_GT_0)

    @property
    def base_url(self) -> str:
        return f"{self.protocol}://{self.endpoint}/"

    @property
    def default_port(self) -> int:
        return 443 if self.protocol == "https" else 80

    @property
    def host(self) -> str:
        """The endpoint's host, without the brackets of an IPv6 literal."""
        return split_endpoint(self.endpoint, self.default_port)[0]

    @property
    def port(self) -> int:
        """The endpoint's port, else 443 for https and 80 for http."""
        return split_endpoint(self.endpoint, self.default_port)[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialsConfig(_Checked):
    """Any subset may be given here: the credential chain (``poller.wire.credentials``) falls
    through to the environment. A complete config (:class:`PollerConfig`) insists that the
    fields make sense together, see :meth:`check_together`."""

    key_prefix: ClassVar[str] = "credentials"

    access_key_id: str | None = None
    access_key_secret: str | None = field(default=None, repr=False, metadata=SECRET)
    security_token: str | None = field(default=None, repr=False, metadata=SECRET)

    def check_together(self) -> None:
        if bool(self.access_key_id) != bool(self.access_key_secret):
            missing = "access_key_secret" if self.access_key_id else "access_key_id"
            raise ConfigError(
                "access_key_id and access_key_secret must be given together",
                key=_key(self.key_prefix, missing),
            )
        if self.security_token and not self.access_key_id:
            raise ConfigError(
                "a security_token needs an access_key_id",
                key=_key(self.key_prefix, "security_token"),
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig(_Checked):
    key_prefix: ClassVar[str] = "limits"

    #: The account's budget for BatchGetOnlineUsers, requests per second (shared by every
    #: caller). Each presence action has its own budget in the cloud, and its own key here.
    qps: float = field(default=API_SPECS[LEGACY_API].qps, metadata=FINITE_GT_0)
    #: The account's budget for CheckLiveMessageUsersInGroup.
    in_group_qps: float = field(default=API_SPECS[IN_GROUP_API].qps, metadata=FINITE_GT_0)
    #: The account's budget for CheckLiveMessageUsersOnline.
    app_online_qps: float = field(default=API_SPECS[APP_ONLINE_API].qps, metadata=FINITE_GT_0)
    #: Requests on the wire at once (1-1024: at 100 requests/s and a 10 s timeout at most 1,000
    #: can be outstanding).
    max_in_flight: int = field(default=64, metadata=_between(1, 1024))
    #: Requests are paced so that any ``qps`` consecutive ones span at least 1 s + this margin.
    window_margin_ms: float = field(default=20.0, metadata=FINITE_GE_0)
    #: Slow down on throttling (multiplicative decrease, gradual recovery).
    adaptive: bool = True
    #: Member-list pages per second for discovery targets, per list action
    #: (ListMessageGroupUser, ListLiveMessageGroupUsers): their own, separate budgets.
    discovery_qps: float = field(default=5.0, metadata=FINITE_GT_0)

    def qps_of(self, api: str) -> float:
        """The budget of presence action ``api``."""
        value: float = getattr(self, api_spec(api).qps_key)
        return value


_POLICY = RetryPolicy()


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig(_Checked):
    key_prefix: ClassVar[str] = "retry"

    # The defaults are the core's (RetryPolicy and RetryBudget), so they are written once.
    max_attempts: int = field(default=_POLICY.max_attempts, metadata=AT_LEAST_1)
    #: Attempts of a batch whose answers are throttles (it was not served).
    max_throttled_attempts: int = field(default=_POLICY.max_throttled_attempts, metadata=AT_LEAST_1)
    backoff_base_s: float = field(default=_POLICY.backoff_base_s, metadata=FINITE_GE_0)
    backoff_cap_s: float = field(default=_POLICY.backoff_cap_s, metadata=FINITE_GE_0)
    throttle_backoff_base_s: float = field(
        default=_POLICY.throttle_backoff_base_s, metadata=FINITE_GE_0
    )
    #: Retries may use at most this fraction of first attempts (plus a small floor).
    budget_ratio: float = field(default=DEFAULT_BUDGET_RATIO, metadata=FINITE_GE_0)
    budget_min_tokens: float = field(default=DEFAULT_BUDGET_MIN_TOKENS, metadata=FINITE_GE_0)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            max_throttled_attempts=self.max_throttled_attempts,
            backoff_base_s=self.backoff_base_s,
            backoff_cap_s=self.backoff_cap_s,
            throttle_backoff_base_s=self.throttle_backoff_base_s,
        )

    def budget(self) -> RetryBudget:
        """A fresh retry budget with these settings."""
        return RetryBudget(self.budget_ratio, self.budget_min_tokens)


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepConfig(_Checked):
    key_prefix: ClassVar[str] = "sweep"

    dedupe: bool = True
    #: 0 disables; otherwise UIDs not polled by then get ``DeadlineExceeded`` records.
    deadline_s: float = field(default=0.0, metadata=FINITE_GE_0)
    #: Batches of records buffered between polling and the sinks (backpressure beyond it).
    queue_size: int = field(default=64, metadata=AT_LEAST_1)
    max_uid_bytes: int = field(default=128, metadata=_between(1, 4096))


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetConfig(_Checked):
    """One ``[[targets]]`` entry; its errors name keys relative to the entry."""

    app_id: str
    #: Absent for an app-wide API (CheckLiveMessageUsersOnline); required otherwise.
    group_id: str | None = None
    #: The presence action: BatchGetOnlineUsers (legacy apps) or, for apps of the current
    #: interactive-messaging service, CheckLiveMessageUsersInGroup or CheckLiveMessageUsersOnline.
    api: str = field(default=LEGACY_API, metadata={"check": _api_name})
    #: The app's data center (sent as DataCenter by the current family): e.g. cn-shanghai.
    data_center: str | None = field(default=None, metadata={"check": _data_center})
    uids: tuple[str, ...] | None = None
    uids_file: Path | None = None
    #: Learn the members at every sweep (ListMessageGroupUser, or ListLiveMessageGroupUsers for
    #: the current family) instead of a UID list.
    discover: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.app_id:
            raise ConfigError("required, a non-empty string", key="app_id")
        spec = api_spec(self.api)
        if spec.app_wide:
            if self.group_id is not None:
                raise ConfigError(f"{self.api} asks about a whole app: no group_id", key="group_id")
            if self.discover:
                raise ConfigError(f"{self.api} has no group to list members of", key="discover")
        elif not self.group_id:
            raise ConfigError("required, a non-empty string", key="group_id")
        if self.data_center is not None and not spec.data_center:
            raise ConfigError(f"{self.api} takes no data_center", key="data_center")
        if self.uids is not None and self.uids_file is not None:
            raise ConfigError("give either uids or uids_file, not both", key="uids_file")
        if self.discover and (self.uids is not None or self.uids_file is not None):
            raise ConfigError("a discovery target takes no uids or uids_file", key="discover")

    @property
    def target(self) -> Target:
        return Target(self.app_id, self.group_id, self.api, self.data_center)


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonConfig(_Checked):
    key_prefix: ClassVar[str] = "daemon"

    interval_s: float = field(default=30.0, metadata=FINITE_GT_0)
    emit: Literal["changes", "all"] = "changes"
    #: Wait a random 0..start_jitter_s before the first sweep (spreads many instances).
    start_jitter_s: float = field(default=0.0, metadata=FINITE_GE_0)
    #: On SIGTERM, in-flight requests get this long to finish before they are cancelled.
    drain_timeout_s: float = field(default=10.0, metadata=FINITE_GE_0)
    #: Consecutive sweeps whose credentials were rejected before the daemon gives up (exit 78).
    max_auth_failures: int = field(default=3, metadata=AT_LEAST_1)
    state_dir: Path | None = None  #: unset: $STATE_DIRECTORY, else ~/.local/state/poller


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig(_Checked):
    key_prefix: ClassVar[str] = "metrics"

    #: ``host:port`` serving /metrics, /healthz and /readyz; empty = off.
    listen: str = field(default="", metadata=HOST_PORT)
    #: /readyz fails when the last completed sweep is older than this (0: 3 x interval + 60 s).
    ready_max_age_s: float = field(default=0.0, metadata=FINITE_GE_0)


def _share(value: float) -> str | None:
    if not 0.0 <= value <= 1.0:
        return f"must be between 0 and 1; got {value!r}"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupsConfig(_Checked):
    """``[lookups]``: on-demand questions (:meth:`poller.Poller.lookup`, ``GET /v1/presence``
    with ``fresh=1``), coalesced into batches on the same rate meters as the sweeps."""

    key_prefix: ClassVar[str] = "lookups"

    #: The share of each action's budget lookups are sure of while they have questions waiting
    #: (a floor: idle lookups leave the whole budget to the sweeps).
    min_share: float = field(default=0.2, metadata={"check": _share})
    #: How long a question waits for company while rate slots are free (ms).
    linger_ms: float = field(default=5.0, metadata=FINITE_GE_0)
    #: Serve an answer younger than this from memory (0: never).
    cache_ttl_s: float = field(default=0.0, metadata=FINITE_GE_0)
    #: Answers kept in memory at most (least recently used go first).
    cache_size: int = field(default=100_000, metadata=AT_LEAST_1)
    #: Questions waiting for a batch at most; beyond, a question fails at once (overload).
    max_pending: int = field(default=10_000, metadata=AT_LEAST_1)
    #: How long a question waits for its answer before the caller gets a timeout.
    timeout_s: float = field(default=10.0, metadata=FINITE_GT_0)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryConfig(_Checked):
    """``[query]``: the daemon answers ``GET /v1/presence`` from what it knows (or, with
    ``fresh=1``, through a lookup)."""

    key_prefix: ClassVar[str] = "query"

    #: ``host:port`` to listen on; empty = off. A non-loopback address requires ``token_env``.
    listen: str = field(default="", metadata=HOST_PORT)
    #: The environment variable holding the bearer token callers must send
    #: (``Authorization: Bearer <token>``); empty = no token (loopback only).
    token_env: str = field(default="", metadata={"check": _env_name})
    #: User IDs one request may ask about at most.
    max_uids: int = field(default=100, metadata=_between(1, 10_000))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.listen and not self.token_env and not is_loopback(self.listen):
            raise ConfigError(
                f"listening on {self.listen} (not a loopback address) requires a bearer token:"
                " set token_env to the name of an environment variable holding it",
                key=_key(self.key_prefix, "token_env"),
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig(_Checked):
    """``[cluster]``: several poller processes on one account coordinate through Redis. Absent:
    every process paces itself alone and ``redis`` is never imported."""

    key_prefix: ClassVar[str] = "cluster"

    #: ``redis://host:port/db``, ``rediss://`` (TLS) or ``unix:///path/redis.sock``.
    redis_url: str = field(
        default="", repr=False, metadata={"check": _redis_url, "secret": True, "mask": mask_url}
    )
    #: The name of an environment variable holding the Redis password (instead of the URL).
    password_env: str = ""
    #: The fleet's name: members of one fleet see each other in ``poller cluster status``.
    name: str = field(default="presence", metadata={"check": _key_part})
    #: This process's name in the fleet; empty: ``hostname-pid``.
    member: str = field(default="", metadata={"check": _key_part})
    #: The budget key: processes with the same ``account`` share one budget per API action.
    #: Empty: a hash of the AccessKeyId (so keys of one account need the same ``account``).
    account: str = field(default="", metadata={"check": _key_part})
    #: Share the account's requests/s with every member through Redis.
    share_budget: bool = True
    #: While Redis is unreachable: ``share`` = a local budget of qps / members seen in the
    #: last minute; ``pause`` = send nothing until it is back.
    on_redis_down: Literal["share", "pause"] = "share"
    #: The member count assumed by a process that starts while Redis is down.
    expected_members: int = field(default=2, metadata=_between(1, 1000))
    #: Split the targets' UIDs between the members (each polls the shards it holds) and keep
    #: one change stream for the fleet in Redis. ``false``: only the budget is shared.
    shard_targets: bool = True
    #: The number of UID shards (the same on every member of a fleet).
    shards: int = field(default=64, metadata=_between(1, 4096))
    #: A shard lease not renewed for this long expires; another member then takes the shard.
    lease_ttl_s: float = field(default=10.0, metadata=_finite(1.0, inclusive=True))


#: Keys of the PostgreSQL sink only.
POSTGRES: Final = {"kinds": ("postgres",)}
_PG_SCHEMES: Final = ("postgresql://", "postgres://")


def _pg_dsn(value: str) -> str | None:
    if not value or value.startswith(_PG_SCHEMES):
        return None
    # Without a scheme the value may be a bare password (or a libpq key=value string holding
    # one): it is not echoed.
    return "must be a postgresql://user@host:port/dbname URL (asyncpg reads no key=value DSN)"


#: Query parameters of a DSN shown by :func:`mask_dsn` (never ``password`` or unknown ones).
_DSN_SHOWN: Final = frozenset({"host", "port", "user", "dbname", "database", "sslmode"})


def mask_dsn(dsn: str) -> str:
    """A PostgreSQL DSN safe to print: the password replaced by ``****`` (a user name alone is
    kept), and of the query only ``host``, ``port``, ``user``, ``dbname``, ``database`` and
    ``sslmode`` (``postgresql://poller:****@db:5432/app?sslmode=require``)."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return "****" if dsn else ""
    netloc, tail = _masked_authority(rest, keep_lone_user=True)
    path, _, query = tail.split("#", 1)[0].partition("?")
    kept = [
        item
        for item in query.split("&")
        if item.partition("=")[0] in _DSN_SHOWN and item.partition("=")[2]
    ]
    return f"{scheme}{sep}{netloc}{path}" + (f"?{'&'.join(kept)}" if kept else "")


def _pg_identifier(value: str) -> str | None:
    if re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
        return None
    return (
        "must be a lower-case SQL identifier (letters a-z, digits, _; not starting with a"
        f" digit; at most 63 characters); got {value!r}"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkConfig(_Checked):
    """One ``[[sinks]]`` entry; its errors name keys relative to the entry."""

    kind: Literal["stdout", "file", "webhook", "postgres"] = "stdout"
    #: The record types this sink receives (presence, change, error). Unset: the daemon's
    #: ``emit`` decides for stdout and file sinks; a webhook gets changes and errors, a
    #: postgres sink all three.
    types: tuple[str, ...] | None = field(default=None, metadata={"check": _record_types})
    path: Path | None = field(default=None, metadata=FILE)
    fsync: bool = field(default=False, metadata=FILE)
    # -- webhook ------------------------------------------------------------------------------
    #: The receiver's URL (http:// or https://); masked in ``check-config`` (it may hold a token).
    url: str = field(
        default="",
        repr=False,
        metadata={"check": _webhook_url, "secret": True, "mask": mask_url, **WEBHOOK},
    )
    #: The shared secret of the HMAC-SHA256 signature (or ``secret_env``: a variable's name).
    secret: str = field(default="", repr=False, metadata={**SECRET, **WEBHOOK})
    secret_env: str = field(default="", metadata=WEBHOOK)
    #: Records per request, at most.
    max_batch: int = field(default=500, metadata={**_between(1, 100_000), **WEBHOOK})
    #: Where undelivered records wait; default: ``<state_dir>/spool/<hash of the url>``.
    spool_dir: Path | None = field(default=None, metadata=WEBHOOK)
    #: The spool's bound; beyond it the oldest undelivered records are dropped (and counted).
    spool_max_mb: float = field(default=256.0, metadata={**FINITE_GT_0, **WEBHOOK})
    #: One delivery attempt's timeout.
    timeout_s: float = field(default=10.0, metadata={**FINITE_GT_0, **WEBHOOK})
    ca_file: Path | None = field(default=None, metadata={**CA_BUNDLE, **WEBHOOK})
    verify_tls: bool = field(default=True, metadata=WEBHOOK)
    #: Extra request headers, ``"Name: value"``; ``${VAR}`` in a value is read from the
    #: environment (a receiver's token). Masked in ``check-config``.
    headers: tuple[str, ...] = field(
        default=(), repr=False, metadata={"check": _headers, **SECRET, **WEBHOOK}
    )
    # -- postgres -----------------------------------------------------------------------------
    #: The database, ``postgresql://user:password@host:port/dbname?sslmode=...`` (asyncpg's DSN;
    #: ``?host=/run/postgresql`` for a unix socket); its password is masked in ``check-config``.
    dsn: str = field(
        default="",
        repr=False,
        metadata={"check": _pg_dsn, "secret": True, "mask": mask_dsn, **POSTGRES},
    )
    #: Or the name of an environment variable holding the DSN.
    dsn_env: str = field(default="", metadata=POSTGRES)
    #: The schema of poller's tables (``poller db init --config FILE`` creates it).
    schema: str = field(default="poller", metadata={"check": _pg_identifier, **POSTGRES})
    #: Records per transaction, at most (also the bound of the records held while the
    #: database is unreachable).
    batch_rows: int = field(default=5000, metadata={**_between(1, 1_000_000), **POSTGRES})
    #: Days of ``changes`` (and ``sweeps``) history kept; 0 keeps them forever.
    retain_days: int = field(default=0, metadata={**_between(0), **POSTGRES})

    def __post_init__(self) -> None:
        check_fields(self)
        if self.kind == "file" and self.path is None:
            raise ConfigError("required for a file sink", key="path")
        if self.kind == "webhook":
            if not self.url:
                raise ConfigError("required for a webhook sink", key="url")
            if not self.secret and not self.secret_env:
                raise ConfigError("a webhook sink needs secret or secret_env", key="secret")
            if self.secret and self.secret_env:
                raise ConfigError("give either secret or secret_env, not both", key="secret_env")
        if self.kind == "postgres":
            if not self.dsn and not self.dsn_env:
                raise ConfigError("a postgres sink needs dsn or dsn_env", key="dsn")
            if self.dsn and self.dsn_env:
                raise ConfigError("give either dsn or dsn_env, not both", key="dsn_env")

    def default_types(self, emit: Literal["changes", "all"]) -> tuple[str, ...]:
        """The record types this sink receives when ``types`` is unset."""
        if self.types is not None:
            return self.types
        if self.kind == "postgres":
            return RECORD_TYPES  # who is online now needs every presence record
        if self.kind == "webhook" or emit == "changes":
            return ("change", "error")
        return RECORD_TYPES


@dataclass(frozen=True, slots=True, kw_only=True)
class PollerConfig(_Checked):
    """The whole file: one field per section (a dataclass) or array of tables (a tuple of
    dataclasses), plus ``source``, the file it came from (not a key of the file)."""

    api: ApiConfig = ApiConfig()
    credentials: CredentialsConfig = CredentialsConfig()
    limits: LimitsConfig = LimitsConfig()
    retry: RetryConfig = RetryConfig()
    sweep: SweepConfig = SweepConfig()
    daemon: DaemonConfig = DaemonConfig()
    metrics: MetricsConfig = MetricsConfig()
    lookups: LookupsConfig = LookupsConfig()
    query: QueryConfig = QueryConfig()
    #: Optional: ``None`` when the file has no ``[cluster]`` table.
    cluster: ClusterConfig | None = None
    targets: tuple[TargetConfig, ...] = ()
    sinks: tuple[SinkConfig, ...] = ()
    source: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        self.credentials.check_together()
        if self.query.listen and self.query.max_uids > self.lookups.max_pending:
            raise ConfigError(
                f"{self.query.max_uids} exceeds [lookups] max_pending ({self.lookups.max_pending}):"
                " a fresh query that large would always be refused as an overload",
                key="query.max_uids",
            )
        seen: set[tuple[str, str, str | None]] = set()
        for i, target in enumerate(self.targets):
            key = target.target.key
            if key in seen:
                raise ConfigError(f"duplicate target {target.target}", key=f"targets[{i}]")
            seen.add(key)

    def with_changes(self, **changes: Any) -> PollerConfig:
        return replace(self, **changes)
