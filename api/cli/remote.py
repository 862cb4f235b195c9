"""Where the CLI sends its work when the DuckDB file is not its to open: ``SPANPRISM_URL`` or the local server.

DuckDB allows one writing process; while ``spanprism serve`` holds the file, the CLI goes through its REST API
instead of failing on the lock. :func:`open_backend` makes that choice once per command; :class:`RemoteBackend` is
the :class:`~spanprism.api.cli.backend.Backend` over ``/api/v1`` (the CLI's key as bearer). A pass is queued on the
server's job runner and polled, so the CLI and the scheduler never run two passes at once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import datetime
from typing import Any

import httpx

from spanprism.api.cli.backend import Backend, BackendError, Progress
from spanprism.api.cli.local import LocalBackend
from spanprism.api.settings import Settings
from spanprism.api.storage import connect as db
from spanprism.ingest.pipeline import IngestSummary, expand_sources

POLL_S = 0.5
_OPEN = ("queued", "running")
#: An upload waits for the server to ingest the whole file before it answers: no read timeout.
_UPLOAD_TIMEOUT = httpx.Timeout(30.0, read=None)


def local_server(settings: Settings) -> str | None:
    """The URL of a spanprism server answering ``/healthz`` on the configured host and port, if any."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}"
    try:
        httpx.get(f"{url}/healthz", timeout=2.0).raise_for_status()
    except httpx.HTTPError:
        return None
    return url


def open_backend(settings: Settings, url: str | None = None) -> Backend:
    """The server at ``url``/``settings.url`` when given; else this process on the file; else, when the file is
    locked, the server answering on the configured host and port. Raises ``DatabaseLockedError`` when the file is
    locked and no server answers (the lock belongs to something else)."""
    url = url or settings.url
    if url:
        return RemoteBackend(url, settings.api_key)
    try:
        return LocalBackend(settings)
    except db.DatabaseLockedError:
        url = local_server(settings)
        if url is None:
            raise
        return RemoteBackend(url, settings.api_key, held_by_server=True)


def _stream(item: str, progress: Progress | None) -> Iterator[bytes]:
    """A file (or stdin) in 1 MiB pieces: uploads are streamed, never read whole."""
    with nullcontext(sys.stdin.buffer) if item == "-" else open(item, "rb") as f:
        while piece := f.read(1 << 20):
            if progress is not None:
                progress(len(piece))
            yield piece


class RemoteBackend(Backend):
    """The server's REST API at ``url``; every failure it reports (or a server that does not answer) is a
    :class:`BackendError` saying what to fix."""

    def __init__(self, url: str, api_key: str | None, *, held_by_server: bool = False) -> None:
        self.location = url.rstrip("/")
        self.held_by_server = held_by_server
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=f"{self.location}/api/v1", headers=headers, timeout=60)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, *, missing: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """The answer's JSON (``{}`` for 204, None for a status in ``missing``); BackendError for other failures."""
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BackendError(f"{self.location}: {exc}") from exc
        if resp.status_code in missing:
            return None
        if resp.status_code in (401, 403):
            raise BackendError(f"{resp.request.url} answered {resp.status_code}: set SPANPRISM_API_KEY to an admin key")
        if resp.status_code >= 400:
            raise BackendError(f"{resp.request.url} answered {resp.status_code}: {resp.text[:300]}")
        return {} if resp.status_code == 204 else resp.json()

    def ingest(self, paths: list[str], *, workers: int, progress: Progress | None = None) -> IngestSummary:
        """Each input to ``POST /ingest`` (the server ingests with its own workers); the summaries added up."""
        inputs, errors = expand_sources(paths)
        summary = IngestSummary(errors=errors)
        for item in inputs:
            name = "stdin" if item == "-" else item
            try:
                got = self._call("POST", "/ingest", params={"filename": name}, content=_stream(item, progress),
                                 timeout=_UPLOAD_TIMEOUT)  # fmt: skip
            except (OSError, BackendError) as exc:  # one input failing does not stop the others
                summary.errors.append(f"{name}: {exc}")
                continue
            for key in ("spans_seen", "calls_stored", "duplicates", "non_llm_skipped", "quarantined"):
                setattr(summary, key, getattr(summary, key) + got[key])
            summary.conventions.update(got["conventions"])
            summary.batches.extend([f"{name} (server)"] * got["batches"])  # the API returns the count only
            summary.errors.extend(got["errors"])
        return summary

    def run_pass(self, kind: str, *, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind}
        body.update({k: v.isoformat() for k, v in (("since", since), ("until", until)) if v is not None})
        record = self._call("POST", "/jobs/attribute", json=body)
        while record["status"] in _OPEN:
            time.sleep(POLL_S)
            record = self._call("GET", f"/jobs/{record['id']}")
        return record

    def list_runs(self, *, kind: str | None, status: str | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        query = {k: v for k, v in (("kind", kind), ("status", status)) if v}
        body = self._call("GET", "/jobs", params={**query, "limit": limit})
        return body["data"], body["count"]

    def regressions(self, *, label: str | None, status: str | None, since: datetime | None,
                    until: datetime | None, withheld: bool = False) -> list[dict[str, Any]]:  # fmt: skip
        """Every matching record, page by page."""
        query: dict[str, Any] = {k: v for k, v in (("label", label), ("status", status)) if v}
        if withheld:
            query["withheld"] = "true"
        query.update({k: v.isoformat() for k, v in (("since", since), ("until", until)) if v})
        records: list[dict[str, Any]] = []
        while True:
            body = self._call("GET", "/regressions", params={**query, "offset": len(records)})
            records += body["data"]
            if not body["data"] or len(records) >= body["count"]:
                return records

    def regression(self, ref: str) -> dict[str, Any] | None:
        # 422: a reference shorter than the API's minimum prefix, which matches no single regression either.
        return self._call("GET", f"/regressions/{ref}", missing=(404, 422))

    def label(self, ref: str, *, label: str, reason: str | None, note: str | None) -> str | None:
        record = self.regression(ref)  # the full id, which the feedback answer does not carry
        if record is None:
            return None
        body = {"label": label, "reason": reason, "note": note}
        self._call("POST", f"/regressions/{record['id']}/feedback", json=body)
        return record["id"]

    def create_key(self, *, name: str, scopes: frozenset[str]) -> dict[str, Any]:
        return self._call("POST", "/keys", json={"name": name, "scopes": sorted(scopes)})

    def list_keys(self) -> list[dict[str, Any]]:
        return self._call("GET", "/keys")["data"]

    def revoke_key(self, key_id: str) -> bool:
        return self._call("DELETE", f"/keys/{key_id}", missing=(404,)) is not None

    def alert_config(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return self._call("GET", "/alerts/destinations")["data"], self._call("GET", "/alerts/rules")["data"]

    def outbox(self, *, status: str | None, limit: int) -> list[dict[str, Any]]:
        params = {"limit": limit} | ({"status": status} if status else {})
        return self._call("GET", "/alerts/outbox", params=params)["data"]

    def test_destination(self, ref: str) -> dict[str, Any] | None:
        return self._call("POST", f"/alerts/destinations/{ref}/test", missing=(404,))

    def deliver_alerts(self) -> tuple[int, dict[str, int]] | None:
        return None  # the server enqueues after every pass and delivers on its own outbox poll
