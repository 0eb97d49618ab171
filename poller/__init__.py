"""poller: presence of ApsaraVideo Live message-group users at the API's QPS ceiling."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .config import PollerConfig, load_config
from .errors import (
    ApiError,
    AuthError,
    ConfigError,
    PermissionDenied,
    PollerError,
    SinkError,
    ThrottledError,
    TransportError,
)
from .pipeline import Poller, SweepStats
from .records import ChangeRecord, ErrorRecord, PresenceRecord, Record, Target
from .sinks import CallbackSink, FileSink, Sink, StdoutSink
from .sources import Stdin, UidFile

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
