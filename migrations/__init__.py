"""Alembic migrations of the DuckDB file: frozen history that never imports application code."""
