"""Where ``llm_calls`` lives for this process, decided at the edge from ``SPANPRISM_CLICKHOUSE_URL``.

Unset: the DuckDB file (nothing to do). Set: a ``clickhouse-connect`` client on that database is opened, its tables
created when missing, and bound for the writer and the reader (``models/clickhouse.py``) until the block ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from spanprism.models import clickhouse


@contextmanager
def calls_engine(url: str | None) -> Iterator[clickhouse.ClickHouseStore | None]:
    """Bind the ClickHouse store at ``url`` (if any) for the duration of the block; yields it (None: DuckDB)."""
    current = clickhouse.bound()
    if not url or (current is not None and current.url == url):  # DuckDB, or already bound by an outer edge
        yield current
        return
    store = clickhouse.connect(url)
    previous = clickhouse.bind(store)
    try:
        yield store
    finally:
        clickhouse.bind(previous)
        store.close()
