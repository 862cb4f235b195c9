"""The read API on a live server over real data: simulate → ingest → attribute once, then query every endpoint.

``build_world`` is shared with test_grafana.py and test_api_schema.py: the pipeline runs once per session and each
server gets a copy of the file (the server owns its file and may write feedback).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from conftest import ADMIN_KEY, Live
from support.world import AT, build_world, serve_world

from spanprism.api.cli import main
from spanprism.api.routers.series import PanelCache, ceil_to_grain
from spanprism.api.storage.database import Database
from spanprism.attribution.store.records import list_regressions
from spanprism.models.tables import ROLLUP_METRICS

API = "/api/v1"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    with serve_world(tmp_path_factory, "read-api") as server:
        yield server


def _get(live: Live, path: str, **params: object) -> dict:
    resp = live.client.get(API + path, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _window(hours: float = 24) -> dict[str, str]:
    return {"since": (AT - timedelta(hours=hours)).isoformat(), "until": AT.isoformat()}


def test_series_report_health_against_stored_data(live, world):
    body = _get(live, "/series", until=AT.isoformat())
    assert body["count"] == 3 and len(body["data"]) == 3
    con = duckdb.connect(str(world), read_only=True)
    try:
        for s in body["data"]:
            n_day = con.execute(
                "SELECT count(*) FROM llm_calls WHERE service = ? AND request_model = ? AND start_time >= ?"
                " AND start_time < ?", [s["service"], s["model"], AT - timedelta(days=1), AT],
            ).fetchone()[0]  # fmt: skip
            assert s["calls_24h"] == n_day > 0
            assert s["status"] == ("degraded" if s["open_regressions"] else "ok")
            assert set(s["latest"]) == {"e2e_p95_ms", "ttft_p95_ms", "itl_p95_ms"}
            assert s["latest"]["e2e_p95_ms"]["value"] > 0
    finally:
        con.close()
    # At least one series has a stored e2e p95 baseline, so health compares against it.
    assert any(s["latest"]["e2e_p95_ms"]["baseline"] for s in body["data"])
    later = _get(live, "/series", until="2026-11-01T00:00:00Z")
    assert {s["status"] for s in later["data"]} == {"no_data"}


def test_series_filters_and_pages(live):
    every = _get(live, "/series", until=AT.isoformat())["data"]
    one = _get(live, "/series", service=every[0]["service"], until=AT.isoformat())
    assert one["count"] == 1 and one["data"][0]["series_key"] == every[0]["series_key"]
    assert _get(live, "/series", provider="no-such-provider")["count"] == 0
    first, rest = _get(live, "/series", limit=2), _get(live, "/series", limit=2, offset=2)
    assert first["count"] == rest["count"] == 3
    assert [s["series_key"] for s in first["data"] + rest["data"]] == [s["series_key"] for s in every]


def _banded_series(live: Live) -> dict:
    every = _get(live, "/series", until=AT.isoformat())["data"]
    return next(s for s in every if s["latest"]["e2e_p95_ms"]["baseline"])


def test_metric_panel_has_baseline_band(live):
    s = _banded_series(live)
    body = _get(live, f"/series/{s['series_key']}/metrics", metric="e2e_p95_ms", step="5m", **_window())
    assert body["step_s"] == 300 and 200 <= body["count"] <= 288
    for p in body["data"]:
        assert AT - timedelta(hours=24) <= datetime.fromisoformat(p["time"]) < AT
        assert p["lower"] < p["baseline"] < p["upper"] and p["calls"] > 0
    assert sum(p["lower"] <= p["value"] <= p["upper"] for p in body["data"]) >= 0.8 * body["count"]


@pytest.mark.parametrize("metric", ["e2e_p95_ms", "cache_read_ratio"])
def test_coarser_steps_are_computed_from_the_calls(live, world, metric):
    s = _banded_series(live)
    body = _get(live, f"/series/{s['series_key']}/metrics", metric=metric, step="15m", **_window(3))
    assert body["count"] == 12
    point = body["data"][5]
    t0 = datetime.fromisoformat(point["time"])
    expr = ("quantile_cont(duration_ms, 0.95) FILTER (WHERE status <> 'error')" if metric == "e2e_p95_ms" else
            "sum(cache_read_tokens) / sum(input_tokens) FILTER (WHERE cache_read_tokens IS NOT NULL)")  # fmt: skip
    con = duckdb.connect(str(world), read_only=True)
    try:
        expected, n = con.execute(
            f"SELECT {expr}, count(*) FROM llm_calls WHERE service = ? AND request_model = ? AND start_time >= ?"
            " AND start_time < ?", [s["service"], s["model"], t0, t0 + timedelta(minutes=15)]).fetchone()  # fmt: skip
    finally:
        con.close()
    assert point["calls"] == n
    assert point["value"] == pytest.approx(expected, rel=1e-9)


def test_hourly_call_counts_add_up(live):
    s = _banded_series(live)
    fine = _get(live, f"/series/{s['series_key']}/metrics", metric="n_calls", step="5m", **_window(6))
    coarse = _get(live, f"/series/{s['series_key']}/metrics", metric="n_calls", step="1h", **_window(6))
    assert coarse["count"] == 6
    assert sum(p["value"] for p in coarse["data"]) == sum(p["value"] for p in fine["data"]) > 0


def test_route_mix_shares_sum_to_one(live):
    s = _banded_series(live)
    body = _get(live, f"/series/{s['series_key']}/routes", dimension="response_model", step="1h", **_window(6))
    assert body["count"] >= 6
    per_hour: dict[str, float] = {}
    for row in body["data"]:
        assert row["dimension"] == "response_model"
        per_hour[row["time"]] = per_hour.get(row["time"], 0.0) + row["share"]
    assert len(per_hour) == 6 and all(abs(v - 1.0) < 1e-5 for v in per_hour.values())
    every = _get(live, f"/series/{s['series_key']}/routes", step="1h", **_window(1))
    assert {r["dimension"] for r in every["data"]} == {"region", "server_address", "deployment", "response_model",
                                                       "system_fingerprint"}  # fmt: skip


def test_metric_names_and_baselines(live):
    names = {m["name"]: m for m in _get(live, "/metrics/names")["data"]}
    assert set(ROLLUP_METRICS) <= set(names) and names["ttft_p95_ms"]["has_baseline"]
    assert names["cache_read_ratio"]["unit"] == "ratio" and not names["cache_read_ratio"]["has_baseline"]
    s = _banded_series(live)
    body = _get(live, "/baselines", series_key=s["series_key"], metric="e2e_p95_ms")
    assert body["count"] == 1
    row = body["data"][0]
    assert row["kind"] in {"seasonal", "rolling"} and row["params"]["kind"] == row["kind"] and row["grain_s"] == 300
    assert _get(live, "/baselines", limit=2)["count"] > 2


@pytest.mark.parametrize(("path", "params", "code"), [
    ("/series/{key}/metrics", {"metric": "nope"}, 422),
    ("/series/{key}/metrics", {"step": "7m"}, 422),
    ("/series/{key}/metrics", {"since": "2026-01-01T00:00:00Z", "until": "2026-10-01T00:00:00Z"}, 422),
    ("/series/{key}/metrics", {"since": "2026-10-02T00:00:00Z", "until": "2026-10-01T00:00:00Z"}, 422),
    ("/series/0000000000000000/metrics", {}, 404),
    ("/series/0000000000000000/routes", {}, 404),
    ("/series/{key}/routes", {"dimension": "color"}, 422),
    ("/calls", {"series_key": "0000000000000000"}, 404),
    ("/calls", {}, 422),
    ("/regressions", {"label": "gremlins"}, 422),
    ("/regressions/ffffffffffff", {}, 404),
])  # fmt: skip
def test_bad_requests(live, path, params, code):
    key = _banded_series(live)["series_key"]
    assert live.client.get(API + path.format(key=key), params=params).status_code == code


def test_regressions_match_the_records(live, world):
    con = duckdb.connect(str(world), read_only=True)
    try:
        expected = list_regressions(con)
    finally:
        con.close()
    body = _get(live, "/regressions")
    assert expected and body == {"data": expected, "count": len(expected)}
    label = expected[0]["label"]
    only = _get(live, "/regressions", label=label)
    assert only["count"] == sum(r["label"] == label for r in expected)
    svc = expected[0]["series"]["service"]
    assert all(r["series"]["service"] == svc for r in _get(live, "/regressions", service=svc)["data"])
    assert _get(live, "/regressions", status="open")["count"] == sum(r["status"] == "open" for r in expected)
    paged = _get(live, "/regressions", limit=1, offset=1)
    assert paged["count"] == len(expected) and paged["data"] == expected[1:2]
    late = _get(live, "/regressions", since="2026-10-02T12:00:00Z", until="2026-10-03T12:00:00Z")
    assert late["count"] == sum(r["end"] is None or r["end"] > "2026-10-02T12:00:00Z" for r in expected)


def test_regression_detail_and_feedback(live):
    first = _get(live, "/regressions")["data"][0]
    detail = _get(live, f"/regressions/{first['id'][:8]}")
    assert detail["id"] == first["id"] and detail["metrics"] and detail["feedback"] == []
    assert {k: detail[k] for k in first} == first
    url = f"{API}/regressions/{first['id']}/feedback"
    assert live.client.post(url, json={"label": "gremlins"}).status_code == 422
    assert live.client.post(url, json={"label": "cache_eviction", "reason": "queueing"}).status_code == 422
    reader = live.client.post(f"{API}/keys", json={"name": "dash", "scopes": ["read"]}).json()["key"]
    with live.as_key(reader) as client:
        assert client.get(f"{API}/regressions/{first['id']}").status_code == 200
        assert client.post(url, json={"label": "cache_eviction"}).status_code == 403
    resp = live.client.post(url, json={"label": "cache_eviction", "reason": "prompt_changed", "note": "pm-42"})
    assert resp.status_code == 201 and resp.json()["label"] == "cache_eviction"
    fb = _get(live, f"/regressions/{first['id']}")["feedback"]
    assert [(f["label"], f["reason"], f["note"]) for f in fb] == [("cache_eviction", "prompt_changed", "pm-42")]
    unknown = live.client.post(f"{API}/regressions/ffffffffffff/feedback", json={"label": "unexplained"})
    assert unknown.status_code == 404


def test_calls_window_and_cap(live, world):
    s = _banded_series(live)
    body = _get(live, "/calls", series_key=s["series_key"], limit=5, **_window(1))
    assert body["count"] == 5
    times = [c["start_time"] for c in body["data"]]
    assert times == sorted(times) and all(c["service"] == s["service"] for c in body["data"])
    capped = _get(live, "/calls", series_key=s["series_key"], limit=5000, **_window(24))
    assert capped["count"] == live.settings.max_page_size


def test_reads_need_a_key_unless_read_open(live, tmp_path_factory):
    paths = ["/series", "/metrics/names", "/baselines", "/regressions"]
    with live.as_key(None) as anon:
        assert all(anon.get(API + p).status_code == 401 for p in paths)
    with live.as_key("not-a-key") as bad:
        assert bad.get(API + "/series").status_code == 401
    with serve_world(tmp_path_factory, "read-open", read_open=True) as open_live, open_live.as_key(None) as anon:
        assert all(anon.get(API + p).status_code == 200 for p in paths)
        rid = anon.get(API + "/regressions").json()["data"][0]["id"]
        assert anon.post(f"{API}/regressions/{rid}/feedback", json={"label": "unexplained"}).status_code == 401


def test_cli_regressions_reads_from_the_server(live, capsys, monkeypatch):
    monkeypatch.setenv("SPANPRISM_API_KEY", ADMIN_KEY)
    capsys.readouterr()
    assert main(["regressions", "--json", "--url", live.url]) == 0
    assert json.loads(capsys.readouterr().out) == _get(live, "/regressions")["data"]
    monkeypatch.setenv("SPANPRISM_URL", live.url)
    assert main(["regressions", "--status", "resolved"]) == 0
    assert "regressions" in capsys.readouterr().out
    monkeypatch.setenv("SPANPRISM_API_KEY", "wrong")
    assert main(["regressions", "--json"]) == 1


def test_panel_cache_drops_answers_when_the_generation_moves(tmp_path):
    db = Database(tmp_path / "cache.duckdb")
    try:
        cache, calls = PanelCache(), []
        compute = lambda: calls.append(1) or len(calls)  # noqa: E731
        assert cache.get_or_compute(db, ("k",), compute) == 1
        assert cache.get_or_compute(db, ("k",), compute) == 1  # answered from the cache
        db.bump_generation()
        assert cache.get_or_compute(db, ("k",), compute) == 2
    finally:
        db.close()


def test_concurrent_misses_of_one_panel_share_one_computation(tmp_path):
    db = Database(tmp_path / "flight.duckdb")
    started, release, calls = threading.Event(), threading.Event(), []

    def compute() -> int:
        calls.append(1)
        started.set()
        release.wait(10)  # the other askers arrive while this one is still computing
        return len(calls)

    async def ask_many() -> list[int]:
        cache = PanelCache()
        first = asyncio.ensure_future(cache.aget_or_compute(db, ("k",), compute))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        rest = [asyncio.ensure_future(cache.aget_or_compute(db, ("k",), compute)) for _ in range(9)]
        release.set()
        return await asyncio.gather(first, *rest)

    try:
        assert asyncio.run(ask_many()) == [1] * 10 and len(calls) == 1
    finally:
        db.close()


@pytest.mark.parametrize(("at", "rounded"), [
    ("2026-10-01T10:00:00+00:00", "2026-10-01T10:00:00+00:00"),  # on a bucket edge: unchanged
    ("2026-10-01T10:00:00.5+00:00", "2026-10-01T10:05:00+00:00"),
    ("2026-10-01T10:04:59+00:00", "2026-10-01T10:05:00+00:00"),
])  # fmt: skip
def test_series_as_of_now_is_the_end_of_the_current_bucket(at: str, rounded: str) -> None:
    assert ceil_to_grain(datetime.fromisoformat(at), 300) == datetime.fromisoformat(rounded)
