"""Schemathesis against the live app's OpenAPI schema: no generated request may produce a 5xx.

Every operation in the schema at run time is exercised as admin (so requests get past auth and reach the
handlers) on a server over real data, except two that would leave the test's bounds:
``POST /api/v1/jobs/attribute`` (each example runs a whole attribution pass: minutes in total) and
``POST /api/v1/alerts/destinations/{dest_id}/test`` (delivers to a generated, possibly non-loopback URL).
The alert delivery worker and the scheduler are not started for the same reasons.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from conftest import ADMIN_KEY, Live
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from support.world import serve_world

from spanprism.api.app import create_app
from spanprism.api.services.ingest import ingest_service
from spanprism.api.services.scheduler import job_runner_service
from spanprism.api.settings import Settings

EXCLUDED = [("POST", "/api/v1/jobs/attribute"), ("POST", "/api/v1/alerts/destinations/{dest_id}/test")]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    with serve_world(tmp_path_factory, "schema", services=[ingest_service, job_runner_service]) as server:
        yield server


def _schema() -> schemathesis.BaseSchema:
    # The schema of the app as built (nothing opens a database at create_app); the requests go to a live server of
    # the same app. (schemathesis' lazy `from_fixture` loader breaks on pytest 9's node ids.)
    loaded = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
    for method, path in EXCLUDED:
        loaded = loaded.exclude(method=method, path=path)
    return loaded


schema = _schema()


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])  # fmt: skip
def test_no_server_errors(case, live):
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    case.call_and_validate(base_url=live.url, headers=auth, checks=[not_a_server_error], timeout=30)
