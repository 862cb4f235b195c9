"""The Grafana dashboard works against the real API: every Infinity URL it contains, with its variables substituted,
answers 200 with non-empty JSON holding every field the panel reads."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Live
from support.world import AT, serve_world

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "spanprism.json"
INFINITY = "yesoreyeram-infinity-datasource"


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target
    for var in dashboard["templating"]["list"]:
        if isinstance(var.get("query"), dict) and "infinityQuery" in var["query"]:
            yield f"variable {var['name']}", var["query"]["infinityQuery"]


def _pick(row: Any, selector: str) -> Any:
    for part in selector.split("."):
        assert isinstance(row, dict) and part in row, f"field {selector!r} missing in {row!r}"
        row = row[part]
    return row


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    with serve_world(tmp_path_factory, "grafana") as server:
        yield server


def test_dashboard_shape(dashboard):
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "spanprism", "series", "step"} <= names
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for needed in ("ttft", "itl", "end-to-end", "cache-read", "region", "regressions"):
        assert needed in titles
    targets = list(_targets(dashboard))
    assert len(targets) == len(dashboard["panels"]) + 1
    assert all(t["datasource"]["type"] == INFINITY and t["type"] == "json" for _, t in targets)


@pytest.mark.parametrize("step", ["5m", "1h"])
def test_every_panel_url_answers_with_the_fields_it_reads(dashboard, live, step):
    every = live.client.get("/api/v1/series", params={"until": AT.isoformat()}).json()["data"]
    key = next(s["series_key"] for s in every if s["latest"]["e2e_p95_ms"]["baseline"])
    # Grafana renders ${__from:date:iso} as e.g. 2026-10-02T09:00:00.000Z.
    iso = "%Y-%m-%dT%H:%M:%S.000Z"
    values = {"spanprism": live.url, "series": key, "step": step, "__to:date:iso": AT.strftime(iso),
              "__from:date:iso": (AT - timedelta(days=1)).strftime(iso)}  # fmt: skip
    for title, target in _targets(dashboard):
        url = re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], target["url"])
        resp = live.client.request(target["url_options"]["method"], url)
        assert resp.status_code == 200, (title, url, resp.text)
        rows = _pick(resp.json(), target["root_selector"]) if target["root_selector"] else resp.json()
        assert isinstance(rows, list) and rows, f"{title}: no rows from {url}"
        for col in target["columns"]:
            picked = [_pick(row, col["selector"]) for row in rows]
            if col["type"] in ("number", "timestamp"):
                assert any(v is not None for v in picked), f"{title}: {col['selector']} is always null"
        if title == "variable series":
            assert key in {row["series_key"] for row in rows}
