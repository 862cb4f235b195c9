"""Helpers shared by several test files (imported as ``support.*``: tests/ is on sys.path via conftest)."""
