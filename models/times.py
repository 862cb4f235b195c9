"""Times as spanprism stores and shows them: timezone-aware UTC, ISO-8601 with a ``Z``.

DuckDB hands ``TIMESTAMPTZ`` values back in the session's zone and plain ``TIMESTAMP`` values naive; every reader
turns them into aware UTC here (a naive time means UTC), so no module keeps a private copy of the rule.
"""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime (a naive one is taken to be UTC); None stays None."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_z(value: datetime | None) -> str | None:
    """UTC ISO-8601 with a ``Z`` (the form regression records and the API use); None stays None."""
    aware = as_utc(value)
    return None if aware is None else aware.isoformat().replace("+00:00", "Z")
