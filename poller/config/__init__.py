"""Configuration: frozen, validated dataclasses, loaded from TOML.

Every key is checked when the file is read; an error names the file and the dotted key
(``targets[2].app_id``). Defaults live in the dataclasses; ``config.example.toml`` documents them.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from poller.core.errors import ConfigError
from poller.core.records import Target

__all__ = [
    "DEFAULT_ENDPOINT",
    "ApiConfig",
    "CredentialsConfig",
    "DaemonConfig",
    "LimitsConfig",
    "MetricsConfig",
    "PollerConfig",
    "RetryConfig",
    "SinkConfig",
    "SweepConfig",
    "TargetConfig",
    "load_config",
    "parse_config",
]

DEFAULT_ENDPOINT: Final = "live.aliyuncs.com"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiConfig:
    endpoint: str = DEFAULT_ENDPOINT
    protocol: Literal["https", "http"] = "https"
    signature: Literal["v3", "v1"] = "v3"
    #: Per attempt; the clock starts once the rate token and the in-flight slot are granted.
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    user_agent: str | None = None
    verify_tls: bool = True
    #: Extra CA bundle (PEM) to trust, e.g. a corporate proxy's; the system store is kept.
    ca_file: Path | None = None
    #: What carries the requests: poller's lean HTTP/1.1 client, or an aiohttp session.
    transport: Literal["builtin", "aiohttp"] = "builtin"

    @property
    def base_url(self) -> str:
        return f"{self.protocol}://{self.endpoint}/"


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialsConfig:
    access_key_id: str | None = None
    access_key_secret: str | None = field(default=None, repr=False)
    security_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    #: The account's budget for this API, requests per second (shared by every caller).
    qps: float = 100.0
    max_in_flight: int = 64
    #: Requests are paced so that any ``qps`` consecutive ones span at least 1 s + this margin.
    window_margin_ms: float = 20.0
    #: Slow down on throttling (multiplicative decrease, gradual recovery).
    adaptive: bool = True
    #: ListMessageGroupUser pages per second for discovery targets (its own, separate budget).
    discovery_qps: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    max_attempts: int = 4
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 5.0
    throttle_backoff_base_s: float = 1.0
    #: Retries may use at most this fraction of first attempts (plus a small floor).
    budget_ratio: float = 0.2
    budget_min_tokens: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepConfig:
    dedupe: bool = True
    #: 0 disables; otherwise UIDs not polled by then get ``DeadlineExceeded`` records.
    deadline_s: float = 0.0
    #: Batches of records buffered between polling and the sinks (backpressure beyond it).
    queue_size: int = 64
    max_uid_bytes: int = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetConfig:
    app_id: str
    group_id: str
    uids: tuple[str, ...] | None = None
    uids_file: Path | None = None
    #: Learn the members with ListMessageGroupUser at every sweep instead of a UID list.
    discover: bool = False

    @property
    def target(self) -> Target:
        return Target(self.app_id, self.group_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonConfig:
    interval_s: float = 30.0
    emit: Literal["changes", "all"] = "changes"
    #: Wait a random 0..start_jitter_s before the first sweep (spreads many instances).
    start_jitter_s: float = 0.0
    #: On SIGTERM, in-flight requests get this long to finish before they are cancelled.
    drain_timeout_s: float = 10.0
    #: Consecutive sweeps whose credentials were rejected before the daemon gives up (exit 78).
    max_auth_failures: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    #: ``host:port`` serving /metrics, /healthz and /readyz; empty = off.
    listen: str = ""
    #: /readyz fails when the last completed sweep is older than this (0: 3 x interval + 60 s).
    ready_max_age_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkConfig:
    kind: Literal["stdout", "file"] = "stdout"
    path: Path | None = None
    fsync: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PollerConfig:
    api: ApiConfig = ApiConfig()
    credentials: CredentialsConfig = CredentialsConfig()
    limits: LimitsConfig = LimitsConfig()
    retry: RetryConfig = RetryConfig()
    sweep: SweepConfig = SweepConfig()
    daemon: DaemonConfig = DaemonConfig()
    metrics: MetricsConfig = MetricsConfig()
    targets: tuple[TargetConfig, ...] = ()
    sinks: tuple[SinkConfig, ...] = ()
    source: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    def with_changes(self, **changes: Any) -> PollerConfig:
        return replace(self, **changes)


# ----------------------------------------------------------------------------------------------
# Reading TOML

T = TypeVar("T")


class _Table:
    """One TOML table being read: typed getters that name the key, and unknown-key detection."""

    def __init__(self, data: Mapping[str, Any], prefix: str, source: str | None) -> None:
        self.data = data
        self.prefix = prefix
        self.source = source
        self.used: set[str] = set()

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, source=self.source, key=self._key(name))

    def get(self, name: str, kind: type[T], default: T) -> T:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.error(
                name, f"expected {kind.__name__}, got {type(value).__name__} {value!r}"
            )
        return value

    def opt_str(self, name: str) -> str | None:
        value = self.get(name, str, "")
        return value or None

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key (check spelling; see config.example.toml)")


def _table(root: Mapping[str, Any], name: str, source: str | None) -> _Table:
    value = root.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError("expected a table", source=source, key=name)
    return _Table(value, f"{name}.", source)


def _array_of_tables(data: Mapping[str, Any], name: str, source: str | None) -> list[_Table]:
    """``[[name]]`` entries as tables whose keys read as ``name[i].key``."""
    raw = data.get(name, [])
    if not isinstance(raw, list):
        raise ConfigError(f"expected an array of tables [[{name}]]", source=source, key=name)
    tables = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise ConfigError("expected a table", source=source, key=f"{name}[{i}]")
        tables.append(_Table(entry, f"{name}[{i}].", source))
    return tables


def _resolve(path_text: str, base: Path | None) -> Path:
    path = Path(path_text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return path


def parse_config(
    data: Mapping[str, Any], *, source: str | None = None, base_dir: Path | None = None
) -> PollerConfig:
    """Build a :class:`PollerConfig` from already-parsed TOML data."""
    known = {
        "api",
        "credentials",
        "limits",
        "retry",
        "sweep",
        "daemon",
        "metrics",
        "targets",
        "sinks",
    }
    for key in data:
        if key not in known:
            raise ConfigError(
                "unknown section (check spelling; see config.example.toml)", source=source, key=key
            )

    t = _table(data, "api", source)
    api = ApiConfig(
        endpoint=t.get("endpoint", str, DEFAULT_ENDPOINT),
        protocol=t.choice("protocol", ("https", "http"), "https"),  # type: ignore[arg-type]
        signature=t.choice("signature", ("v3", "v1"), "v3"),  # type: ignore[arg-type]
        timeout_s=t.get("timeout_s", float, 10.0),
        connect_timeout_s=t.get("connect_timeout_s", float, 5.0),
        user_agent=t.opt_str("user_agent"),
        verify_tls=t.get("verify_tls", bool, True),
        ca_file=_resolve(ca_text, base_dir) if (ca_text := t.opt_str("ca_file")) else None,
        transport=t.choice("transport", ("builtin", "aiohttp"), "builtin"),  # type: ignore[arg-type]
    )
    t.finish()

    t = _table(data, "credentials", source)
    creds = CredentialsConfig(
        access_key_id=t.opt_str("access_key_id"),
        access_key_secret=t.opt_str("access_key_secret"),
        security_token=t.opt_str("security_token"),
    )
    t.finish()

    t = _table(data, "limits", source)
    limits = LimitsConfig(
        qps=t.get("qps", float, 100.0),
        max_in_flight=t.get("max_in_flight", int, 64),
        window_margin_ms=t.get("window_margin_ms", float, 20.0),
        adaptive=t.get("adaptive", bool, True),
        discovery_qps=t.get("discovery_qps", float, 5.0),
    )
    t.finish()

    t = _table(data, "retry", source)
    retry = RetryConfig(
        max_attempts=t.get("max_attempts", int, 4),
        backoff_base_s=t.get("backoff_base_s", float, 0.1),
        backoff_cap_s=t.get("backoff_cap_s", float, 5.0),
        throttle_backoff_base_s=t.get("throttle_backoff_base_s", float, 1.0),
        budget_ratio=t.get("budget_ratio", float, 0.2),
        budget_min_tokens=t.get("budget_min_tokens", float, 10.0),
    )
    t.finish()

    t = _table(data, "sweep", source)
    sweep = SweepConfig(
        dedupe=t.get("dedupe", bool, True),
        deadline_s=t.get("deadline_s", float, 0.0),
        queue_size=t.get("queue_size", int, 64),
        max_uid_bytes=t.get("max_uid_bytes", int, 128),
    )
    t.finish()

    t = _table(data, "daemon", source)
    daemon = DaemonConfig(
        interval_s=t.get("interval_s", float, 30.0),
        emit=t.choice("emit", ("changes", "all"), "changes"),  # type: ignore[arg-type]
        start_jitter_s=t.get("start_jitter_s", float, 0.0),
        drain_timeout_s=t.get("drain_timeout_s", float, 10.0),
        max_auth_failures=t.get("max_auth_failures", int, 3),
    )
    t.finish()

    t = _table(data, "metrics", source)
    metrics = MetricsConfig(
        listen=t.get("listen", str, ""),
        ready_max_age_s=t.get("ready_max_age_s", float, 0.0),
    )
    t.finish()

    targets = []
    for t in _array_of_tables(data, "targets", source):
        raw = t.data
        app_id = t.get("app_id", str, "")
        group_id = t.get("group_id", str, "")
        if not app_id:
            raise t.error("app_id", "required, a non-empty string")
        if not group_id:
            raise t.error("group_id", "required, a non-empty string")
        uids: tuple[str, ...] | None = None
        if "uids" in raw:
            value = t.get("uids", list, [])
            bad = next((u for u in value if not isinstance(u, str)), None)
            if bad is not None:
                raise t.error("uids", f"every UID must be a string; got {bad!r}")
            uids = tuple(value)
        uids_file_text = t.opt_str("uids_file")
        discover = t.get("discover", bool, False)
        if uids is not None and uids_file_text:
            raise t.error("uids_file", "give either uids or uids_file, not both")
        if discover and (uids is not None or uids_file_text):
            raise t.error("discover", "a discovery target takes no uids or uids_file")
        targets.append(
            TargetConfig(
                app_id=app_id,
                group_id=group_id,
                uids=uids,
                uids_file=_resolve(uids_file_text, base_dir) if uids_file_text else None,
                discover=discover,
            )
        )
        t.finish()

    sinks = []
    for t in _array_of_tables(data, "sinks", source):
        kind = t.choice("kind", ("stdout", "file"), "stdout")
        path_text = t.opt_str("path")
        if kind == "file" and not path_text:
            raise t.error("path", "required for a file sink")
        sinks.append(
            SinkConfig(
                kind=kind,  # type: ignore[arg-type]
                path=_resolve(path_text, base_dir) if path_text else None,
                fsync=t.get("fsync", bool, False),
            )
        )
        t.finish()

    try:
        return PollerConfig(
            api=api,
            credentials=creds,
            limits=limits,
            retry=retry,
            sweep=sweep,
            daemon=daemon,
            metrics=metrics,
            targets=tuple(targets),
            sinks=tuple(sinks),
            source=source,
        )
    except ConfigError as exc:
        if exc.source is None and source is not None:
            raise ConfigError(exc.detail, source=source, key=exc.key, line=exc.line) from None
        raise


def load_config(path: str | Path) -> PollerConfig:
    """Read and validate a TOML config file; relative paths in it are relative to its folder."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", source=str(path)) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError("not UTF-8 text", source=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", source=str(path)) from exc
    return parse_config(data, source=str(path), base_dir=path.parent)


def _positive(value: float, key: str, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or math.isnan(value) or math.isinf(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"must be a finite number {bound}; got {value!r}", key=key)


def _validate(cfg: PollerConfig) -> None:
    if not cfg.api.endpoint or "/" in cfg.api.endpoint:
        raise ConfigError(
            f"must be host[:port] without scheme or path; got {cfg.api.endpoint!r}",
            key="api.endpoint",
        )
    _positive(cfg.api.timeout_s, "api.timeout_s")
    _positive(cfg.api.connect_timeout_s, "api.connect_timeout_s")
    _positive(cfg.limits.qps, "limits.qps")
    _positive(cfg.limits.window_margin_ms, "limits.window_margin_ms", allow_zero=True)
    if cfg.limits.max_in_flight < 1:
        raise ConfigError("must be >= 1", key="limits.max_in_flight")
    if cfg.retry.max_attempts < 1:
        raise ConfigError("must be >= 1", key="retry.max_attempts")
    _positive(cfg.retry.backoff_base_s, "retry.backoff_base_s", allow_zero=True)
    _positive(cfg.retry.backoff_cap_s, "retry.backoff_cap_s", allow_zero=True)
    _positive(cfg.retry.throttle_backoff_base_s, "retry.throttle_backoff_base_s", allow_zero=True)
    _positive(cfg.retry.budget_ratio, "retry.budget_ratio", allow_zero=True)
    _positive(cfg.retry.budget_min_tokens, "retry.budget_min_tokens", allow_zero=True)
    _positive(cfg.sweep.deadline_s, "sweep.deadline_s", allow_zero=True)
    if cfg.sweep.queue_size < 1:
        raise ConfigError("must be >= 1", key="sweep.queue_size")
    if not 1 <= cfg.sweep.max_uid_bytes <= 4096:
        raise ConfigError("must be between 1 and 4096", key="sweep.max_uid_bytes")
    _positive(cfg.daemon.interval_s, "daemon.interval_s")
    _positive(cfg.daemon.start_jitter_s, "daemon.start_jitter_s", allow_zero=True)
    _positive(cfg.daemon.drain_timeout_s, "daemon.drain_timeout_s", allow_zero=True)
    if cfg.daemon.max_auth_failures < 1:
        raise ConfigError("must be >= 1", key="daemon.max_auth_failures")
    _positive(cfg.limits.discovery_qps, "limits.discovery_qps")
    _positive(cfg.metrics.ready_max_age_s, "metrics.ready_max_age_s", allow_zero=True)
    if cfg.metrics.listen:
        host, sep, port = cfg.metrics.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(
                f"must be host:port, e.g. 127.0.0.1:9108; got {cfg.metrics.listen!r}",
                key="metrics.listen",
            )
    creds = cfg.credentials
    if bool(creds.access_key_id) != bool(creds.access_key_secret):
        raise ConfigError(
            "access_key_id and access_key_secret must be given together",
            key="credentials.access_key_secret"
            if creds.access_key_id
            else "credentials.access_key_id",
        )
    if creds.security_token and not creds.access_key_id:
        raise ConfigError(
            "a security_token needs an access_key_id", key="credentials.security_token"
        )
    seen: set[tuple[str, str]] = set()
    for i, target in enumerate(cfg.targets):
        pair = (target.app_id, target.group_id)
        if pair in seen:
            raise ConfigError(
                f"duplicate target {target.app_id}/{target.group_id}", key=f"targets[{i}]"
            )
        seen.add(pair)
