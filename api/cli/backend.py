"""What a CLI command asks of the place its work runs: this process on the DuckDB file, or the server that owns it.

DuckDB allows one writing process: while ``spanprism serve`` holds the file, the CLI goes through the server's REST
API instead of failing on the lock. :class:`Backend` is the one contract both sides implement —
:class:`~spanprism.api.cli.local.LocalBackend` calls the product functions the routers call, and
:class:`~spanprism.api.cli.remote.RemoteBackend` calls the routers — and
:func:`~spanprism.api.cli.remote.open_backend` picks one. Each command calls its backend once and formats the
answer with code shared by both sides.

Answers are JSON-ready values shaped as the REST API returns them (ISO-8601 times, the API's field names), so a
command prints the same text and JSON whichever side answered. "Not found" is an answer (``None``/``False``), not an
error, because the CLI words it itself; a failure the user must fix (the server refused the key, did not answer)
raises :class:`BackendError`, which ``main`` prints and turns into exit code 1.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

from spanprism.ingest.pipeline import IngestSummary

Progress = Callable[[int], None]


class BackendError(RuntimeError):
    """The backend could not do what was asked (the message says what to fix)."""


class Backend(ABC):
    """The CLI's work, done on the file here or through a server's ``/api/v1`` (see the module docstring)."""

    #: Where the work runs: the DuckDB file's path or the server's URL (for messages).
    location: str
    #: True when the file was locked and a server answering on the configured host and port was chosen.
    held_by_server: bool = False

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release the file or the HTTP connection (idempotent)."""

    @abstractmethod
    def ingest(self, paths: list[str], *, workers: int, progress: Progress | None = None) -> IngestSummary:
        """Ingest files, folders, globs or ``-`` (stdin); ``progress`` is called with the bytes read as they are."""

    @abstractmethod
    def run_pass(self, kind: str, *, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
        """Run one attribution pass (``manual``, ``incremental``, ``nightly``) to its end; the final run record."""

    @abstractmethod
    def list_runs(self, *, kind: str | None, status: str | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Attribution runs, newest first: ``(page, total matching)``."""

    @abstractmethod
    def regressions(self, *, label: str | None, status: str | None, since: datetime | None,
                    until: datetime | None, withheld: bool = False) -> list[dict[str, Any]]:  # fmt: skip
        """Every matching DESIGN.md regression record, newest first (``withheld``: those the label pass withheld
        too)."""

    @abstractmethod
    def regression(self, ref: str) -> dict[str, Any] | None:
        """One regression (id or a unique prefix) with metrics and feedback, or None when none matches alone."""

    @abstractmethod
    def label(self, ref: str, *, label: str, reason: str | None, note: str | None) -> str | None:
        """Record post-mortem feedback on a regression; its full id, or None when ``ref`` matches none alone."""

    @abstractmethod
    def create_key(self, *, name: str, scopes: frozenset[str]) -> dict[str, Any]:
        """A new API key: its public fields plus ``key``, the plain bearer key (shown once)."""

    @abstractmethod
    def list_keys(self) -> list[dict[str, Any]]:
        """Every API key without its secret, oldest first."""

    @abstractmethod
    def revoke_key(self, key_id: str) -> bool:
        """Revoke an active key; False when there is no active key with that id."""

    @abstractmethod
    def alert_config(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Alert destinations (secrets masked) and rules."""

    @abstractmethod
    def outbox(self, *, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Alert deliveries, newest first, without payloads."""

    @abstractmethod
    def test_destination(self, ref: str) -> dict[str, Any] | None:
        """Send a sample regression to a destination (id or name): ``{ok, status_code, error}``; None if unknown."""

    @abstractmethod
    def deliver_alerts(self) -> tuple[int, dict[str, int]] | None:
        """Enqueue alerts for new/resolved regressions and deliver what is due: ``(queued, counts by outcome)``.

        None when the server delivers them itself (it enqueues after every pass and polls the outbox)."""
