"""Integrations (reference §3.13, §10): custom integrations CRUD at `/api/v1/custom-integrations`,
the 0.3 listing at `/api/v1/integrations`, and the token routes.

An integration's token is the value of the first secret its `config.secrets` names. Tokens, like
secret values, reach admin keys and the worker token of an execution whose resolved environment
includes the integration, and every read is audited.

The connection test does not run `connection_test.command` on the API host (that would hand any
member a shell on it): `POST /custom-integrations/{id}/test` checks what the API can check (the
integration is active, every secret it names exists) and records the result with
`command_run: false`.
"""

from __future__ import annotations

import posixpath
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from api.access import running_execution_for_worker, vault_of
from api.errors import ApiError, not_found
from api.pagination import ListQuery, Page, fetch_page
from api.routing import Call, Router
from api.schemas import Deleted, PatchBody
from controlplane.db import conflict_on_duplicate, patch_assignments
from controlplane.environments import (
    INTEGRATION_ENV,
    integration_from_row,
    resolve_for_execution,
    token_env_names,
)
from controlplane.vault import NAME_PATTERN, Reader, reveal

router = Router("integrations")

IntegrationStatus = Literal["active", "inactive", "deleted"]
EnvName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=255)]
TYPE_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
CONNECTED = (
    "(status = 'active' AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text("
    "coalesce(config->'secrets', '[]')) AS s(name) WHERE NOT EXISTS (SELECT 1 FROM secrets x "
    "WHERE x.organization_id = custom_integrations.organization_id AND x.name = s.name)))"
)
COLUMNS = (
    "id, organization_id, name, integration_type, description, status, config, tags, "
    f"last_test, created_by, created_at, updated_at, {CONNECTED} AS connected"
)
TEST_REASON = (
    "connection_test.command is not run on the API host; the test checks that the "
    "integration is active and that every secret it names is in the vault"
)


class IntegrationFile(BaseModel):
    path: str = Field(min_length=1, max_length=1024, description="Relative, or under '~/'")
    content: str | None = Field(None, max_length=256 * 1024)
    secret_ref: str | None = Field(None, pattern=NAME_PATTERN, description="A secret's name")
    mode: str = Field("0644", pattern=r"^0?[0-7]{3}$")
    description: str | None = None

    @field_validator("path")
    @classmethod
    def safe_path(cls, path: str) -> str:
        rest = path[2:] if path.startswith("~/") else path
        if rest.startswith("/") or ".." in posixpath.normpath(rest).split("/") or "\\" in rest:
            raise ValueError("must be a relative path (or start with '~/') without '..'")
        return path

    @model_validator(mode="after")
    def one_source(self) -> IntegrationFile:
        if (self.content is None) == (self.secret_ref is None):
            raise ValueError("a file needs exactly one of 'content' and 'secret_ref'")
        return self


class ConnectionTest(BaseModel):
    enabled: bool = False
    command: str = Field("", max_length=4000)
    timeout: int = Field(5, ge=1, le=300)


class IntegrationConfig(BaseModel):
    env_vars: dict[EnvName, str] = Field(default_factory=dict)
    secrets: list[EnvName] = Field(
        default_factory=list, description="Secret names; the first is the integration's token"
    )
    files: list[IntegrationFile] = Field(default_factory=list, max_length=50)
    context_prompt: str | None = Field(None, max_length=20_000)
    connection_test: ConnectionTest | None = None


class IntegrationCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    integration_type: str = Field(pattern=TYPE_PATTERN, description="github, jira, slack, ...")
    description: str | None = None
    config: IntegrationConfig = Field(default_factory=IntegrationConfig)
    tags: list[str] = Field(default_factory=list)
    status: Literal["active", "inactive"] = "active"


