"""Imports flow one way: api → attribution, ingest → models; migrations import nothing of ours."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"api", "attribution", "ingest", "models", "migrations"}
ALLOWED = {
    "api": {"api", "attribution", "ingest", "models", "migrations"},
    "attribution": {"attribution", "models"},
    "ingest": {"ingest", "models"},
    "models": {"models"},
    "migrations": set(),
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependency_direction(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = _imports(path) - ALLOWED[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
