"""The seeded workload simulator and its OTLP writers; imports nothing of the product but models."""
