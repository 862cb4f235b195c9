"""Every registered span convention (``SOURCE_CONVENTIONS``) through the same checks (a conformance suite).

Each convention has a reference fixture in tests/fixtures/normalize/ — named after the convention, or listed in
:data:`FIXTURE_OF` for the ones whose fixture predates this rule — and normalizing it yields conforming rows
whose ``source_convention`` is that convention, and nothing quarantined. Conversely, every convention name the
detection code in ``ingest/conventions.py`` can return is registered.
"""

from __future__ import annotations

import ast
import inspect

import pytest
from support.normalize_fixtures import FIXTURES, run

from spanprism.ingest import conventions
from spanprism.models.schema import LLM_CALLS_SCHEMA, SOURCE_CONVENTIONS

#: convention → its reference fixture, where the fixture is not simply ``<convention>.json``.
FIXTURE_OF = {
    "otel_semconv": "otel_current",
    "otel_semconv_legacy": "otel_deprecated",
    "openllmetry": "openllmetry_new",
    "openllmetry_legacy": "openllmetry_old",
    # pydantic_ai.json is a real capture with the Anthropic SDK's own spans beside pydantic-ai's (the merge tests
    # read it whole); its pydantic-ai spans alone are the reference here.
    "pydantic_ai": "pydantic_ai_alone",
    "logfire": "logfire_anthropic",
}


def _fixture(convention: str) -> str:
    return FIXTURE_OF.get(convention, convention)


def test_every_exception_names_a_registered_convention():
    assert set(FIXTURE_OF) <= set(SOURCE_CONVENTIONS)


@pytest.mark.parametrize("convention", SOURCE_CONVENTIONS)
def test_convention_has_a_fixture_that_normalizes_to_it(convention: str):
    path = FIXTURES / f"{_fixture(convention)}.json"
    assert path.exists(), f"convention {convention!r} has no reference fixture ({path.name})"
    result = run(_fixture(convention))
    assert result.table.schema == LLM_CALLS_SCHEMA
    assert result.table.num_rows >= 1 and result.quarantined == []
    assert set(result.table.column("source_convention").to_pylist()) == {convention}
    assert result.conventions == {convention: result.table.num_rows}


def test_every_convention_the_detector_can_name_is_registered():
    returned: set[str] = set()
    for func in (conventions.source_convention, conventions._otel_flavour, conventions.scope_convention):
        for node in ast.walk(ast.parse(inspect.getsource(func))):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant):
                returned.add(node.value.value)
            elif isinstance(node, ast.Return) and isinstance(node.value, ast.IfExp):
                returned.update(n.value for n in (node.value.body, node.value.orelse) if isinstance(n, ast.Constant))
    returned.update(conventions._SCOPE_CONVENTIONS.values())  # emitters named by their instrumentation scope
    assert returned and returned <= set(SOURCE_CONVENTIONS), sorted(returned - set(SOURCE_CONVENTIONS))
    assert returned == set(SOURCE_CONVENTIONS), "a registered convention no span can be detected as"
