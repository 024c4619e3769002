"""The worker protocol (reference §6): a worker starts on a queue with an API key, receives its
worker id, token and Temporal settings, heartbeats, and disconnects on shutdown. Workers never
hold database credentials; everything they report comes through here."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field

from api.auth import WORKER_TOKEN_PREFIX
from api.errors import ApiError, not_found
from api.pagination import ListQuery, Page, fetch_page
from api.routes.worker_queues import STALE_WORKER_SECONDS, get_queue, live_workers_sql
from api.routing import Call, Router
from api.tenancy import hash_key
from controlplane import VERSION

router = Router("workers")

WorkerStatus = Literal["active", "idle", "busy"]
COLUMNS = (
    "id, worker_queue_id, hostname, status, tasks_processed, current_task_id, worker_metadata, "
    "system_info, registered_at, last_heartbeat, "
    f"(status <> 'disconnected' AND last_heartbeat > now() - interval '{STALE_WORKER_SECONDS} "
    "seconds') AS is_active"
)


class WorkerStart(BaseModel):
    worker_sdk_version: str | None = None
    system_info: dict[str, Any] = Field(default_factory=dict)
    control_plane_url: str | None = None


class WorkerStarted(BaseModel):
    worker_id: uuid.UUID
    worker_token: str = Field(description="Authenticates this worker's reports; shown once")
    task_queue_name: str
    temporal_namespace: str
    temporal_host: str
    temporal_api_key: str | None
    organization_id: str
    control_plane_url: str
    heartbeat_interval: int
    queue_id: uuid.UUID
    queue_name: str
    environment_name: str
    queue_ephemeral: bool
    control_plane_sdk_version: str


class Heartbeat(BaseModel):
    status: WorkerStatus = "active"
    tasks_processed: int = Field(0, ge=0)
    current_task_id: str | None = None
    worker_metadata: dict[str, Any] = Field(default_factory=dict)
    system_info: dict[str, Any] | None = None
    logs: list[str] | None = Field(None, max_length=1000)


class HeartbeatAck(BaseModel):
    worker_id: uuid.UUID
    status: str
    last_heartbeat: datetime
    heartbeat_interval: int


class Disconnect(BaseModel):
    reason: str = "shutdown"
    exit_code: int | None = None
    error_message: str | None = None


class Disconnected(BaseModel):
    worker_id: uuid.UUID
    status: Literal["disconnected"]


class WorkerDetail(BaseModel):
    id: uuid.UUID
    worker_id: uuid.UUID
    worker_queue_id: uuid.UUID
    hostname: str | None
    status: str
    is_active: bool
    tasks_processed: int
    current_task_id: str | None
    last_heartbeat: datetime
    registered_at: datetime
    system_info: dict[str, Any]
    worker_metadata: dict[str, Any]

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> WorkerDetail:
        return cls(**dict(row), worker_id=row["id"])


@router.post("/api/v1/worker-queues/{queue_id}/start", role="member")
async def start_worker(call: Call, body: WorkerStart) -> WorkerStarted:
    """Register a worker on an active queue, within its `max_workers`."""
    queue_id = call.path_uuid("queue_id", "Worker queue")
    worker_id = uuid.uuid4()
    token = WORKER_TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with call.db.acquire() as conn, conn.transaction():
        # The row lock serialises concurrent starts, so max_workers cannot be overshot.
        queue = await conn.fetchrow(
            "SELECT q.status, q.max_workers, q.name, q.heartbeat_interval, q.ephemeral, "
            "e.name AS environment_name FROM worker_queues q "
            "JOIN environments e ON e.id = q.environment_id "
            "WHERE q.id = $1 AND q.organization_id = $2 FOR UPDATE OF q",
            queue_id,
            call.org,
        )
        if queue is None:
            raise not_found("Worker queue", queue_id)
        if queue["status"] != "active":
            raise ApiError(
                400, f"Worker queue is {queue['status']}; only active queues take workers"
            )
        live = await conn.fetchval("SELECT " + live_workers_sql("w.worker_queue_id = $1"), queue_id)
        if queue["max_workers"] is not None and live >= queue["max_workers"]:
            raise ApiError(
                409,
                f"Worker queue already has {live} of {queue['max_workers']} workers",
                details={"active_workers": live, "max_workers": queue["max_workers"]},
            )
        hostname = body.system_info.get("hostname")
        await conn.execute(
            "INSERT INTO workers (id, organization_id, worker_queue_id, hostname, system_info, "
            "worker_metadata, worker_token_hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            worker_id,
            call.org,
            queue_id,
            str(hostname) if hostname else None,
            body.system_info,
            {"worker_sdk_version": body.worker_sdk_version},
            hash_key(token),
        )
    settings = call.state.settings
    return WorkerStarted(
        worker_id=worker_id,
        worker_token=token,
        task_queue_name=str(queue_id),
        temporal_namespace=settings.temporal_namespace,
        temporal_host=settings.temporal_address,
        temporal_api_key=None,
        organization_id=call.org,
        control_plane_url=settings.public_url,
        heartbeat_interval=queue["heartbeat_interval"],
        queue_id=queue_id,
        queue_name=queue["name"],
        environment_name=queue["environment_name"],
        queue_ephemeral=queue["ephemeral"],
        control_plane_sdk_version=VERSION,
    )


def _own_worker(call: Call) -> uuid.UUID:
    """A worker token may only speak for its own worker."""
    worker_id = call.path_uuid("worker_id", "Worker")
    own = call.principal.worker_id
    if own is not None and own != worker_id:
        raise not_found("Worker", worker_id)
    return worker_id


@router.post("/api/v1/workers/{worker_id}/heartbeat", role="worker")
async def heartbeat(call: Call, body: Heartbeat) -> HeartbeatAck:
    """Record that the worker is alive, and what it is doing."""
    worker_id = _own_worker(call)
    row = await call.db.fetchrow(
        "UPDATE workers w SET last_heartbeat = now(), updated_at = now(), status = $3, "
        "tasks_processed = $4, current_task_id = $5, "
        "worker_metadata = w.worker_metadata || $6::jsonb, "
        "system_info = coalesce($7::jsonb, w.system_info) "
        "FROM worker_queues q WHERE w.id = $1 AND w.organization_id = $2 "
        "AND q.id = w.worker_queue_id AND w.status <> 'disconnected' "
        "RETURNING w.status, w.last_heartbeat, q.heartbeat_interval",
        worker_id,
        call.org,
        body.status,
        body.tasks_processed,
        body.current_task_id,
        body.worker_metadata,
        body.system_info,
    )
    if row is None:
        raise not_found("Worker", worker_id)
    return HeartbeatAck(
        worker_id=worker_id,
        status=row["status"],
        last_heartbeat=row["last_heartbeat"],
        heartbeat_interval=row["heartbeat_interval"],
    )


@router.post("/api/v1/workers/{worker_id}/disconnect", role="worker")
async def disconnect(call: Call, body: Disconnect) -> Disconnected:
    """Mark the worker gone; its token stops working."""
    worker_id = _own_worker(call)
    record = {
        "disconnect_reason": body.reason,
        "exit_code": body.exit_code,
        "error_message": body.error_message,
    }
    updated = await call.db.fetchval(
        "UPDATE workers SET status = 'disconnected', updated_at = now(), "
        "worker_metadata = worker_metadata || $3::jsonb || "
        "jsonb_build_object('disconnect_time', now()) "
        "WHERE id = $1 AND organization_id = $2 RETURNING id",
        worker_id,
        call.org,
        record,
    )
    if updated is None:
        raise not_found("Worker", worker_id)
    return Disconnected(worker_id=worker_id, status="disconnected")


@router.get("/api/v1/worker-queues/{queue_id}/workers")
async def list_queue_workers(call: Call, query: ListQuery) -> Page[WorkerDetail]:
    """The workers started on a queue, newest first; `is_active` applies the 150 s rule."""
    queue = await get_queue(call, call.path_uuid("queue_id", "Worker queue"))
    rows, total = await fetch_page(
        call.db,
        table="workers",
        columns=COLUMNS,
        where="worker_queue_id = $1 AND organization_id = $2",
        args=[queue.id, call.org],
        query=query,
        order="registered_at DESC, id",
    )
    items = [WorkerDetail.from_row(row) for row in rows]
    return Page[WorkerDetail](items=items, total=total, limit=query.limit, offset=query.start)
