"""API keys (admin): create (the key is shown once), list (never the key or its hash), revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from spanprism.api.deps import AdminAuth, DbDep, principal_cache
from spanprism.api.security import create_key, list_keys, revoke_key

router = APIRouter(prefix="/keys", tags=["keys"])

Scope = Literal["ingest", "read", "admin"]


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1)


class KeyPublic(BaseModel):
    id: str
    name: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class KeyCreated(KeyPublic):
    key: str = Field(description="The bearer key. Shown only in this response.")


class KeysPublic(BaseModel):
    data: list[KeyPublic]
    count: int


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create(body: KeyCreate, database: DbDep, _: AdminAuth) -> KeyCreated:
    with database.state.write() as cur:
        key_id, plain = create_key(cur, name=body.name, scopes=frozenset(body.scopes))
        row = next(k for k in list_keys(cur) if k["id"] == key_id)
    return KeyCreated(**row, key=plain)


@router.get("", response_model=KeysPublic)
def index(database: DbDep, _: AdminAuth) -> KeysPublic:
    with database.state.read() as cur:
        rows = list_keys(cur)
    return KeysPublic(data=[KeyPublic(**r) for r in rows], count=len(rows))


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses={404: {"description": "no such key"}})
def revoke(key_id: str, request: Request, database: DbDep, _: AdminAuth) -> None:
    with database.state.write() as cur:
        if not revoke_key(cur, key_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no active key {key_id}")
    principal_cache(request).clear()  # the revoked key must stop working now, not when its cache entry ages out
