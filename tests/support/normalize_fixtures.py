"""The normalize fixtures (tests/fixtures/normalize) as decoded span records, and normalizing them."""

from __future__ import annotations

from pathlib import Path

import orjson

from spanprism.ingest.normalize import normalize
from spanprism.ingest.records import NormalizeResult, SpanRecord

HERE = Path(__file__).resolve().parents[1]


FIXTURES = HERE / "fixtures" / "normalize"


def load_spans(name: str) -> list[SpanRecord]:
    """Fixture dicts as SpanRecords: add source, location and a raw() that re-serializes the dict."""
    spans: list[SpanRecord] = []
    for index, data in enumerate(orjson.loads((FIXTURES / f"{name}.json").read_bytes())):
        record = dict(data, source=f"{name}.json", location=f"span {index}")
        record["raw"] = lambda data=data: orjson.dumps(data)
        spans.append(record)  # type: ignore[arg-type]
    return spans


def run(name: str, tenant: str | None = "tenant.id") -> NormalizeResult:
    return normalize(load_spans(name), tenant_attribute=tenant)
