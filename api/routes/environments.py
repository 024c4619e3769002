"""`/api/v1/environments` (reference §3.9). Our Temporal namespace is configured, not
provisioned per organization, so a new environment is `ready` at once."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field

from api.errors import not_found
from api.pagination import ListQuery, Page, fetch_page, page_of
from api.queue_shapes import WorkerCommand, WorkerQueueOut, worker_command_for
from api.routing import Call, Router
from api.schemas import Deleted, PatchBody
from controlplane.db import conflict_on_duplicate, patch_assignments
from controlplane.environments import ExecutionEnvironmentIn
from controlplane.queues import LIVE_WORKER, NAME_PATTERN, QUEUE_COLUMNS, live_workers_sql

router = Router("environments")

EnvironmentStatus = Literal[
    "pending", "provisioning", "ready", "active", "inactive", "error", "archived"
]
_IN_ENV = (
    "w.worker_queue_id IN "
    "(SELECT q.id FROM worker_queues q WHERE q.environment_id = environments.id)"
)
_ENVIRONMENT = (
    "id, organization_id, name, display_name, description, tags, settings, status, created_at, "
    "updated_at, created_by, worker_token, provisioning_workflow_id, provisioned_at, "
    "error_message, temporal_namespace_id, execution_environment"
)
# One environment (get, and what INSERT and UPDATE return).
COLUMNS = (
    f"{_ENVIRONMENT}, "
    f"{live_workers_sql(_IN_ENV)} AS active_workers, "
    f"{live_workers_sql(_IN_ENV, 'idle')} AS idle_workers, "
    f"{live_workers_sql(_IN_ENV, 'busy')} AS busy_workers"
)
# A page: the three counts in one pass, from each environment's queues and, per queue, an index
# probe of its workers (an aggregate in a lateral subquery, which the planner cannot turn into a
# scan of every worker per environment).
PAGE_COLUMNS = f"{_ENVIRONMENT}, live.active_workers, live.idle_workers, live.busy_workers"
PAGE_JOINS = (
    "CROSS JOIN LATERAL (SELECT coalesce(sum(c.active), 0)::bigint AS active_workers, "
    "coalesce(sum(c.idle), 0)::bigint AS idle_workers, "
    "coalesce(sum(c.busy), 0)::bigint AS busy_workers "
    "FROM worker_queues q CROSS JOIN LATERAL (SELECT count(*) AS active, "
    "count(*) FILTER (WHERE w.status = 'idle') AS idle, "
    "count(*) FILTER (WHERE w.status = 'busy') AS busy "
    f"FROM workers w WHERE w.worker_queue_id = q.id AND {LIVE_WORKER}) AS c "
    "WHERE q.environment_id = environments.id) AS live"
)


class EnvironmentCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=NAME_PATTERN)
    display_name: str | None = None
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)
    execution_environment: ExecutionEnvironmentIn = Field(default_factory=ExecutionEnvironmentIn)


class EnvironmentUpdate(PatchBody):
    required_if_sent = ("name", "tags", "settings", "status", "execution_environment")

    name: str | None = Field(None, min_length=1, max_length=100, pattern=NAME_PATTERN)
    display_name: str | None = None
    description: str | None = None
    tags: list[str] | None = None
    settings: dict[str, Any] | None = None
    status: EnvironmentStatus | None = None
    execution_environment: ExecutionEnvironmentIn | None = None


class EnvironmentOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    name: str
    display_name: str | None
    description: str | None
    tags: list[str]
    settings: dict[str, Any]
    status: EnvironmentStatus
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    worker_token: uuid.UUID
    provisioning_workflow_id: str | None
    provisioned_at: datetime | None
    error_message: str | None
    temporal_namespace_id: str | None
    active_workers: int
    idle_workers: int
    busy_workers: int
    execution_environment: dict[str, Any]

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> EnvironmentOut:
        return cls(**dict(row))


class EnvironmentWorkerCommand(BaseModel):
    worker_token: uuid.UUID
    environment_name: str
    command: str | None = Field(
        description="Starts a worker on the environment's first active queue"
    )
    command_parts: dict[str, Any]
    namespace_status: str
    can_register: bool
    provisioning_workflow_id: str | None
    queues: list[WorkerCommand]


class EnvironmentQuery(ListQuery):
    status_filter: EnvironmentStatus | None = None


async def get_environment(call: Call, environment_id: uuid.UUID) -> EnvironmentOut:
    row = await call.db.fetchrow(
        f"SELECT {COLUMNS} FROM environments WHERE id = $1 AND organization_id = $2",
        environment_id,
        call.org,
    )
    if row is None:
        raise not_found("Environment", environment_id)
    return EnvironmentOut.from_row(row)


@router.post("/api/v1/environments", status=201)
async def create_environment(call: Call, body: EnvironmentCreate) -> EnvironmentOut:
    """Create an environment; its name is unique in the organization."""
    with conflict_on_duplicate(f"An environment named '{body.name}' exists"):
        row = await call.db.fetchrow(
            "INSERT INTO environments (id, organization_id, name, display_name, description, "
            "tags, settings, status, created_by, worker_token, provisioned_at, "
            "execution_environment) VALUES ($1, $2, $3, $4, $5, $6, $7, 'ready', $8, $9, now(), "
            f"$10) RETURNING {COLUMNS}",
            uuid.uuid4(),
            call.org,
            body.name,
            body.display_name,
            body.description,
            body.tags,
            body.settings,
            call.principal.actor,
            uuid.uuid4(),
            body.execution_environment.model_dump(exclude_none=True),
        )
    assert row is not None
    return EnvironmentOut.from_row(row)


@router.get("/api/v1/environments")
async def list_environments(call: Call, query: EnvironmentQuery) -> Page[EnvironmentOut]:
    """The organization's environments, oldest first."""
    rows, total = await fetch_page(
        call.db,
        table="environments",
        columns=PAGE_COLUMNS,
        joins=PAGE_JOINS,
        where="organization_id = $1",
        args=[call.org],
        query=query,
        filters={"status": query.status_filter},
        counted="environments",
    )
    return page_of(EnvironmentOut, [dict(row) for row in rows], total, query)


