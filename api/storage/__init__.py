"""The DuckDB file as the service sees it: opening and migrating it, and the server's one shared handle."""
