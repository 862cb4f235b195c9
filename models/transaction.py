"""One atomic unit of work on a DuckDB connection (shared by the ingest loader and the attribution writer)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from spanprism.models.state import StateUnit


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor of its own inside BEGIN … COMMIT, rolled back on any error.

    The separate cursor keeps registered views and the transaction local to this unit of work.
    """
    cur = con.cursor()
    try:
        cur.execute("BEGIN TRANSACTION")
        yield cur
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    finally:
        cur.close()


def unit_on(con: duckdb.DuckDBPyConnection) -> StateUnit:
    """Units of work on the DuckDB file itself: the results' store when no state database is configured."""
    return lambda: transaction(con)
