"""The OTLP writer's group commit: bodies still being decoded join the group being written (one transaction).

Real pieces: the service's writer thread over a real DuckDB file, bodies decoded by ``process_body`` from SDK spans.
"Being decoded" is what ``IngestService.admitted`` marks on the event loop; here the test holds it open itself.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from support.otlp_spans import genai_spans

from spanprism.api.metrics import Metrics
from spanprism.api.services.ingest import IngestService
from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database
from spanprism.ingest.otlp_http import process_body
from spanprism.ingest.records import Batch


def _batch(seed: int) -> Batch:
    body = encode_spans(genai_spans(4, seed=seed, model=f"m-group-{seed}")).SerializeToString()
    return process_body(body, source="otlp/http", content_type="application/x-protobuf", content_encoding=None,
                        limit=1 << 20, tenant_attribute=None)  # fmt: skip


def _groups(db: Database) -> list[int]:
    """Batches per write transaction (one transaction stamps all its batches with one ``started_at``)."""
    with db.read() as cur:
        rows = cur.execute("SELECT count(*) FROM ingest_batches GROUP BY started_at ORDER BY min(id)").fetchall()
    return [n for (n,) in rows]


def _service(tmp_path: Path) -> tuple[Database, IngestService]:
    db = Database(tmp_path / "writer.duckdb")
    service = IngestService(Settings(db=db.path, ingest_workers=1), db, Metrics())
    service.start()
    return db, service


def test_a_body_still_decoding_joins_the_group_being_written(tmp_path: Path) -> None:
    db, service = _service(tmp_path)
    try:
        first, second = _batch(1), _batch(2)
        # A linger far longer than the pauses below, so a loaded machine cannot end it early; releasing the
        # decoding body must end it at once (the results come back well within the 10 s timeout).
        service.linger_s = 60.0
        admitted = service.admitted()
        admitted.__enter__()  # another request is being read or decoded
        done = service.enqueue(first)
        time.sleep(0.3)
        assert not done.done()  # the writer waits for it …
        later = service.enqueue(second)
        admitted.__exit__(None, None, None)
        assert done.result(10).calls_stored == 4 and later.result(10).calls_stored == 4
        assert _groups(db) == [2]  # … and both commit in one transaction
    finally:
        service.stop()
        db.close()


def test_the_writer_waits_a_bounded_time_and_never_for_a_lone_client(tmp_path: Path) -> None:
    db, service = _service(tmp_path)
    try:
        t0 = time.monotonic()
        assert service.enqueue(_batch(3)).result(10).calls_stored == 4  # nothing else in flight: no wait
        admitted = service.admitted()
        admitted.__enter__()  # a body that never arrives (a slow client) holds the group back only LINGER_S
        stuck = threading.Timer(10, admitted.__exit__, (None, None, None))
        stuck.start()
        assert service.enqueue(_batch(4)).result(10).calls_stored == 4
        assert time.monotonic() - t0 < 5  # generous: bounded by LINGER_S, not by the slow body
        stuck.cancel()
        admitted.__exit__(None, None, None)
        assert _groups(db) == [1, 1]
    finally:
        service.stop()
        db.close()