@router.get("/api/v1/environments/{environment_id}")
async def get_environment_route(call: Call) -> EnvironmentOut:
    """One environment, with its live worker counts."""
    return await get_environment(call, call.path_uuid("environment_id", "Environment"))


@router.patch("/api/v1/environments/{environment_id}")
async def update_environment(call: Call, body: EnvironmentUpdate) -> EnvironmentOut:
    """Change the fields sent."""
    environment_id = call.path_uuid("environment_id", "Environment")
    changes = body.changes()
    if body.execution_environment is not None:
        changes["execution_environment"] = body.execution_environment.model_dump(exclude_none=True)
    assignments, values = patch_assignments(
        changes,
        [
            "name",
            "display_name",
            "description",
            "tags",
            "settings",
            "status",
            "execution_environment",
        ],
        first_param=3,
    )
    with conflict_on_duplicate("Another environment has that name"):
        row = await call.db.fetchrow(
            f"UPDATE environments SET {assignments} WHERE id = $1 AND organization_id = $2 "
            f"RETURNING {COLUMNS}",
            environment_id,
            call.org,
            *values,
        )
    if row is None:
        raise not_found("Environment", environment_id)
    return EnvironmentOut.from_row(row)


@router.delete("/api/v1/environments/{environment_id}")
async def delete_environment(call: Call) -> Deleted:
    """Delete an environment with its worker queues and their workers."""
    deleted = await call.delete_owned("environments", "environment_id", "Environment")
    call.forget_queue_credentials()
    return deleted


@router.get("/api/v1/environments/{environment_id}/worker-command")
async def environment_worker_command(call: Call) -> EnvironmentWorkerCommand:
    """How to start workers for this environment: one command per queue."""
    environment = await get_environment(call, call.path_uuid("environment_id", "Environment"))
    rows = await call.db.fetch(
        f"SELECT {QUEUE_COLUMNS} FROM worker_queues WHERE environment_id = $1 "
        "AND organization_id = $2 AND NOT ephemeral ORDER BY created_at, id",
        environment.id,
        call.org,
    )
    url = call.state.settings.public_url
    queues = [worker_command_for(WorkerQueueOut.from_row(row), url, None) for row in rows]
    first = next((q for q in queues if q.queue_status == "active"), None)
    usable = environment.status in ("ready", "active")
    return EnvironmentWorkerCommand(
        worker_token=environment.worker_token,
        environment_name=environment.name,
        command=first.command if first else None,
        command_parts=first.command_parts if first else {},
        namespace_status="ready",
        can_register=usable and any(q.can_register for q in queues),
        provisioning_workflow_id=environment.provisioning_workflow_id,
        queues=queues,
    )
