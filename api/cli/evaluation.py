"""``spanprism simulate`` and ``spanprism evaluate``: labelled span exports in, honest accuracy numbers out.

``simulate`` writes what a real deployment would hand us — OTLP JSON-lines exports, each series recorded by
one instrumentation convention — plus ``labels.jsonl`` (the injected causes, kept outside the spans) and
``config.json``. ``evaluate`` runs the real product path on such a folder (ingest → detect → attribute into a
fresh DuckDB file) and scores the regressions against the labels with :mod:`spanprism.attribution.evaluation.scoring`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from spanprism.api.storage.connect import open_db
from spanprism.attribution.evaluation.scoring import Score, score
from spanprism.attribution.simulator.otlp.writer import iter_table_rows, write_export
from spanprism.attribution.simulator.simulate import SimulationConfig, simulate, write_labels
from spanprism.attribution.store import calls
from spanprism.attribution.store.records import list_regressions
from spanprism.ingest.pipeline import ingest_paths

#: Conventions that carry tokens, cache, TTFT and the endpoint: what a well-instrumented service exports.
RICH_CONVENTIONS = ("otel_semconv", "openllmetry", "openlit")
#: Every convention the writer knows (some hide the endpoint, the provider or the cache — as in real life).
ALL_CONVENTIONS = (
    "otel_semconv", "openllmetry", "openlit", "openinference", "langfuse", "otel_semconv_legacy", "openllmetry_legacy",
)  # fmt: skip


def write_simulation(
    out: Path, config: SimulationConfig, conventions: Sequence[str] = RICH_CONVENTIONS, *, non_llm: float = 0.05
) -> dict[str, Any]:
    """Simulate and write ``out/spans-<convention>.jsonl.gz`` files, ``labels.jsonl`` and ``config.json``."""
    out.mkdir(parents=True, exist_ok=True)
    result = simulate(config)
    services = sorted({s["service"] for s in result.series})
    rng = random.Random(config.seed)
    assigned = {svc: conventions[i % len(conventions)] for i, svc in enumerate(rng.sample(services, len(services)))}
    rows_by_convention: dict[str, list[dict[str, Any]]] = {c: [] for c in conventions}
    for row in iter_table_rows(result.calls):
        rows_by_convention[assigned[row["service"]]].append(row)
    written = {}
    for convention, rows in rows_by_convention.items():
        if rows:
            counts = write_export(out / f"spans-{convention}.jsonl.gz", rows, convention,
                                  extra_non_llm=non_llm, seed=config.seed)  # fmt: skip
            written[convention] = counts.llm_spans
    write_labels(out / "labels.jsonl", result.labels)
    meta = {"simulation": config.to_dict(), "conventions": assigned, "calls": result.calls.num_rows,
            "series": len(result.series), "days": config.days, "written": written}  # fmt: skip
    (out / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def read_labels(folder: Path) -> list[dict[str, Any]]:
    """The ``labels.jsonl`` of a simulated folder."""
    with (folder / "labels.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _horizon(con: duckdb.DuckDBPyConnection) -> datetime:
    span = calls.data_span(con)
    if span is None:
        raise ValueError("no LLM calls were ingested: nothing to evaluate")
    return span[1] + timedelta(seconds=1)


def evaluate_folder(folder: Path, db_path: Path, *, attribute_fn: Any, workers: int = 1) -> tuple[Score, dict]:
    """Ingest ``folder`` into a fresh ``db_path``, detect and attribute, and score against its labels."""
    for stale in (db_path, db_path.with_name(db_path.name + ".wal")):
        stale.unlink(missing_ok=True)
    meta = json.loads((folder / "config.json").read_text())
    con = open_db(db_path)
    try:
        ingested = ingest_paths(con, sorted(folder.glob("spans-*.jsonl*")), workers=workers)
        run = attribute_fn(con, since=None, until=None)
        records = list_regressions(con)
        result = score(records, read_labels(folder), series_weeks=meta["series"] * meta["days"] / 7.0,
                       horizon=_horizon(con))  # fmt: skip
    finally:
        con.close()
    return result, {"ingest": ingested.as_dict(), "run": run, "regressions": len(records)}
