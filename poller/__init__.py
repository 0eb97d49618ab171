"""poller: presence of ApsaraVideo Live message-group users at the API's QPS ceiling."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from poller.config import PollerConfig, load_config
from poller.core.errors import (
    ApiError,
    AuthError,
    ConfigError,
    PermissionDenied,
    PollerError,
    SinkError,
    ThrottledError,
    TransportError,
)
from poller.core.records import ChangeRecord, ErrorRecord, PresenceRecord, Record, Target
from poller.core.stats import SweepStats
from poller.engine.lookup import Lookup, LookupOverloaded
from poller.engine.poller import Poller
from poller.engine.sinks import CallbackSink, FileSink, Sink, StdoutSink
from poller.engine.sources import Stdin, UidFile

try:
    __version__ = version("poller")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "ApiError",
    "AuthError",
    "CallbackSink",
    "ChangeRecord",
    "ConfigError",
    "ErrorRecord",
    "FileSink",
    "Lookup",
    "LookupOverloaded",
    "PermissionDenied",
    "Poller",
    "PollerConfig",
    "PollerError",
    "PresenceRecord",
    "Record",
    "Sink",
    "SinkError",
    "Stdin",
    "StdoutSink",
    "SweepStats",
    "Target",
    "ThrottledError",
    "TransportError",
    "UidFile",
    "__version__",
    "load_config",
]
