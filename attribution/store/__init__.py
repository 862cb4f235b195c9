"""What attribution reads and writes in DuckDB: the one reader of ``llm_calls`` (calls.py), rollups, baselines,
episodes, regression records, panels."""
