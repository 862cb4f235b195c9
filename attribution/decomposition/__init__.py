"""Latency decomposition: how many milliseconds of a change each mechanism caused."""
