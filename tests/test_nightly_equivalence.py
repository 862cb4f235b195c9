"""The nightly pass gives the same results as before its speed-ups (issue 11): a golden snapshot of a simulated fleet.

``tests/golden/detection/nightly.json`` was written by the detection code *before* it was made faster: every
episode, regression record (ids, onset, end, status, metrics, evidence) and stored baseline of a full nightly pass
over :data:`support.detection_snapshot.SCENARIO`, then of an incremental pass replaying its last day. A change that
is meant to alter results regenerates it (``SPANPRISM_UPDATE_GOLDEN=1``) and says why in its commit.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.detection_snapshot import differences, scenario_db, snapshot

from spanprism.attribution.passes.detect_pass import run_attribution

GOLDEN = Path(__file__).parent / "golden" / "detection" / "nightly.json"
#: Floats are compared to 1e-9 relative: the same arithmetic, but BLAS kernels may differ between machines.
REL = 1e-9


@pytest.fixture(scope="module")
def passes(tmp_path_factory) -> dict:
    con = scenario_db(tmp_path_factory.mktemp("nightly") / "scenario.duckdb")
    out = {}
    run_attribution(con)
    out["nightly"] = snapshot(con)
    last = con.execute("SELECT max(start_time) FROM llm_calls").fetchone()[0]
    since = (last.astimezone(UTC) - timedelta(days=1)).replace(hour=6, minute=0, second=0, microsecond=0)
    run_attribution(con, since=datetime.fromtimestamp(since.timestamp(), UTC))
    out["incremental"] = snapshot(con)
    con.close()
    return out


def test_results_equal_the_golden_snapshot(passes):
    if os.environ.get("SPANPRISM_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(passes, indent=1, ensure_ascii=False) + "\n")
    want = json.loads(GOLDEN.read_text())
    got = json.loads(json.dumps(passes))  # the same JSON round trip as the golden file
    diff = differences(got, want, rel=REL)
    assert not diff, f"{len(diff)} differences, first: {diff[:10]}"


def test_the_scenario_exercises_every_detection_path(passes):
    """The snapshot is only worth its name if the pass found episodes of each kind on it."""
    episodes = passes["nightly"]["episodes"]
    grains = {e["grain_s"] for e in episodes}
    assert {0, 300, 3600} <= grains, grains  # per call, 5-minute and hourly buckets
    assert {e["status"] for e in episodes} >= {"resolved", "accepted"}
    assert len(passes["nightly"]["regressions"]) >= 10
    assert {b["kind"] for b in passes["nightly"]["baselines"]} >= {"seasonal"}