class IntegrationUpdate(PatchBody):
    required_if_sent = ("name", "integration_type", "config", "tags", "status")

    name: str | None = Field(None, min_length=1, max_length=200)
    integration_type: str | None = Field(None, pattern=TYPE_PATTERN)
    description: str | None = None
    config: IntegrationConfig | None = Field(None, description="Replaces the stored config")
    tags: list[str] | None = None
    status: Literal["active", "inactive"] | None = None


class IntegrationOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    name: str
    integration_type: str
    description: str | None
    status: IntegrationStatus
    connected: bool = Field(description="Active, and every secret it names is in the vault")
    config: dict[str, Any]
    tags: list[str]
    token_env_vars: list[str] = Field(description="The env vars its token is given as")
    last_test: dict[str, Any] | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> IntegrationOut:
        return cls(**dict(row), token_env_vars=token_env_names(row["integration_type"]))


class IntegrationQuery(ListQuery):
    integration_type: str | None = None
    status: IntegrationStatus | None = None
    include_deleted: bool = False


class DeleteQuery(BaseModel):
    hard_delete: bool = False


class ConnectionTestResult(BaseModel):
    integration_id: uuid.UUID
    success: bool
    command_run: bool = False
    reason: str
    status: IntegrationStatus
    missing_secrets: list[str]
    command: str | None
    timeout: int | None
    tested_at: datetime


