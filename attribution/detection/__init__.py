"""Regression detection: per-series episode tests over rollups (CUSUM state machine, episodes)."""
