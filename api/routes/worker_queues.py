"""Worker queues (reference §3.7): created under an environment; a queue's id is the Temporal
task queue its workers poll."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field

from api.errors import not_found
from api.pagination import ListQuery, Page, fetch_page, page_of
from api.queue_shapes import (
    QueueStatus,
    WorkerCommand,
    WorkerQueueOut,
    get_queue,
    worker_command_for,
)
from api.routing import Call, Router
from api.schemas import Deleted, PatchBody
from api.worker_credentials import require_mint_budget
from controlplane.db import conflict_on_duplicate, patch_assignments
from controlplane.queues import EPHEMERAL_PREFIX, MAX_WORKERS_LIMIT, NAME_PATTERN, QUEUE_COLUMNS
from controlplane.tenancy import create_key

router = Router("worker-queues")


class WorkerQueueCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=NAME_PATTERN)
    display_name: str | None = None
    description: str | None = None
    max_workers: int | None = Field(
        None, ge=1, le=MAX_WORKERS_LIMIT, description="null = unlimited"
    )
    heartbeat_interval: int = Field(60, ge=1, le=3600)
    tags: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)


class WorkerQueueUpdate(PatchBody):
    required_if_sent = ("name", "status", "heartbeat_interval", "tags", "settings")

    name: str | None = Field(None, min_length=1, max_length=100, pattern=NAME_PATTERN)
    display_name: str | None = None
    description: str | None = None
    status: QueueStatus | None = None
    max_workers: int | None = Field(None, ge=1, le=MAX_WORKERS_LIMIT)
    heartbeat_interval: int | None = Field(None, ge=1, le=3600)
    tags: list[str] | None = None
    settings: dict[str, Any] | None = None


class QueueListQuery(ListQuery):
    status_filter: QueueStatus | None = None


async def _list(
    call: Call, query: QueueListQuery, where: str, args: list[Any], counted: str | None = None
) -> Page[WorkerQueueOut]:
    rows, total = await fetch_page(
        call.db,
        table="worker_queues",
        columns=QUEUE_COLUMNS,
        where=where + " AND NOT ephemeral",
        args=args,
        query=query,
        filters={"status": query.status_filter},
        counted=counted,
    )
    return page_of(WorkerQueueOut, [WorkerQueueOut.fields(row) for row in rows], total, query)


async def _environment_exists(call: Call, environment_id: uuid.UUID) -> None:
    found = await call.db.fetchval(
        "SELECT 1 FROM environments WHERE id = $1 AND organization_id = $2",
        environment_id,
        call.org,
    )
    if found is None:
        raise not_found("Environment", environment_id)


@router.post("/api/v1/environments/{environment_id}/worker-queues", status=201)
async def create_worker_queue(call: Call, body: WorkerQueueCreate) -> WorkerQueueOut:
    """Create a queue in an environment; its name is unique within the environment."""
    environment_id = call.path_uuid("environment_id", "Environment")
    await _environment_exists(call, environment_id)
    with conflict_on_duplicate(f"A worker queue named '{body.name}' exists in this environment"):
        row = await call.db.fetchrow(
            "INSERT INTO worker_queues (id, organization_id, environment_id, name, display_name, "
            "description, max_workers, heartbeat_interval, tags, settings, ephemeral, created_by) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {QUEUE_COLUMNS}",
            uuid.uuid4(),
            call.org,
            environment_id,
            body.name,
            body.display_name,
            body.description,
            body.max_workers,
            body.heartbeat_interval,
            body.tags,
            body.settings,
            body.name.startswith(EPHEMERAL_PREFIX),
            call.principal.actor,
        )
    assert row is not None
    return WorkerQueueOut.from_row(row)


@router.get("/api/v1/environments/{environment_id}/worker-queues")
async def list_environment_worker_queues(call: Call, query: QueueListQuery) -> Page[WorkerQueueOut]:
    """The environment's queues (ephemeral ones hidden)."""
    environment_id = call.path_uuid("environment_id", "Environment")
    await _environment_exists(call, environment_id)
    return await _list(
        call, query, "organization_id = $1 AND environment_id = $2", [call.org, environment_id]
    )


@router.get("/api/v1/worker-queues")
async def list_worker_queues(call: Call, query: QueueListQuery) -> Page[WorkerQueueOut]:
    """All of the organization's queues (ephemeral ones hidden)."""
    # The organization's count of queues is of listed ones (migration 0016).
    return await _list(call, query, "organization_id = $1", [call.org], counted="worker_queues")


@router.get("/api/v1/worker-queues/{queue_id}")
async def get_worker_queue(call: Call) -> WorkerQueueOut:
    """One queue, with its live worker count."""
    return await get_queue(call, call.path_uuid("queue_id", "Worker queue"))


@router.patch("/api/v1/worker-queues/{queue_id}")
async def update_worker_queue(call: Call, body: WorkerQueueUpdate) -> WorkerQueueOut:
    """Change the fields sent."""
    queue_id = call.path_uuid("queue_id", "Worker queue")
    changes = body.changes()
    if "name" in changes:
        changes["ephemeral"] = changes["name"].startswith(EPHEMERAL_PREFIX)
    assignments, values = patch_assignments(
        changes,
        [
            "name",
            "ephemeral",
            "display_name",
            "description",
            "status",
            "max_workers",
            "heartbeat_interval",
            "tags",
            "settings",
        ],
        first_param=3,
    )
    with conflict_on_duplicate("Another worker queue in this environment has that name"):
        row = await call.db.fetchrow(
            f"UPDATE worker_queues SET {assignments} WHERE id = $1 AND organization_id = $2 "
            f"RETURNING {QUEUE_COLUMNS}",
            queue_id,
            call.org,
            *values,
        )
    if row is None:
        raise not_found("Worker queue", queue_id)
    return WorkerQueueOut.from_row(row)


@router.delete("/api/v1/worker-queues/{queue_id}")
async def delete_worker_queue(call: Call) -> Deleted:
    """Delete a queue and its worker records."""
    deleted = await call.delete_owned("worker_queues", "queue_id", "Worker queue")
    call.forget_queue_credentials()
    return deleted


@router.get("/api/v1/worker-queues/{queue_id}/worker-command", role="admin", carries_secret=True)
async def worker_queue_command(call: Call) -> WorkerCommand:
    """The command that starts a worker on this queue, with a new worker key for it (shown
    once), and whether one may start now."""
    queue = await get_queue(call, call.path_uuid("queue_id", "Worker queue"))
    await require_mint_budget(call)
    key = await create_key(
        call.db,
        call.org,
        role="worker",
        name=f"worker key for queue {queue.name}",
        created_by=call.principal.actor,
        worker_queue_id=queue.id,
    )
    return worker_command_for(queue, call.state.settings.public_url, key)
