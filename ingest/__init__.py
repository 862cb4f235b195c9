"""Ingest: decode span exports (bytes → records), normalize conventions to the canonical row, load (the one writer)."""
