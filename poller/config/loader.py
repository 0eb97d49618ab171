"""Reading TOML into the model, driven by the dataclass fields and their annotated types.

Every key is checked when the file is read; an error names the file and the dotted key
(``targets[2].app_id``). The readers know these annotated types: ``bool``, ``int``, ``float``
(an int is accepted, a bool never), ``str``, ``Literal[...]`` of strings, ``X | None`` (for
``str`` and ``Path`` an empty string means None), ``Path`` (resolved against the config file's
folder, ``~`` expanded) and ``tuple[str, ...]`` (a list of strings). A section is a field whose
type is a dataclass (or ``<dataclass> | None``: an optional section, None when the file has no
such table); an array of tables is a field of type ``tuple[<dataclass>, ...]``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from poller.config.model import PollerConfig
from poller.core.apis import API_SPECS, LEGACY_API
from poller.core.errors import ConfigError

__all__ = ["field_types", "load_config", "parse_config", "tables"]

T = TypeVar("T")

log = logging.getLogger("poller.config")

_UNKNOWN_KEY = "unknown key (check spelling; see config.example.toml)"
_UNKNOWN_SECTION = "unknown section (check spelling; see config.example.toml)"


class _Rejected(Exception):
    """A value that does not fit its field; the message becomes a keyed ConfigError."""


@functools.cache
def field_types(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    """Each dataclass field of ``cls`` with its resolved annotation, by name."""
    resolved = get_type_hints(cls)
    return {f.name: (f, resolved[f.name]) for f in dataclasses.fields(cls)}


def tables(cls: type = PollerConfig) -> dict[str, tuple[type, bool]]:
    """The TOML tables of ``cls``: name -> (dataclass, is an array of tables)."""
    found: dict[str, tuple[type, bool]] = {}
    for name, (_, hint) in field_types(cls).items():
        hint = _optional(hint) or hint
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            found[name] = (hint, False)
        elif get_origin(hint) is tuple:
            item, *rest = get_args(hint)
            if rest == [Ellipsis] and isinstance(item, type) and dataclasses.is_dataclass(item):
                found[name] = (item, True)
    return found


def _describe(value: Any, secret: bool) -> str:
    """``got <type> <value>``, without the value for a secret."""
    kind = "table" if isinstance(value, Mapping) else type(value).__name__
    return f"got {kind}" if secret else f"got {kind} {value!r}"


def _optional(hint: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(get_args(hint)) == 2:
            return args[0]
    return None


class _Reader:
    def __init__(self, source: str | None, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir

    def error(self, message: str, key: str | None) -> ConfigError:
        return ConfigError(message, source=self.source, key=key)

    def convert(self, value: Any, hint: Any, secret: bool) -> Any:
        """``value`` as the annotated type, or :class:`_Rejected`."""
        inner = _optional(hint)
        if inner is not None:
            if value == "" and inner in (str, Path):
                return None
            return self.convert(value, inner, secret)
        if get_origin(hint) is Literal:
            choices = get_args(hint)
            text = self.convert(value, str, secret)
            if text not in choices:
                got = "" if secret else f"; got {text!r}"
                raise _Rejected(f"must be one of {', '.join(choices)}{got}")
            return text
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if hint in (bool, int, float, str):
            if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
                raise _Rejected(f"expected {hint.__name__}, {_describe(value, secret)}")
            return value
        if hint is Path:
            return self.resolve(self.convert(value, str, secret))
        if get_origin(hint) is tuple and get_args(hint) == (str, Ellipsis):
            if not isinstance(value, list):
                raise _Rejected(f"expected a list of strings, {_describe(value, secret)}")
            bad = next((v for v in value if not isinstance(v, str)), None)
            if bad is not None:
                raise _Rejected(f"every item must be a string; {_describe(bad, secret)}")
            return tuple(value)
        raise TypeError(f"no TOML reader for the type {hint!r}")  # a new field needs one

    def resolve(self, path_text: str) -> Path:
        path = Path(path_text).expanduser()
        if self.base_dir is not None and not path.is_absolute():
            path = self.base_dir / path
        return path

    def table(self, cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
        """One TOML table as an instance of the dataclass ``cls``."""
        spec = field_types(cls)
        unknown = sorted(set(raw) - set(spec))
        if unknown:
            raise self.error(_UNKNOWN_KEY, f"{prefix}.{unknown[0]}")
        values: dict[str, Any] = {}
        for name, (f, hint) in spec.items():
            key = f"{prefix}.{name}"
            if name not in raw:
                required = f.default is dataclasses.MISSING
                if required and f.default_factory is dataclasses.MISSING:
                    raise self.error(f"required; expected {_type_name(hint)}", key)
                continue
            try:
                value = self.convert(raw[name], hint, bool(f.metadata.get("secret")))
            except _Rejected as exc:
                raise self.error(str(exc), key) from None
            file_check = f.metadata.get("file_check")
            if value is not None and file_check is not None:
                problem = file_check(value)
                if problem is not None:
                    raise self.error(problem, key)
            values[name] = value
        return self.build(cls, values, prefix)

    def build(self, cls: type[T], values: Mapping[str, Any], prefix: str) -> T:
        """``cls(**values)``, its errors' keys rewritten to sit under ``prefix``, with the
        source added."""
        try:
            return cls(**values)
        except ConfigError as exc:
            own = getattr(cls, "key_prefix", "")
            key = exc.key or ""
            if own and (key == own or key.startswith(f"{own}.")):
                key = key[len(own) + 1 :]
            full = f"{prefix}.{key}" if prefix and key else prefix or key
            raise ConfigError(
                exc.detail, source=exc.source or self.source, key=full or None, line=exc.line
            ) from None


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def _mapping(value: Any, reader: _Reader, key: str, expected: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise reader.error(expected, key)
    return value


def parse_config(
    data: Mapping[str, Any], *, source: str | None = None, base_dir: Path | None = None
) -> PollerConfig:
    """Build a :class:`PollerConfig` from already-parsed TOML data.

    Relative paths are resolved against ``base_dir`` (kept relative without it); errors name
    ``source`` and the dotted key.
    """
    reader = _Reader(source, base_dir)
    layout = tables()
    for name in data:
        if name not in layout:
            raise reader.error(_UNKNOWN_SECTION, name)
    values: dict[str, Any] = {}
    for name, (cls, many) in layout.items():
        if not many:
            if name not in data and _optional(field_types(PollerConfig)[name][1]) is not None:
                continue  # an optional section left out: its default (None)
            raw = _mapping(data.get(name, {}), reader, name, "expected a table")
            values[name] = reader.table(cls, raw, name)
            continue
        entries = data.get(name, [])
        if not isinstance(entries, list):
            raise reader.error(f"expected an array of tables [[{name}]]", name)
        values[name] = tuple(
            reader.table(
                cls, _mapping(e, reader, f"{name}[{i}]", "expected a table"), f"{name}[{i}]"
            )
            for i, e in enumerate(entries)
        )
    config = reader.build(PollerConfig, {**values, "source": source}, "")
    _warn_about(config)
    return config


#: The documented per-account budget of BatchGetOnlineUsers.
DOCUMENTED_QPS = API_SPECS[LEGACY_API].qps


def _warn_about(config: PollerConfig) -> None:
    """Settings that are allowed but probably wrong: said once, at load time."""
    for spec in API_SPECS.values():
        value = getattr(config.limits, spec.qps_key)
        if value > spec.qps:
            where = f"{config.source}: " if config.source else ""
            log.warning(
                "%skey 'limits.%s' = %g is above the documented %g requests/s per account for"
                " %s; fine if your quota was raised, otherwise expect throttling",
                where,
                spec.qps_key,
                value,
                spec.qps,
                spec.action,
            )


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
