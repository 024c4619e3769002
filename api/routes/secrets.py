"""`/api/v1/secrets` (reference §3.12): our own vault instead of Kubiya's platform proxy.

Values go in (POST, PATCH) and come out only through `GET /secrets/value/{name}`, to admin keys
and to the worker token of an execution whose resolved environment lists the secret; every
value read is recorded in the access log. Writes need an admin key: a secret is an
organization-wide credential, and changing it changes what every agent that uses it holds.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from api.access import running_execution_for_worker, vault_of
from api.errors import ApiError, not_found
from api.pagination import ListQuery, Page, fetch_page
from api.routing import Call, Router
from api.schemas import PatchBody
from controlplane.db import conflict_on_duplicate, patch_assignments
from controlplane.environments import resolve_for_execution
from controlplane.vault import NAME_PATTERN, Reader, reveal, valid_name

router = Router("secrets")

COLUMNS = (
    "id, organization_id, name, description, key_version, created_by, updated_by, "
    "created_at, updated_at"
)
NAME_DOC = "An environment-variable name: letters, digits and '_', not starting with a digit"
MAX_VALUE_CHARS = 64 * 1024


class SecretCreate(BaseModel):
    name: str = Field(min_length=1, max_length=255, pattern=NAME_PATTERN, description=NAME_DOC)
    value: str = Field(min_length=1, max_length=MAX_VALUE_CHARS, description="Stored encrypted")
    description: str | None = Field(None, max_length=2000)


class SecretUpdate(PatchBody):
    required_if_sent = ("value",)

    value: str | None = Field(None, min_length=1, max_length=MAX_VALUE_CHARS)
    description: str | None = Field(None, max_length=2000)


class SecretOut(BaseModel):
    """A secret's metadata; the value is never part of it."""

    id: uuid.UUID
    organization_id: str
    name: str
    description: str | None
    key_version: int
    created_by: str | None
    updated_by: str | None
    created_at: datetime
    updated_at: datetime


class SecretDeleted(BaseModel):
    id: uuid.UUID
    name: str
    deleted: bool = True


class SecretValue(BaseModel):
    name: str
    value: str


class ValueQuery(BaseModel):
    execution_id: str | None = Field(
        None, description="Worker tokens: the execution (on your queue) that needs the secret"
    )


class AccessLogQuery(ListQuery):
    secret_name: str | None = None
    execution_id: uuid.UUID | None = None


class AccessLogEntry(BaseModel):
    id: int
    secret_name: str
    accessor: str
    execution_id: uuid.UUID | None
    purpose: str
    at: datetime


def _name(call: Call) -> str:
    """A path name that cannot be a secret's names nothing: 404, like a missing one."""
    name = call.path["name"]
    if not valid_name(name):
        raise not_found("Secret", name)
    return name


@router.post("/api/v1/secrets", status=201, role="admin")
async def create_secret(call: Call, body: SecretCreate) -> SecretOut:
    """Store a secret (encrypted); its name is unique in the organization."""
    sealed = vault_of(call).seal(call.org, body.name, body.value)
    with conflict_on_duplicate(f"A secret named '{body.name}' exists"):
        row = await call.db.fetchrow(
            "INSERT INTO secrets (id, organization_id, name, description, ciphertext, nonce, "
            "key_version, created_by, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) "
            f"RETURNING {COLUMNS}",
            uuid.uuid4(),
            call.org,
            body.name,
            body.description,
            sealed.ciphertext,
            sealed.nonce,
            sealed.key_version,
            call.principal.actor,
        )
    assert row is not None
    return SecretOut.model_validate(dict(row))


@router.get("/api/v1/secrets")
async def list_secrets(call: Call, query: ListQuery) -> Page[SecretOut]:
    """The organization's secrets by name: metadata only, never values."""
    rows, total = await fetch_page(
        call.db,
        table="secrets",
        columns=COLUMNS,
        where="organization_id = $1",
        args=[call.org],
        query=query,
        order="name, id",
    )
    items = [SecretOut.model_validate(dict(row)) for row in rows]
    return Page[SecretOut](items=items, total=total, limit=query.limit, offset=query.start)


