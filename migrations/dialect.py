"""Alembic's implementation for the ``duckdb`` dialect, registered on import, and which tables a dialect holds.

Alembic looks an implementation up by dialect name for every migration context, not only inside ``env.py``: the
app's ``current_revision`` (``spanprism db current``, ``/readyz``) needs it as much as ``upgrade`` does, so it lives
here where both import it.

One history serves two roles. The DuckDB file holds everything (calls, rollups and the service state); a
PostgreSQL database (``SPANPRISM_STATE_URL``) holds only the service state, so the data tables' steps are skipped
there (:func:`holds_data`) instead of leaving empty ``llm_calls``/rollup tables nobody reads.
"""

from __future__ import annotations

from alembic import op
from alembic.ddl.impl import DefaultImpl

#: Dialects that store the span data (``llm_calls``, rollups, ingest batches); any other is a state-only store.
DATA_DIALECTS = frozenset({"duckdb"})


class AlembicDuckDBImpl(DefaultImpl):
    """Teach Alembic the duckdb dialect name (it behaves like PostgreSQL for DDL)."""

    __dialect__ = "duckdb"
    transactional_ddl = True


def holds_data() -> bool:
    """True when the database being migrated keeps the span data (call only inside a migration step)."""
    return op.get_bind().dialect.name in DATA_DIALECTS
