"""End to end through the CLI: simulate → ingest → attribute → regressions/explain/label → train-with-feedback data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from spanprism.api.cli import main
from spanprism.api.cli.evaluation import read_labels
from spanprism.api.storage.connect import open_db
from spanprism.attribution import vocabulary
from spanprism.attribution.classifier.model import load_default
from spanprism.attribution.passes.label_pass import feedback_examples, label_regressions

RECORD_KEYS = {"id", "series", "start", "end", "status", "metric", "baseline", "observed", "change_pct", "label",
               "reason", "confidence", "contributions_ms", "evidence", "exemplars"}  # fmt: skip
CONTRIBUTION_KEYS = {"prefill_growth", "cache_eviction", "batch_contention", "routing_change", "output_growth",
                     "residual"}  # fmt: skip
LABELS = set(vocabulary.LABELS)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    sim, db = root / "sim", str(root / "e2e.duckdb")
    args = ["--db", db, "simulate", "--out", str(sim), "--seed", "31", "--days", "2.5", "--series", "3",
            "--rate-min", "0.1", "--rate-max", "0.2"]  # fmt: skip
    assert main(args) == 0
    assert main(["--db", db, "ingest", str(sim)]) == 0
    assert main(["--db", db, "attribute", "--json"]) == 0
    return {"root": root, "sim": sim, "db": db}


def _regressions(world: dict, capsys, *extra: str) -> list[dict]:
    capsys.readouterr()
    assert main(["--db", world["db"], "regressions", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_regression_records_follow_the_contract(world, capsys):
    records = _regressions(world, capsys)
    assert records, "a simulated workload with strong injected causes must yield regressions"
    for r in records:
        assert set(r) == RECORD_KEYS
        assert set(r["series"]) >= {"service", "provider", "model", "operation"}
        assert r["label"] in LABELS and r["status"] in {"open", "resolved"}
        assert 0.0 <= r["confidence"] <= 1.0
        assert set(r["contributions_ms"]) == CONTRIBUTION_KEYS
        assert r["evidence"] and len(r["exemplars"]) >= 3
        assert all(len(x["trace_id"]) == 32 and len(x["span_id"]) == 16 for x in r["exemplars"])


def test_every_records_contributions_sum_to_its_observed_minus_baseline(world, capsys):
    """The property the waterfall relies on: no record needs a "window gap" step, whatever its metric or test."""
    records = _regressions(world, capsys)
    assert len(records) >= 3
    for r in records:
        change = r["observed"] - r["baseline"]
        assert math.fsum(r["contributions_ms"].values()) == pytest.approx(change, abs=0.005), r["id"]
        (split,) = [e for e in r["evidence"] if e["signal"] == "decomposed_metric"]
        # What the split was computed on is a close cousin of the detector's numbers (else it is not stretched).
        assert split["closed_by"] in ("scaled", "residual") and split["baseline"] > 0


def test_an_attribution_that_does_not_close_is_redone_on_the_next_pass(world, capsys):
    """Attributions stored before closing existed are healed by the next pass, though detection did not change."""
    victim = _regressions(world, capsys)[0]
    con = open_db(world["db"])
    try:
        stale = {**victim["contributions_ms"], "residual": victim["contributions_ms"]["residual"] + 25.0}
        con.execute("UPDATE regression_attributions SET contributions_ms = ? WHERE regression_id = ?",
                    [json.dumps(stale), victim["id"]])  # fmt: skip
        summary = label_regressions(con, load_default())
    finally:
        con.close()
    assert summary.attributed == 1  # only the one that did not close
    healed = next(r for r in _regressions(world, capsys) if r["id"] == victim["id"])
    assert healed["contributions_ms"] == pytest.approx(victim["contributions_ms"], abs=1e-6)


def test_most_detected_regressions_match_an_injected_cause(world, capsys):
    records = _regressions(world, capsys)
    labels = [lab for lab in read_labels(world["sim"]) if lab["label"] != "none"]
    services = {lab["series"]["service"] for lab in labels}
    matched = [r for r in records if r["series"]["service"] in services]
    assert len(matched) >= len(records) * 0.7


def test_filters_explain_and_label(world, capsys):
    records = _regressions(world, capsys)
    first = records[0]
    only = _regressions(world, capsys, "--label", first["label"])
    assert only and all(r["label"] == first["label"] for r in only)
    capsys.readouterr()
    assert main(["--db", world["db"], "explain", first["id"][:10], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == first["id"]
    assert main(["--db", world["db"], "explain", "zzzz"]) == 1
    assert main(["--db", world["db"], "label", first["id"], "cache_eviction", "--reason", "queueing"]) == 2
    assert main(["--db", world["db"], "label", first["id"], "cache_eviction", "--reason", "prompt_changed",
                 "--note", "post-mortem 42"]) == 0  # fmt: skip
    con = open_db(world["db"])
    try:
        examples = feedback_examples(con)
    finally:
        con.close()
    assert len(examples) == 1
    features, label, reason = examples[0]
    assert (label, reason) == ("cache_eviction", "prompt_changed") and features


def test_attribute_is_idempotent(world, capsys):
    before = _regressions(world, capsys)
    assert main(["--db", world["db"], "attribute"]) == 0
    after = _regressions(world, capsys)
    assert [r["id"] for r in after] == [r["id"] for r in before]
    assert [r["label"] for r in after] == [r["label"] for r in before]


def test_evaluate_scores_the_folder(world, capsys):
    capsys.readouterr()
    assert main(["--db", world["db"], "evaluate", str(world["sim"]), "--json",
                 "--eval-db", str(Path(world["root"]) / "eval.duckdb")]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["injected"] > 0
    assert 0.0 <= report["detection_recall"] <= 1.0
    assert set(report["per_class"]) == LABELS
