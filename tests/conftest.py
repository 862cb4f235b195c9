"""Shared fixtures: a real spanprism server (uvicorn on 127.0.0.1, random port) over a fresh DuckDB file, and a
real PostgreSQL server (session-scoped, Debian's binaries in a temp dir) for the service state."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from google.protobuf.json_format import MessageToJson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from spanprism.api.app import create_app
from spanprism.api.server import running
from spanprism.api.settings import Settings

ADMIN_KEY = "test-admin-key-0123456789"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """One PostgreSQL server for the whole run (≈1-2 s to start); skipped when absent unless CI requires it."""
    from support.postgres import REQUIRE_ENV, PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"no /usr/lib/postgresql/*/bin/initdb but {REQUIRE_ENV} is set (apt-get install postgresql)")
        pytest.skip(f"no PostgreSQL server binaries (apt-get install postgresql); CI sets {REQUIRE_ENV}")
    server = PostgresServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: object) -> str:
    """A SQLAlchemy URL of a fresh, empty database on the shared server (one per test)."""
    return postgres_server.url()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One chDB-over-HTTP endpoint for the whole run (≈0.6 s to start); skipped without chDB unless CI requires it."""
    from support.clickhouse import REQUIRE_ENV, serve_clickhouse

    try:
        import chdb  # noqa: F401
    except ImportError:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"chdb is not installed but {REQUIRE_ENV} is set (pip install -e '.[test]')")
        pytest.skip(f"chdb is not installed (pip install -e '.[test]'); CI sets {REQUIRE_ENV}")
    with serve_clickhouse(str(tmp_path_factory.mktemp("chdb"))) as server:
        yield server


@pytest.fixture
def clickhouse_url(clickhouse_server: object) -> str:
    """A ``SPANPRISM_CLICKHOUSE_URL`` of a fresh, empty database on the shared endpoint (one per test)."""
    return clickhouse_server.new_database()  # type: ignore[attr-defined]


#: A small simulated export (≈ 20k calls of 4 series over 2 days): enough for a few regressions of several causes,
#: seconds to detect. Shared by the shared-state tests (results in Postgres, sharded workers), simulated once.
SMALL_SIM = ["--seed", "31", "--days", "2", "--series", "4", "--rate-min", "0.02", "--rate-max", "0.06"]


@pytest.fixture(scope="session")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The :data:`SMALL_SIM` export's folder (simulated once per session; read-only for the tests)."""
    from spanprism.api.cli import main

    out = tmp_path_factory.mktemp("small-sim") / "sim"
    assert main(["--db", str(out.parent / "sim.duckdb"), "simulate", "--out", str(out), *SMALL_SIM]) == 0
    return out


@dataclass
class Live:
    """A running server: its base URL, settings, and a client authenticated as admin."""

    url: str
    settings: Settings
    app: object
    client: httpx.Client

    def as_key(self, key: str | None) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@contextmanager
def live_server(tmp_path: Path, services: list | None = None, **overrides: object) -> Iterator[Live]:
    """Start the real app on a free loopback port; ``services=None`` keeps the default background services."""
    settings = Settings(db=tmp_path / "server.duckdb", admin_key=ADMIN_KEY, **overrides)
    app = create_app(settings, services=services)
    with running(app) as url, httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"},
                                           timeout=30) as client:  # fmt: skip
        yield Live(url, settings, app, client)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Live]:
    """A live server with the default services."""
    with live_server(tmp_path) as live:
        yield live


@pytest.fixture
def make_server(tmp_path: Path) -> Callable[..., object]:
    """Build a live server with custom settings: ``with make_server(read_open=True) as live: ...``."""
    return lambda **overrides: live_server(tmp_path, **overrides)


@pytest.fixture
def legacy(server: Live) -> dict[str, bytes]:
    """Four records quarantined as an older spanprism would have, on the live ``server``."""
    from support.otlp_spans import genai_spans  # the support modules import Live from here
    from support.uploads import _quarantine

    spans = genai_spans(4, seed=3, model="m-redrive", service="redrive-svc")
    request = encode_spans(spans)
    span_json = orjson.dumps(json.loads(MessageToJson(request))["resourceSpans"][0]["scopeSpans"][0]["spans"][0])
    records = {
        "span-json": ("line 3 span 1", span_json),  # one span of a JSON line
        "line": ("line 7", MessageToJson(encode_spans(spans[1:2]), indent=None).encode()),  # a whole line
        "span-proto": ("message span 2", request.resource_spans[0].scope_spans[0].spans[2].SerializeToString()),
        "broken": ("line 9", b'{"resourceSpans": ['),
    }
    for record_id, (location, raw) in records.items():
        _quarantine(server, record_id, location, "an old bug", raw)
    return {record_id: raw for record_id, (_, raw) in records.items()}
