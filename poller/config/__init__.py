"""Configuration: frozen, validated dataclasses, loaded from TOML and rendered back to it.

Every key is checked when the file is read; an error names the file and the dotted key
(``targets[2].app_id``). Defaults live in the dataclasses (:mod:`poller.config.model`), the
loader (:mod:`poller.config.loader`) reads each key by its field's annotated type, and
:func:`render_toml` writes a config back; ``config.example.toml`` documents the keys.

This package imports only the standard library and :mod:`poller.core`.
"""

from __future__ import annotations

from poller.config.loader import load_config, parse_config
from poller.config.model import (
    DEFAULT_ENDPOINT,
    ApiConfig,
    ClusterConfig,
    CredentialsConfig,
    DaemonConfig,
    LimitsConfig,
    LookupsConfig,
    MetricsConfig,
    PollerConfig,
    QueryConfig,
    RetryConfig,
    SinkConfig,
    SweepConfig,
    TargetConfig,
    env_secret,
    mask_url,
    split_endpoint,
)
from poller.config.render import render_toml

__all__ = [
    "DEFAULT_ENDPOINT",
    "ApiConfig",
    "ClusterConfig",
    "CredentialsConfig",
    "DaemonConfig",
    "LimitsConfig",
    "LookupsConfig",
    "MetricsConfig",
    "PollerConfig",
    "QueryConfig",
    "RetryConfig",
    "SinkConfig",
    "SweepConfig",
    "TargetConfig",
    "env_secret",
    "load_config",
    "mask_url",
    "parse_config",
    "render_toml",
    "split_endpoint",
]
