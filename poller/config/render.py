"""Writing a :class:`PollerConfig` back as TOML: ``poller check-config`` and test harnesses.

``render_toml(config, mask_secrets=False)`` parses back (``parse_config(tomllib.loads(...))``)
to an equal config. Sections list every key, an unset one as ``""`` (which reads back as unset);
``[[targets]]`` and ``[[sinks]]`` entries leave out unset keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, Final

from poller.config.model import PollerConfig

__all__ = ["mask", "render_toml", "toml_value"]

#: Backslash and quote escaped; every control character (tab included) as ``\uXXXX``.
_ESCAPES: Final = {
    **{c: f"\\u{c:04X}" for c in (*range(0x20), 0x7F)},
    ord('"'): '\\"',
    ord("\\"): "\\\\",
}
#: Comments may hold no control character but tab.
_COMMENT_ESCAPES: Final = {c: f"\\u{c:04X}" for c in (*range(0x09), *range(0x0A, 0x20), 0x7F)}


def mask(value: str | None) -> str:
    """Show that a secret is set without showing it."""
    return "(unset)" if not value else "****"


def toml_value(value: Any) -> str:
    """One TOML value: a bool, int, float, str, Path or a list/tuple of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # 1.0, 1e-05, 1e+16, inf, -inf, nan: all TOML floats
    if isinstance(value, str | Path):
        return '"' + str(value).translate(_ESCAPES) + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _entries(table: Any, *, mask_secrets: bool, keep_unset: bool) -> Iterator[str]:
    kind = getattr(table, "kind", None)
    for f in dataclasses.fields(table):
        kinds = f.metadata.get("kinds")
        if kinds is not None and kind not in kinds:
            continue  # a key of another kind of entry (a webhook's url for a file sink)
        value = getattr(table, f.name)
        if mask_secrets and f.metadata.get("secret"):
            value = f.metadata.get("mask", mask)(value)
        elif value is None:
            if not keep_unset:
                continue
            value = ""
        yield f"{f.name} = {toml_value(value)}"


def render_toml(
    config: PollerConfig,
    *,
    mask_secrets: bool = True,
    header: str | None = None,
    sections: Collection[str] | None = None,
) -> str:
    """The config as TOML text ending in a newline.

    ``mask_secrets`` shows secrets as ``"****"`` (set) or ``"(unset)"``; ``header`` becomes
    ``#`` comment lines on top; ``sections`` (e.g. ``("api", "credentials")``) limits the output
    to those tables, in the config's order.
    """
    blocks: list[list[str]] = []
    for f in dataclasses.fields(config):
        if sections is not None and f.name not in sections:
            continue
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            lines = list(_entries(value, mask_secrets=mask_secrets, keep_unset=True))
            blocks.append([f"[{f.name}]", *lines])
        elif isinstance(value, tuple):
            for entry in value:
                lines = list(_entries(entry, mask_secrets=mask_secrets, keep_unset=False))
                blocks.append([f"[[{f.name}]]", *lines])
    top = [f"# {line.translate(_COMMENT_ESCAPES)}".rstrip() for line in (header or "").splitlines()]
    body = "\n\n".join("\n".join(block) for block in blocks)
    return "\n".join([*top, body]) + "\n"
