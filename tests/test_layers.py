"""The package's layers hold: no import cycle between its modules, the pure core imports no I/O, and only the
entry points build adapters."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "restricted_sender"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The package modules ``path`` imports (at module level only, or anywhere); ``TYPE_CHECKING`` blocks skipped."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if candidate in MODULES else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif not top_level_only:
                visit([n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)])
            if top_level_only and isinstance(node, ast.If | ast.Try):
                visit(node.body)

    visit(tree.body)
    return {name for name in found if name in MODULES}


def test_no_module_of_the_package_imports_itself_back_at_module_level() -> None:
    graph = {name: _imports(path, top_level_only=True) - {name} for name, path in MODULES.items()}
    # A package's __init__ runs before its modules: it is an edge to the parent, not a cycle.
    cycles: list[list[str]] = []

    def walk(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in trail:
                cycle = [*trail[trail.index(nxt) :], nxt]
                if not all(MODULES[n].name == "__init__.py" or n == nxt for n in cycle[:-1]):
                    cycles.append(cycle)
            elif len(trail) < 40:
                walk(nxt, [*trail, nxt])

    for start in sorted(graph):
        walk(start, [start])
    assert cycles == []


def test_the_pure_core_does_no_io() -> None:
    io = ("httpx", "azure", "msgraph", "aiohttp", "sqlite3", "socket", "restricted_sender.adapters")
    offenders = {
        name: sorted(i for i in _imports(path, top_level_only=False) | _raw_imports(path) if i.startswith(io))
        for name, path in MODULES.items()
        if name.startswith("restricted_sender.core.")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_only_the_entry_points_build_adapters() -> None:
    building = {
        name
        for name, path in MODULES.items()
        if any(i.startswith("restricted_sender.adapters") for i in _imports(path, top_level_only=False))
        and not name.startswith(("restricted_sender.entrypoints.", "restricted_sender.adapters"))
    }
    assert building == set()


def _raw_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_a_loaded_policy_is_one_value_and_only_the_policy_module_tells_valid_from_invalid() -> None:
    """``LoadedPolicy`` (the policy, or why it did not load) is passed around whole; ``usable``/``effective`` in
    ``core/policy.py`` are the only places that look inside it."""
    import re

    unions = re.compile(r"Policy \| PolicyError|isinstance\([\w.]+, Policy\)")
    found = {
        name: len(unions.findall(path.read_text(encoding="utf-8")))
        for name, path in MODULES.items()
        if name != "restricted_sender.core.policy"
    }
    assert {name: count for name, count in found.items() if count} == {}
