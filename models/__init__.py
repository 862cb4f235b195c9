"""The data model: SQLAlchemy tables and the canonical Arrow schema of ``llm_calls``; imports nothing of ours."""
