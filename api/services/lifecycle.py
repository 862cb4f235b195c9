"""Background components the app starts and stops in its lifespan (ingest writer, scheduler, alert outbox)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from spanprism.api.metrics import Metrics
from spanprism.api.settings import Settings
from spanprism.api.storage.database import Database


class Service(Protocol):
    """Something with a life: started after the database opens, stopped (in reverse order) before it closes."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


#: Builds a service for one app; it may also keep itself on ``app.state`` for its routers.
ServiceFactory = Callable[[Settings, Database, Metrics, object], Service]
