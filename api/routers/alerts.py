"""Alert destinations, rules and the delivery outbox (admin). Secrets go in, never come out (masked)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from spanprism.api.alerts import destinations as dst
from spanprism.api.alerts import rules as rl
from spanprism.api.alerts.delivery import install_log_redaction, prepare, send
from spanprism.api.alerts.kinds import kind_names, secret_help
from spanprism.api.alerts.outbox import STATUSES, list_outbox
from spanprism.api.alerts.render import SAMPLE_RECORD, Links
from spanprism.api.deps import AdminAuth, DbDep, SettingsDep
from spanprism.attribution.vocabulary import Label

router = APIRouter(prefix="/alerts", tags=["alerts"])

Kind = Literal[kind_names()]  # type: ignore[valid-type]


class DestinationCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: Kind
    options: dict[str, Any] = Field(default_factory=dict, description="non-secret settings, e.g. trace_url_template")
    secret: dict[str, str] = Field(description=secret_help())


class DestinationUpdate(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    options: dict[str, Any] | None = None
    secret: dict[str, str] | None = Field(None, description="replaces the whole secret when given")


class DestinationPublic(BaseModel):
    id: str
    name: str
    kind: str
    options: dict[str, Any]
    secret: dict[str, str] = Field(description="masked, e.g. https://hooks.slack.com/…/****")
    has_secret: bool
    origin: str
    created_at: datetime | None
    updated_at: datetime | None


class RuleCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    destination_id: str
    series: dict[str, str] = Field(default_factory=dict, description="field -> fnmatch glob, e.g. service: chat-*")
    labels: list[Label] = Field(default_factory=list, description="empty = every label")
    min_change_pct: float = Field(0.0, ge=0)
    min_confidence: float = Field(0.0, ge=0, le=1)
    enabled: bool = True


class RuleUpdate(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    destination_id: str | None = None
    series: dict[str, str] | None = None
    labels: list[Label] | None = None
    min_change_pct: float | None = Field(None, ge=0)
    min_confidence: float | None = Field(None, ge=0, le=1)
    enabled: bool | None = None


class RulePublic(RuleCreate):
    id: str
    origin: str
    created_at: datetime | None
    updated_at: datetime | None


class AlertRows(BaseModel):
    """A list of alert destinations, rules or outbox rows, as ``{data, count}`` like every list of the API."""

    data: list[dict[str, Any]]
    count: int


def _invalid(exc: Exception) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


def _editable(origin: str, what: str) -> None:
    if origin == "config":
        raise HTTPException(status.HTTP_409_CONFLICT, f"this {what} is managed by the config file (origin=config)")


@router.post("/destinations", status_code=status.HTTP_201_CREATED, response_model=DestinationPublic)
def create_destination(body: DestinationCreate, database: DbDep, _: AdminAuth) -> dict[str, Any]:
    with database.state.write() as cur:
        if dst.get_destination(cur, body.name) is not None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"a destination named {body.name!r} exists")
        try:
            dest_id = dst.insert_destination(cur, name=body.name, kind=body.kind, options=body.options,
                                             secret=body.secret)  # fmt: skip
        except dst.DestinationError as exc:
            raise _invalid(exc) from exc
        return dst.get_destination(cur, dest_id).public()  # type: ignore[union-attr]


@router.get("/destinations", response_model=AlertRows)
def list_destinations(database: DbDep, _: AdminAuth) -> AlertRows:
    with database.state.read() as cur:
        rows = [DestinationPublic(**d.public()).model_dump() for d in dst.list_destinations(cur)]
    return AlertRows(data=rows, count=len(rows))


def _destination(cur: Any, dest_id: str) -> dst.Destination:
    found = dst.get_destination(cur, dest_id)
    if found is None or found.id != dest_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no destination {dest_id}")
    return found


@router.get("/destinations/{dest_id}", response_model=DestinationPublic)
def get_destination(dest_id: str, database: DbDep, _: AdminAuth) -> dict[str, Any]:
    with database.state.read() as cur:
        return _destination(cur, dest_id).public()


@router.patch("/destinations/{dest_id}", response_model=DestinationPublic)
def update_destination(dest_id: str, body: DestinationUpdate, database: DbDep, _: AdminAuth) -> dict[str, Any]:
    with database.state.write() as cur:
        _editable(_destination(cur, dest_id).origin, "destination")
        try:
            dst.update_destination(cur, dest_id, name=body.name, options=body.options, secret=body.secret)
        except dst.DestinationError as exc:
            raise _invalid(exc) from exc
        return _destination(cur, dest_id).public()


@router.delete("/destinations/{dest_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_destination(dest_id: str, database: DbDep, _: AdminAuth) -> None:
    with database.state.write() as cur:
        _editable(_destination(cur, dest_id).origin, "destination")
        if any(r.destination_id == dest_id for r in rl.list_rules(cur)):
            raise HTTPException(status.HTTP_409_CONFLICT, "rules still send to this destination; delete them first")
        dst.delete_destination(cur, dest_id)


@router.post("/destinations/{dest_id}/test")
def test_destination(dest_id: str, database: DbDep, settings: SettingsDep, _: AdminAuth) -> dict[str, Any]:
    """Send a sample regression now (not through the outbox); answers what the receiver said."""
    try:
        return send_sample(database, settings, dest_id)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


def send_sample(database: Any, settings: Any, ref: str) -> dict[str, Any]:
    """Deliver :data:`SAMPLE_RECORD` to the destination ``ref`` (id or name) once (shared with the CLI)."""
    import httpx

    with database.state.read() as cur:
        found = dst.get_destination(cur, ref)
        dest = None if found is None else dst.load_destination(cur, found.id)
    if dest is None:
        raise LookupError(f"no destination {ref}")
    install_log_redaction()
    links = Links(settings.public_url, settings.trace_url_template)
    with httpx.Client(timeout=settings.alert_timeout_s) as client:
        outcome = send(client, prepare(dest, SAMPLE_RECORD, "trigger", "test", links), dest)
    return {"ok": outcome.status == "sent", "status_code": outcome.status_code, "error": outcome.error}


@router.post("/rules", status_code=status.HTTP_201_CREATED, response_model=RulePublic)
def create_rule(body: RuleCreate, database: DbDep, _: AdminAuth) -> dict[str, Any]:
    with database.state.write() as cur:
        try:
            rule_id = rl.insert_rule(cur, rl.Rule(id="", **body.model_dump()))
        except rl.RuleError as exc:
            raise _invalid(exc) from exc
        return rl.get_rule(cur, rule_id).public()  # type: ignore[union-attr]


@router.get("/rules", response_model=AlertRows)
def list_rules(database: DbDep, _: AdminAuth) -> AlertRows:
    with database.state.read() as cur:
        rows = [r.public() for r in rl.list_rules(cur)]
    return AlertRows(data=rows, count=len(rows))


def _rule(cur: Any, rule_id: str) -> rl.Rule:
    found = rl.get_rule(cur, rule_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rule {rule_id}")
    return found


@router.get("/rules/{rule_id}", response_model=RulePublic)
def get_rule(rule_id: str, database: DbDep, _: AdminAuth) -> dict[str, Any]:
    with database.state.read() as cur:
        return _rule(cur, rule_id).public()


@router.patch("/rules/{rule_id}", response_model=RulePublic)
def update_rule(rule_id: str, body: RuleUpdate, database: DbDep, _: AdminAuth) -> dict[str, Any]:
    with database.state.write() as cur:
        _editable(_rule(cur, rule_id).origin, "rule")
        try:
            rule = rl.update_rule(cur, rule_id, body.model_dump(exclude_none=True))
        except rl.RuleError as exc:
            raise _invalid(exc) from exc
        return rule.public()  # type: ignore[union-attr]


@router.delete("/rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_rule(rule_id: str, database: DbDep, _: AdminAuth) -> None:
    with database.state.write() as cur:
        _editable(_rule(cur, rule_id).origin, "rule")
        rl.delete_rule(cur, rule_id)


@router.get("/outbox", response_model=AlertRows)
def outbox(database: DbDep, settings: SettingsDep, _: AdminAuth,
           status_: Literal[STATUSES] | None = Query(None, alias="status"),  # type: ignore[valid-type]
           regression_id: str | None = None, limit: int = Query(100, ge=1)) -> AlertRows:  # fmt: skip
    """Deliveries (newest first) with their status, attempts, next attempt and last error; no payloads."""
    with database.state.read() as cur:
        rows = list_outbox(cur, status=status_, regression_id=regression_id,
                           limit=min(limit, settings.max_page_size))  # fmt: skip
    return AlertRows(data=rows, count=len(rows))
