"""What attribution reads and writes in DuckDB: rollups, baselines, episodes, regression records, panels."""
