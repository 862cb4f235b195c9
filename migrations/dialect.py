"""Alembic's implementation for the ``duckdb`` dialect, registered on import.

Alembic looks an implementation up by dialect name for every migration context, not only inside ``env.py``: the
app's ``current_revision`` (``spanprism db current``, ``/readyz``) needs it as much as ``upgrade`` does, so it lives
here where both import it.
"""

from __future__ import annotations

from alembic.ddl.impl import DefaultImpl


class AlembicDuckDBImpl(DefaultImpl):
    """Teach Alembic the duckdb dialect name (it behaves like PostgreSQL for DDL)."""

    __dialect__ = "duckdb"
    transactional_ddl = True
