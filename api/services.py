"""Background components the app starts and stops in its lifespan (ingest writer, scheduler, alert outbox)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from api.database import Database
from api.metrics import Metrics
from api.settings import Settings


class Service(Protocol):
    """Something with a life: started after the database opens, stopped (in reverse order) before it closes."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


#: Builds a service for one app; it may also keep itself on ``app.state`` for its routers.
ServiceFactory = Callable[[Settings, Database, Metrics, object], Service]
