"""The vocabulary is DESIGN.md's: the labels and ``contributions_ms`` keys of the regression record, in its order.

DESIGN.md lives beside the repository (``../shared/DESIGN.md``, or ``$SPANPRISM_DESIGN_MD``), not in it, so the
record's lines are quoted here; one test checks the quote against the file whenever the file is there.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from spanprism.attribution import vocabulary as v

ROOT = Path(__file__).resolve().parents[1]
DESIGN_MD = Path(os.environ.get("SPANPRISM_DESIGN_MD", ROOT.parent / "shared" / "DESIGN.md"))

# Verbatim from DESIGN.md, "Regression record".
DESIGN_RECORD = """\
 "label": "prefill_growth|cache_eviction|batch_contention|routing_change|output_growth|unexplained",
 "reason": "e.g. prompt_changed|ttl_expired|provider_evicted|region_shift|model_version_change|...|null",
 "confidence": 0.0-1.0,
 "contributions_ms": {"prefill_growth": 610.0, "cache_eviction": 35.0, "batch_contention": 20.0,
                      "routing_change": 0.0, "output_growth": 5.0, "residual": 168.0},
"""


def _design_labels() -> tuple[str, ...]:
    return tuple(re.search(r'"label": "([^"]+)"', DESIGN_RECORD).group(1).split("|"))  # type: ignore[union-attr]


def test_labels_are_the_design_records_in_its_order():
    assert _design_labels() == v.LABELS
    assert v.LABELS[:-1] == v.MECHANISMS and v.LABELS[-1] == "unexplained"
    assert v.LABELS[:4] == v.CORE_LABELS


def test_contribution_keys_are_the_design_records_in_its_order():
    block = re.search(r'"contributions_ms": (\{[^}]*\})', DESIGN_RECORD).group(1)  # type: ignore[union-attr]
    assert tuple(json.loads(block)) == v.CONTRIBUTION_KEYS
    assert (*v.MECHANISMS, "residual") == v.CONTRIBUTION_KEYS


def test_reasons_cover_every_label_and_the_named_examples():
    assert tuple(v.REASONS) == v.LABELS
    examples = re.search(r'"reason": "e\.g\. ([^"]+)"', DESIGN_RECORD).group(1).split("|")  # type: ignore[union-attr]
    named = [r for r in examples if r not in {"...", "null"}]
    assert named and set(named) <= set(v.ALL_REASONS)
    assert len(v.ALL_REASONS) == len(set(v.ALL_REASONS)), "a reason belongs to one label"
    assert not set(v.ALL_REASONS) & set(v.LABELS)


def test_check_reason():
    v.check_reason("cache_eviction", "ttl_expired")
    v.check_reason("output_growth", None)
    with pytest.raises(ValueError, match="does not belong"):
        v.check_reason("cache_eviction", "queueing")
    with pytest.raises(ValueError, match="unknown label"):
        v.check_reason("slow", None)


def test_readme_explains_every_label_in_order():
    readme = (ROOT / "README.md").read_text()
    assert tuple(re.findall(r"^\| `([a-z_]+)` \|", readme, flags=re.M)[: len(v.LABELS)]) == v.LABELS


@pytest.mark.skipif(not DESIGN_MD.exists(), reason=f"{DESIGN_MD} is not next to the repository")
def test_quote_is_verbatim_design_md():
    assert DESIGN_RECORD in DESIGN_MD.read_text()