class IntegrationSummary(BaseModel):
    """An integration in the 0.3 `/integrations` listing."""

    id: uuid.UUID
    name: str
    integration_type: str
    vendor: str
    description: str | None
    status: IntegrationStatus
    connected: bool
    source: Literal["custom"] = "custom"
    tags: list[str]
    env_vars: dict[str, str]
    secrets: list[str]
    token_env_vars: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> IntegrationSummary:
        config = row["config"] or {}
        return cls(
            id=row["id"],
            name=row["name"],
            integration_type=row["integration_type"],
            vendor=row["integration_type"],
            description=row["description"],
            status=row["status"],
            connected=row["connected"],
            tags=row["tags"],
            env_vars=config.get("env_vars") or {},
            secrets=config.get("secrets") or [],
            token_env_vars=token_env_names(row["integration_type"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


class ConnectedQuery(ListQuery):
    connected_only: bool = False


class IntegrationType(BaseModel):
    integration_type: str
    token_env_vars: list[str]


class IntegrationTypes(BaseModel):
    types: list[IntegrationType]
    fallback: str = "{TYPE}_TOKEN"


class TokenQuery(BaseModel):
    execution_id: str | None = Field(
        None, description="Worker tokens: the execution (on your queue) that uses the integration"
    )


class IntegrationToken(BaseModel):
    token: str
    integration_id: uuid.UUID
    integration_type: str
    secret_name: str
    env_vars: list[str]


def _config(config: IntegrationConfig) -> dict[str, Any]:
    return config.model_dump(exclude_none=True)


async def _load(call: Call, name: str = "integration_id") -> asyncpg.Record:
    """An integration of the organization (soft-deleted ones included)."""
    ident = call.path_uuid(name, "Integration")
    row = await call.db.fetchrow(
        f"SELECT {COLUMNS} FROM custom_integrations WHERE id = $1 AND organization_id = $2",
        ident,
        call.org,
    )
    if row is None:
        raise not_found("Integration", ident)
    record: asyncpg.Record = row
    return record


# --- custom integrations ---------------------------------------------------------------------


@router.post("/api/v1/custom-integrations", status=201)
async def create_integration(call: Call, body: IntegrationCreate) -> IntegrationOut:
    """Create a custom integration: env vars, secret names, files and a context prompt that
    executions using it receive."""
    with conflict_on_duplicate(f"An integration named '{body.name}' exists"):
        row = await call.db.fetchrow(
            "INSERT INTO custom_integrations (id, organization_id, name, integration_type, "
            "description, status, config, tags, created_by) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}",
            uuid.uuid4(),
            call.org,
            body.name,
            body.integration_type,
            body.description,
            body.status,
            _config(body.config),
            body.tags,
            call.principal.actor,
        )
    assert row is not None
    return IntegrationOut.from_row(row)


@router.get("/api/v1/custom-integrations")
async def list_integrations(call: Call, query: IntegrationQuery) -> Page[IntegrationOut]:
    """The organization's custom integrations, oldest first; deleted ones only on request."""
    where = "organization_id = $1"
    if not query.include_deleted and query.status is None:
        where += " AND status <> 'deleted'"
    rows, total = await fetch_page(
        call.db,
        table="custom_integrations",
        columns=COLUMNS,
        where=where,
        args=[call.org],
        query=query,
        filters={"integration_type": query.integration_type, "status": query.status},
    )
    items = [IntegrationOut.from_row(row) for row in rows]
    return Page[IntegrationOut](items=items, total=total, limit=query.limit, offset=query.start)


@router.get("/api/v1/custom-integrations/{integration_id}")
async def get_integration(call: Call) -> IntegrationOut:
    """One custom integration."""
    return IntegrationOut.from_row(await _load(call))


@router.patch("/api/v1/custom-integrations/{integration_id}")
async def update_integration(call: Call, body: IntegrationUpdate) -> IntegrationOut:
    """Change the fields sent; a new `config` replaces the old one."""
    ident = call.path_uuid("integration_id", "Integration")
    changes = body.changes()
    if body.config is not None:
        changes["config"] = _config(body.config)
    assignments, values = patch_assignments(
        changes,
        ["name", "integration_type", "description", "config", "tags", "status"],
        first_param=3,
    )
    with conflict_on_duplicate("Another integration has that name"):
        row = await call.db.fetchrow(
            f"UPDATE custom_integrations SET {assignments} WHERE id = $1 AND organization_id = $2 "
            f"AND status <> 'deleted' RETURNING {COLUMNS}",
            ident,
            call.org,
            *values,
        )
    if row is None:
        raise not_found("Integration", ident)
    return IntegrationOut.from_row(row)


@router.delete("/api/v1/custom-integrations/{integration_id}")
async def delete_integration(call: Call, query: DeleteQuery) -> Deleted:
    """Mark the integration deleted (its name is free again), or with `?hard_delete=true`
    remove the row."""
    ident = call.path_uuid("integration_id", "Integration")
    if query.hard_delete:
        sql = "DELETE FROM custom_integrations WHERE id = $1 AND organization_id = $2 RETURNING id"
    else:
        sql = (
            "UPDATE custom_integrations SET status = 'deleted', updated_at = now() "
            "WHERE id = $1 AND organization_id = $2 AND status <> 'deleted' RETURNING id"
        )
    if await call.db.fetchval(sql, ident, call.org) is None:
        raise not_found("Integration", ident)
    return Deleted(id=ident)


@router.post("/api/v1/custom-integrations/{integration_id}/test")
async def test_integration(call: Call) -> ConnectionTestResult:
    """Check the integration without running its command (see the module docstring); the
    result is recorded as `last_test`."""
    row = await _load(call)
    if row["status"] == "deleted":
        raise not_found("Integration", row["id"])
    config = row["config"] or {}
    names = list(dict.fromkeys(config.get("secrets") or []))
    names += [f["secret_ref"] for f in config.get("files") or [] if f.get("secret_ref")]
    present = await call.db.fetch(
        "SELECT name FROM secrets WHERE organization_id = $1 AND name = ANY($2::text[])",
        call.org,
        names,
    )
    found = {r["name"] for r in present}
    missing = [name for name in dict.fromkeys(names) if name not in found]
    connection_test = config.get("connection_test") or {}
    result = ConnectionTestResult(
        integration_id=row["id"],
        success=row["status"] == "active" and not missing,
        reason=TEST_REASON,
        status=row["status"],
        missing_secrets=missing,
        command=connection_test.get("command"),
        timeout=connection_test.get("timeout"),
        tested_at=datetime.now(UTC),
    )
    await call.db.execute(
        "UPDATE custom_integrations SET last_test = $2 WHERE id = $1",
        row["id"],
        result.model_dump(mode="json"),
    )
    return result


# --- the 0.3 integrations listing and tokens ---------------------------------------------------


@router.get("/api/v1/integrations")
async def list_connected(call: Call, query: ConnectedQuery) -> Page[IntegrationSummary]:
    """The organization's integrations; `connected_only`: those active with every secret set."""
    where = "organization_id = $1 AND status <> 'deleted'"
    if query.connected_only:
        where += f" AND {CONNECTED}"
    rows, total = await fetch_page(
        call.db,
        table="custom_integrations",
        columns=COLUMNS,
        where=where,
        args=[call.org],
        query=query,
    )
    items = [IntegrationSummary.from_row(row) for row in rows]
    return Page[IntegrationSummary](items=items, total=total, limit=query.limit, offset=query.start)


@router.get("/api/v1/integrations/types")
async def integration_types(call: Call) -> IntegrationTypes:
    """The env vars each integration type's token is given as; other types get `{TYPE}_TOKEN`."""
    return IntegrationTypes(
        types=[
            IntegrationType(integration_type=name, token_env_vars=list(names))
            for name, names in INTEGRATION_ENV.items()
        ]
    )


@router.get("/api/v1/integrations/{integration_id}")
async def get_connected(call: Call) -> IntegrationSummary:
    """One integration in the 0.3 shape."""
    row = await _load(call)
    if row["status"] == "deleted":
        raise not_found("Integration", row["id"])
    return IntegrationSummary.from_row(row)


async def _token(call: Call, kind: str, raw_execution_id: str | None) -> IntegrationToken:
    row = await _load(call)
    if row["status"] == "deleted" or row["integration_type"] != call.path[kind].lower():
        raise not_found("Integration", row["id"])
    execution_id: uuid.UUID | None = None
    purpose = "integration_token"
    if call.principal.is_worker_token:
        execution = await running_execution_for_worker(call, raw_execution_id)
        execution_id = execution["id"]
        resolved = await resolve_for_execution(call.db, call.org, execution_id)
        if str(row["id"]) not in {i.id for i in resolved.integrations}:
            raise ApiError(
                403, f"Execution '{execution_id}' does not use integration '{row['id']}'"
            )
    integration = integration_from_row(row)
    if integration.token_secret is None:
        raise ApiError(404, f"Integration '{row['id']}' has no token: its config names no secret")
    if row["status"] != "active":
        raise ApiError(409, f"Integration '{row['id']}' is {row['status']}")
    reader = Reader(call.principal.actor, purpose, execution_id)
    async with call.db.acquire() as conn, conn.transaction():
        values = await reveal(conn, vault_of(call), call.org, [integration.token_secret], reader)
    if integration.token_secret not in values:
        raise ApiError(
            404,
            f"Secret '{integration.token_secret}' of integration '{row['id']}' is not in the vault",
        )
    return IntegrationToken(
        token=values[integration.token_secret],
        integration_id=row["id"],
        integration_type=row["integration_type"],
        secret_name=integration.token_secret,
        env_vars=integration.token_env,
    )


@router.get(
    "/api/v1/integrations/{integration_type}/{integration_id}/token", role="admin_or_worker_token"
)
async def integration_token(call: Call, query: TokenQuery) -> IntegrationToken:
    """The integration's token (its first secret), audited: admin keys, or a worker token with
    `?execution_id=` of an execution on its queue that uses the integration."""
    return await _token(call, "integration_type", query.execution_id)


@router.get("/api/v1/integrations/{vendor}/creds/{integration_id}", role="admin_or_worker_token")
async def integration_creds(call: Call, query: TokenQuery) -> IntegrationToken:
    """The official client's path for the token route."""
    return await _token(call, "vendor", query.execution_id)
