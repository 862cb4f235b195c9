"""Alembic revision scripts, one per schema step; never edited once released."""