@router.get("/api/v1/secrets/access-log", role="admin")
async def access_log(call: Call, query: AccessLogQuery) -> Page[AccessLogEntry]:
    """Every value read, newest first: who, for which execution, why."""
    rows, total = await fetch_page(
        call.db,
        table="secret_access_log",
        columns="id, secret_name, accessor, execution_id, purpose, at",
        where="organization_id = $1",
        args=[call.org],
        query=query,
        order="at DESC, id DESC",
        filters={"secret_name": query.secret_name, "execution_id": query.execution_id},
    )
    items = [AccessLogEntry.model_validate(dict(row)) for row in rows]
    return Page[AccessLogEntry](items=items, total=total, limit=query.limit, offset=query.start)


@router.get("/api/v1/secrets/value/{name}", role="admin_or_worker_token")
async def secret_value(call: Call, query: ValueQuery) -> SecretValue:
    """A secret's value, audited. Admin keys; or a worker token with `?execution_id=` of an
    execution on its queue whose resolved environment lists the secret."""
    name = _name(call)
    sealed_with = vault_of(call)
    execution_id: uuid.UUID | None = None
    purpose = "admin_read"
    if call.principal.is_worker_token:
        execution = await running_execution_for_worker(call, query.execution_id)
        execution_id = execution["id"]
        purpose = "worker_read"
        resolved = await resolve_for_execution(call.db, call.org, execution_id)
        if name not in resolved.all_secret_names():
            raise ApiError(403, f"Execution '{execution_id}' does not reference secret '{name}'")
    reader = Reader(call.principal.actor, purpose, execution_id)
    async with call.db.acquire() as conn, conn.transaction():
        values = await reveal(conn, sealed_with, call.org, [name], reader)
    if name not in values:
        raise not_found("Secret", name)
    return SecretValue(name=name, value=values[name])


@router.get("/api/v1/secrets/{name}")
async def get_secret(call: Call) -> SecretOut:
    """A secret's metadata (never its value)."""
    name = _name(call)
    row = await call.db.fetchrow(
        f"SELECT {COLUMNS} FROM secrets WHERE organization_id = $1 AND name = $2", call.org, name
    )
    if row is None:
        raise not_found("Secret", name)
    return SecretOut.model_validate(dict(row))


@router.patch("/api/v1/secrets/{name}", role="admin")
async def update_secret(call: Call, body: SecretUpdate) -> SecretOut:
    """Change the description and/or the value (sealed again with a new nonce)."""
    name = _name(call)
    changes = body.changes()
    if "value" in changes:
        sealed = vault_of(call).seal(call.org, name, changes.pop("value"))
        changes.update(
            ciphertext=sealed.ciphertext, nonce=sealed.nonce, key_version=sealed.key_version
        )
    changes["updated_by"] = call.principal.actor
    assignments, values = patch_assignments(
        changes,
        ["description", "ciphertext", "nonce", "key_version", "updated_by"],
        first_param=3,
    )
    row = await call.db.fetchrow(
        f"UPDATE secrets SET {assignments} WHERE organization_id = $1 AND name = $2 "
        f"RETURNING {COLUMNS}",
        call.org,
        name,
        *values,
    )
    if row is None:
        raise not_found("Secret", name)
    return SecretOut.model_validate(dict(row))


@router.delete("/api/v1/secrets/{name}", role="admin")
async def delete_secret(call: Call) -> SecretDeleted:
    """Delete a secret; environments that name it go on without it."""
    name = _name(call)
    deleted = await call.db.fetchval(
        "DELETE FROM secrets WHERE organization_id = $1 AND name = $2 RETURNING id",
        call.org,
        name,
    )
    if deleted is None:
        raise not_found("Secret", name)
    return SecretDeleted(id=deleted, name=name)
