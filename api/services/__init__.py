"""Background services the app starts and stops in its lifespan: ingest writer, scheduler, lifecycle; and the loop of
``spanprism worker`` (``shard_worker``), which runs outside the app."""
