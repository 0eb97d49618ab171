"""Project-level promises: the public API, the example config, the module layering."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import poller
from poller.config import ClusterConfig, PollerConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_public_api_is_sorted_and_importable() -> None:
    assert poller.__all__ == sorted(poller.__all__)
    for name in poller.__all__:
        assert getattr(poller, name) is not None


def test_example_config_is_valid_and_documents_every_key() -> None:
    example = ROOT / "config.example.toml"
    load_config(example)
    text = example.read_text("utf-8")
    documented = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.M))
    sections = {f.name: f.type for f in dataclasses.fields(PollerConfig)}
    for name in ("api", "credentials", "limits", "retry", "sweep", "daemon", "metrics"):
        assert f"[{name}]" in text
        section = getattr(PollerConfig(), name)
        for field in dataclasses.fields(section):
            assert field.name in documented, f"{name}.{field.name} is not in config.example.toml"
    for name in ("targets", "sinks"):
        assert f"[[{name}]]" in text and name in sections
    assert "# [cluster]" in text  # optional: commented out, so the example runs without Redis
    for field in dataclasses.fields(ClusterConfig):
        assert field.name in documented, f"cluster.{field.name} is not in config.example.toml"


def _imports(path: Path) -> set[str]:
    """Top-level packages a module imports at run time (``if TYPE_CHECKING:`` blocks aside)."""
    tree = ast.parse(path.read_text("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in {
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        }:
            node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_layering() -> None:
    """Pure modules stay pure; aiohttp and uvloop live only where they belong (import-linter
    checks the layers themselves: ``lint-imports``)."""
    package = ROOT / "poller"
    pure = (
        "wire/signing.py",
        "core/batching.py",
        "core/merge.py",
        "core/records.py",
        "config/__init__.py",
    )
    for name in pure:
        assert not _imports(package / name) & {"asyncio", "aiohttp", "uvloop"}, name
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).as_posix()
        used = _imports(path)
        if "uvloop" in used:
            assert rel in {"apps/cli.py", "emulator/cli.py"}, rel
        if "aiohttp" in used:
            assert rel.startswith("emulator/") or rel in {
                "wire/aiohttp_transport.py",
                "wire/webhook.py",
                "apps/metrics.py",
                "apps/query.py",
            }, rel
