"""The service edge: FastAPI app, OTLP receiver, scheduler wiring, alert delivery, CLI and settings."""
