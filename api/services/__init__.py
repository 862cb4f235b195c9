"""Background services the app starts and stops in its lifespan: ingest writer, scheduler, lifecycle."""
