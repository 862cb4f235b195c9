"""Imports flow one way, between packages and between the rooms inside them.

Packages: api → attribution, ingest → models; migrations import nothing of ours. One module reads ``llm_calls``
(attribution/store/calls.py); ingest/load.py is the one writer. Rooms (second-level sub-packages,
or a package's root modules) have their own allowed set, so that e.g. the simulator stays a self-contained wing
that only evaluation (and the CLI that drives it) imports, and detection never reaches into the classifier.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "attribution", "ingest", "models", "migrations")

# room → rooms it may import (besides itself). A room is "pkg.sub" for a sub-package, "pkg" for root modules.
_ATTRIBUTION_CORE = {"attribution", "attribution.baselines", "models"}
ALLOWED: dict[str, set[str]] = {
    "models": set(),
    "migrations": set(),
    "migrations.versions": {"migrations"},  # dialect.holds_data: which tables a state-only database skips
    "ingest": {"models"},
    # Root modules, e.g. calls_window (the one call-window shape decomposition and classifier both read): pure.
    "attribution": {"models"},
    "attribution.baselines": _ATTRIBUTION_CORE,
    "attribution.detection": _ATTRIBUTION_CORE,
    "attribution.decomposition": _ATTRIBUTION_CORE,
    "attribution.store": _ATTRIBUTION_CORE | {"attribution.detection"},
    "attribution.classifier": _ATTRIBUTION_CORE | {"attribution.decomposition", "attribution.store"},
    "attribution.passes": _ATTRIBUTION_CORE
    | {"attribution.detection", "attribution.decomposition", "attribution.classifier", "attribution.store"},
    "attribution.simulator": {"models"},
    "attribution.evaluation": _ATTRIBUTION_CORE
    | {"attribution.decomposition", "attribution.classifier", "attribution.store", "attribution.simulator"},
    "api.storage": {"migrations", "models"},
}
_PRODUCT = {r for r in ALLOWED if r.startswith("attribution") and r != "attribution.simulator"} | {"ingest", "models"}
ALLOWED |= {
    "api": {"api.storage", "api.services", "api.routers", "api.alerts", "api.web"} | _PRODUCT,
    "api.services": {"api", "api.storage"} | _PRODUCT,
    "api.alerts": {"api", "api.storage"} | _PRODUCT,
    "api.routers": {"api", "api.storage", "api.services", "api.alerts"} | _PRODUCT,
    # The pages call the REST handlers (one data path) and the same store functions; nothing imports them but app.
    "api.web": {"api", "api.storage", "api.routers"} | _PRODUCT,
    # The CLI drives the simulator (`simulate`, `evaluate`, `demo`), so it is the one api room allowed in.
    "api.cli": {"api", "api.storage", "api.services", "api.alerts", "api.routers", "attribution.simulator"} | _PRODUCT,
}


def _room(module: str) -> str:
    """``spanprism.attribution.detection.cusum`` → ``attribution.detection``; root modules → their package."""
    parts = module.split(".")[1:]
    if len(parts) >= 2 and (ROOT / parts[0] / parts[1] / "__init__.py").exists():
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def _imported_rooms(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        bare = [n for n in names if n.split(".")[0] in PACKAGES]
        assert not bare, f"{path.relative_to(ROOT)} imports {bare}: ours are imported as spanprism.*"
        found.update(_room(n) for n in names if n.startswith("spanprism."))
    return found


def _python_files() -> list[Path]:
    return [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]


def test_every_room_has_a_rule_and_a_docstring():
    rooms = {_room("spanprism." + ".".join(p.relative_to(ROOT).with_suffix("").parts)) for p in _python_files()}
    assert rooms <= set(ALLOWED), f"rooms without an import rule: {sorted(rooms - set(ALLOWED))}"
    for room in rooms:
        init = ROOT / room.replace(".", "/") / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(ROOT)} says nothing of what it owns"


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_dependency_direction(path: Path):
    me = _room("spanprism." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
    bad = _imported_rooms(path) - ALLOWED[me] - {me}
    assert not bad, f"{path.relative_to(ROOT)} ({me}) imports {sorted(bad)}"


def test_tests_and_benchmarks_use_the_installed_names():
    for folder in ("tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            _imported_rooms(path)


def test_benchmarks_import_nothing_from_tests():
    for path in (ROOT / "benchmarks").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert node.module.split(".")[0] not in {"tests", "support"}, f"{path.name} imports {node.module}"


_READS_CALLS = re.compile(r"\b(?:FROM|JOIN)\s+llm_calls\b|\bllm_calls\s+(?:WHERE|FINAL)\b", re.IGNORECASE)
CALLS_READER = ROOT / "attribution" / "store" / "calls.py"
# ClickHouse's dialect of the same reader: calls.py hands it every question when llm_calls lives in ClickHouse.
CALLS_READER_CLICKHOUSE = ROOT / "attribution" / "store" / "clickhouse_calls.py"
# The loader is the one writer of llm_calls; folding a new span into its stored call reads the rows it rewrites
# (on ClickHouse, clickhouse_load.py reads those rows back for the same fold).
LOADER_READER = ROOT / "ingest" / "fold.py"
# The fold's gate (whether a stored row can pair with the unit at all), split out of fold.py to keep it short.
LOADER_GATE = ROOT / "ingest" / "fold_gate.py"
LOADER_READER_CLICKHOUSE = ROOT / "ingest" / "clickhouse_load.py"


def test_one_module_reads_llm_calls():
    readers = set()
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _READS_CALLS.search(node.value):
                readers.add(path.relative_to(ROOT))
    expected = {p.relative_to(ROOT) for p in (CALLS_READER, CALLS_READER_CLICKHOUSE, LOADER_READER, LOADER_GATE,
                                              LOADER_READER_CLICKHOUSE)}  # fmt: skip
    assert readers == expected, f"llm_calls is read outside store/calls.py (and the loader's fold): {sorted(readers)}"
