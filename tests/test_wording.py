"""What people read about a regression (api/wording.py): units, thousands separators, route names, the sentence,
a waterfall that closes, and an explain text that fits 120 columns with the internal features only on request."""

from __future__ import annotations

import re

import pytest

from spanprism.api.web.bars import waterfall
from spanprism.api.wording import (
    MECHANISMS,
    change,
    contributions,
    evidence_lines,
    explain_text,
    ms,
    number,
    route_name,
    sentence,
)

RECORD = {
    "id": "sample-regression", "status": "open", "start": "2026-01-01T00:00:00Z", "end": None,
    "series": {"service": "chat-api", "provider": "openai", "model": "gpt-4o", "operation": "chat"},
    "metric": "ttft_p95_ms", "baseline": 812.0, "observed": 1650.0, "change_pct": 103.2, "label": "prefill_growth",
    "reason": "user_input_growth", "confidence": 0.87,
    "contributions_ms": {"prefill_growth": 610.0, "cache_eviction": 35.0, "batch_contention": 20.0,
                         "routing_change": 0.0, "output_growth": 5.0, "residual": 168.0},
    "exemplars": [{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}],
    "evidence": [
        {"signal": "uncached_input_tokens_p50", "baseline": 14330.0, "observed": 27820.0},
        {"signal": "cache_read_ratio", "baseline": 0.62, "observed": 0.21},
        {"signal": "itl_p50_ms", "baseline": 21.04, "observed": 21.3},
        {"signal": "route_share", "route": "region=eastus|server_address=eastus.api.example|deployment=∅",
         "baseline": 0.8, "observed": 0.1},
        {"signal": "route_tv_region", "baseline": 0.0, "observed": 0.0},
        {"signal": "route_tv_deployment", "baseline": 0.0, "observed": 0.42},
        {"signal": "feature:tv_max", "baseline": None, "observed": 14330.123456},
        {"signal": "route_unrecorded_system_fingerprint", "baseline": None, "observed": None},
    ],
}  # fmt: skip


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [(14330.0, "tokens", "14,330"), (0.62, "pct", "62 %"), (21.04, "ms", "21 ms"), (1833.0, "ms", "1.8 s"),
     (3.25, "ms", "3.2 ms"), (1022.4, "rate", "1,022 /h"), (None, "ms", "-"), (float("nan"), "", "-")],
)  # fmt: skip
def test_numbers_carry_units_and_thousands_separators(value, unit, text):
    assert number(value, unit) == text


def test_changes_are_relative_for_amounts_points_for_shares_and_ms_for_residuals():
    assert change(14330, 27820, "tokens") == "+94 %"
    assert change(0.62, 0.21, "pct") == "-41 pts"
    assert change(10.0, 10.01, "tokens") == "±0 %"
    assert change(-38.0, -43.0, "ms") == "-5.0 ms"
    assert ms(412.0, signed=True) == "+412 ms" and ms(-1500.0, signed=True) == "-1.5 s"


def test_route_names_drop_unreported_parts_and_a_host_that_repeats_the_region():
    assert route_name("region=eastus|server_address=eastus.api.example|deployment=∅") == "region eastus"
    assert route_name("deployment=gpt4o-b|response_model=gpt-4o-2024-08-06") == (
        "deployment gpt4o-b, response model gpt-4o-2024-08-06"
    )
    assert route_name("region=∅") == "unreported route"


def test_evidence_is_named_and_internal_features_need_debug():
    lines = evidence_lines(RECORD)
    names = [line.name for line in lines]
    assert names[0] == "uncached prompt tokens, median"
    assert (lines[0].baseline, lines[0].observed, lines[0].change) == ("14,330", "27,820", "+94 %")
    assert "traffic on region eastus" in names and "traffic that changed deployment" in names
    assert "traffic that changed region" not in names  # a mix that did not move says nothing
    assert not any(n.startswith("feature:") for n in names)
    assert any(line.kind == "note" and "system fingerprint" in line.name for line in lines)
    assert any(line.name == "feature:tv_max" for line in evidence_lines(RECORD, debug=True))


def test_the_sentence_says_what_rose_and_where_the_time_went():
    assert sentence(RECORD) == (
        "TTFT p95 rose 838 ms (812 ms → 1.6 s, +103 %): 610 ms is longer uncached prompts, 168 ms is unexplained."
    )


def test_the_waterfall_is_the_contributions_and_closes_on_observed_minus_baseline():
    steps = contributions(RECORD)  # the labelling pass stores contributions that close: no extra step is drawn
    assert [k for k, *_ in steps] == [*MECHANISMS]
    assert sum(v for *_, v in steps) == pytest.approx(RECORD["observed"] - RECORD["baseline"])
    svg = waterfall(RECORD)
    drawn = [float(v) for v in re.findall(r'class="wf-step[^"]*"[^>]*data-ms="([^"]+)"', svg)]
    assert len(drawn) == len(MECHANISMS) and sum(drawn) == pytest.approx(838.0)
    assert "window" not in svg


def test_explain_fits_a_120_column_terminal_and_hides_features_without_debug():
    text = explain_text(RECORD)
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "uncached prompt tokens, median" in text and "14,330" in text and "+94 %" in text
    assert "feature:" not in text and "1.433e+04" not in text
    assert "traffic on region eastus" in text and "route_share" not in text
    assert sentence(RECORD) in text
    assert "feature:tv_max" in explain_text(RECORD, debug=True)
