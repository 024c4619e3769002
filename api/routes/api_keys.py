"""`/api/v1/api-keys`: an organization's keys, for admins. The key itself is shown once."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field, model_validator

from api.errors import not_found
from api.pagination import ListQuery, Page, fetch_page
from api.routing import Call, Router
from api.worker_credentials import require_mint_budget
from controlplane.tenancy import KEY_COLUMNS, KeyRole, UnknownQueue, create_key, revoke_key

router = Router("api-keys")


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: KeyRole = "member"
    worker_queue_id: uuid.UUID | None = Field(
        None, description="For role `worker` (required there): the queue it may start workers on"
    )

    @model_validator(mode="after")
    def queue_for_workers(self) -> ApiKeyCreate:
        if self.role == "worker" and self.worker_queue_id is None:
            raise ValueError("a worker key needs worker_queue_id")
        if self.role != "worker" and self.worker_queue_id is not None:
            raise ValueError("only a worker key takes worker_queue_id")
        return self


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    name: str
    prefix: str
    role: KeyRole
    worker_queue_id: uuid.UUID | None
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret; shown only in this response")


class ApiKeyRevoked(BaseModel):
    id: uuid.UUID
    deleted: bool
    revoked_at: datetime


@router.post("/api/v1/api-keys", status=201, role="admin", carries_secret=True)
async def create_api_key(call: Call, body: ApiKeyCreate) -> ApiKeyCreated:
    """Create a key; its secret is in this response only (a replay of the request with the same
    Idempotency-Key does not show it again)."""
    if body.role == "worker":
        await require_mint_budget(call)
    try:
        new = await create_key(
            call.db,
            call.org,
            role=body.role,
            name=body.name,
            created_by=call.principal.actor,
            worker_queue_id=body.worker_queue_id,
        )
    except UnknownQueue:
        raise not_found("Worker queue", body.worker_queue_id) from None
    return ApiKeyCreated(
        id=new.id,
        organization_id=new.organization_id,
        name=new.name,
        prefix=new.prefix,
        role=new.role,
        worker_queue_id=new.worker_queue_id,
        created_at=new.created_at,
        created_by=call.principal.actor,
        revoked_at=None,
        key=new.key,
    )


@router.get("/api/v1/api-keys", role="admin")
async def list_api_keys(call: Call, query: ListQuery) -> Page[ApiKeyOut]:
    """The organization's keys, by prefix; revoked ones included with their time."""
    rows, total = await fetch_page(
        call.db,
        table="api_keys",
        columns=KEY_COLUMNS,
        where="organization_id = $1",
        args=[call.org],
        query=query,
    )
    items = [ApiKeyOut.model_validate(dict(row)) for row in rows]
    return Page[ApiKeyOut](items=items, total=total, limit=query.limit, offset=query.start)


@router.delete("/api/v1/api-keys/{key_id}", role="admin")
async def revoke_api_key(call: Call) -> ApiKeyRevoked:
    """Revoke a key; it stops working at once (other API processes: within 5 s).

    Other API processes drop it once their cached entry is `AUTH_CACHE_SECONDS` old."""
    key_id = call.path_uuid("key_id", "API key")
    row = await revoke_key(call.db, call.org, key_id)
    if row is None:
        raise not_found("API key", key_id)
    call.state.credentials.forget(lambda principal: principal.api_key_id == key_id)
    return ApiKeyRevoked(id=row["id"], deleted=True, revoked_at=row["revoked_at"])
