"""The worker protocol (reference §6): a worker starts on a queue with an API key, receives its
worker id, token and Temporal settings, heartbeats, and disconnects on shutdown. Workers never
hold database credentials; everything they report comes through here.

Also `GET /workers`, Temporal's own view of each queue (its pollers and backlog), and the 0.3
environment-based `register`/`heartbeat` routes, which land on the environment's `default` queue."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel, Field
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, DescribeTaskQueueResponse
from temporalio.client import Client
from temporalio.service import RPCError

from api.auth import WORKER_TOKEN_PREFIX
from api.errors import ApiError, not_found
from api.pagination import ListQuery, Page, fetch_page
from api.queue_shapes import get_queue
from api.routing import INT_MAX, INT_MIN, Call, Router
from api.worker_credentials import require_mint_budget
from controlplane import VERSION
from controlplane.queues import NAME_PATTERN, STALE_WORKER_SECONDS, live_workers_sql
from controlplane.runners import MAX_RUNNER_NAME, RUNNER_NAME_PATTERN
from controlplane.temporal_auth import mint, worker_permissions
from controlplane.tenancy import hash_key
from controlplane.workers import announce_registered, mark_disconnected

router = Router("workers")

WorkerStatus = Literal["active", "idle", "busy"]
COLUMNS = (
    "id, worker_queue_id, runner_name, hostname, status, tasks_processed, current_task_id, "
    "worker_metadata, system_info, registered_at, last_heartbeat, "
    f"(status <> 'disconnected' AND last_heartbeat > now() - interval '{STALE_WORKER_SECONDS} "
    "seconds') AS is_active"
)


RUNNER_DOC = "The infrastructure the worker runs on (`--runner-name`); default its host name"


class WorkerStart(BaseModel):
    worker_sdk_version: str | None = None
    runner_name: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_RUNNER_NAME,
        pattern=RUNNER_NAME_PATTERN,
        description=RUNNER_DOC,
    )
    system_info: dict[str, Any] = Field(default_factory=dict)
    control_plane_url: str | None = None


class TemporalAccess(BaseModel):
    """How a worker reaches Temporal: its organization's namespace, and a short-lived JWT
    (`permissions: ["<namespace>:worker"]`) for Temporal's authorizer; renewed on heartbeat."""

    temporal_namespace: str
    temporal_host: str
    temporal_api_key: str | None
    temporal_api_key_expires_at: datetime | None
    temporal_tls: bool
    temporal_tls_ca: str | None = Field(description="PEM of the CA to trust, when TLS is on")
    temporal_tls_server_name: str | None


class WorkerStarted(TemporalAccess):
    worker_id: uuid.UUID
    worker_token: str = Field(description="Authenticates this worker's reports; shown once")
    task_queue_name: str
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
    renew_temporal_token: bool = Field(
        False, description="Answer with a fresh Temporal JWT (ask before the old one expires)"
    )
    tasks_processed: int = Field(0, ge=0, le=INT_MAX)
    current_task_id: str | None = None
    worker_metadata: dict[str, Any] = Field(default_factory=dict)
    system_info: dict[str, Any] | None = None
    logs: list[str] | None = Field(None, max_length=1000)


class HeartbeatAck(BaseModel):
    worker_id: uuid.UUID
    status: str
    last_heartbeat: datetime
    heartbeat_interval: int
    temporal_api_key: str | None = None
    temporal_api_key_expires_at: datetime | None = None


class Disconnect(BaseModel):
    reason: str = "shutdown"
    exit_code: int | None = Field(None, ge=INT_MIN, le=INT_MAX)
    error_message: str | None = None


class Disconnected(BaseModel):
    worker_id: uuid.UUID
    status: Literal["disconnected"]


class WorkerDetail(BaseModel):
    id: uuid.UUID
    worker_id: uuid.UUID
    worker_queue_id: uuid.UUID
    runner_name: str
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


async def start_on_queue(
    call: Call,
    conn: PoolConnectionProxy[Any],
    queue_id: uuid.UUID,
    *,
    hostname: str | None,
    runner_name: str | None,
    system_info: dict[str, Any],
    worker_metadata: dict[str, Any],
) -> WorkerStarted:
    """Register a worker on an active queue of the caller's organization, within its
    `max_workers`. Runs in the caller's transaction on `conn`. A worker key starts workers on
    its own queue only."""
    bound = call.principal.worker_queue_id
    if call.principal.role == "worker" and bound != queue_id:
        raise ApiError(403, f"This worker key starts workers on queue '{bound}' only")
    await require_mint_budget(call)
    worker_id = uuid.uuid4()
    token = WORKER_TOKEN_PREFIX + secrets.token_urlsafe(32)
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
        raise ApiError(400, f"Worker queue is {queue['status']}; only active queues take workers")
    live = await conn.fetchval("SELECT " + live_workers_sql("w.worker_queue_id = $1"), queue_id)
    if queue["max_workers"] is not None and live >= queue["max_workers"]:
        raise ApiError(
            409,
            f"Worker queue already has {live} of {queue['max_workers']} workers",
            details={"active_workers": live, "max_workers": queue["max_workers"]},
        )
    await conn.execute(
        "INSERT INTO workers (id, organization_id, worker_queue_id, hostname, system_info, "
        "worker_metadata, worker_token_hash, runner_name) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        worker_id,
        call.org,
        queue_id,
        hostname,
        system_info,
        worker_metadata,
        hash_key(token),
        runner_name or hostname or "unknown",
    )
    await announce_registered(conn, worker_id)
    settings = call.state.settings
    # The namespace exists before the worker polls it.
    await call.state.temporal.client(call.org)
    return WorkerStarted(
        **temporal_access(call, worker_id).model_dump(),
        worker_id=worker_id,
        worker_token=token,
        task_queue_name=str(queue_id),
        organization_id=call.org,
        control_plane_url=settings.public_url,
        heartbeat_interval=queue["heartbeat_interval"],
        queue_id=queue_id,
        queue_name=queue["name"],
        environment_name=queue["environment_name"],
        queue_ephemeral=queue["ephemeral"],
        control_plane_sdk_version=VERSION,
    )


def temporal_access(call: Call, worker_id: uuid.UUID) -> TemporalAccess:
    settings = call.state.settings
    namespace = settings.namespace_for(call.org)
    token = None
    if call.state.signing_key is not None:
        token = mint(
            call.state.signing_key,
            subject=f"worker:{worker_id}",
            permissions=worker_permissions(namespace),
            ttl_seconds=settings.temporal_token_ttl_seconds,
            issuer=settings.public_url,
        )
    ca = settings.temporal_tls_ca_file
    return TemporalAccess(
        temporal_namespace=namespace,
        temporal_host=settings.worker_temporal_address,
        temporal_api_key=token.token if token else None,
        temporal_api_key_expires_at=token.expires_at if token else None,
        temporal_tls=settings.temporal_tls,
        temporal_tls_ca=Path(ca).read_text() if settings.temporal_tls and ca else None,
        temporal_tls_server_name=settings.temporal_tls_server_name,
    )


@router.post("/api/v1/worker-queues/{queue_id}/start", role="starter", carries_secret=True)
async def start_worker(call: Call, body: WorkerStart) -> WorkerStarted:
    """Register a worker on an active queue, within its `max_workers`."""
    queue_id = call.path_uuid("queue_id", "Worker queue")
    hostname = body.system_info.get("hostname")
    async with call.db.acquire() as conn, conn.transaction():
        return await start_on_queue(
            call,
            conn,
            queue_id,
            hostname=str(hostname)[:MAX_RUNNER_NAME] if hostname else None,
            runner_name=body.runner_name,
            system_info=body.system_info,
            worker_metadata={"worker_sdk_version": body.worker_sdk_version},
        )


def _own_worker(call: Call, worker_id: uuid.UUID) -> uuid.UUID:
    """A worker token may only speak for its own worker."""
    own = call.principal.worker_id
    if own is not None and own != worker_id:
        raise not_found("Worker", worker_id)
    return worker_id


async def record_heartbeat(
    call: Call, worker_id: uuid.UUID, body: Heartbeat, environment_name: str | None = None
) -> HeartbeatAck:
    """Record that the worker is alive and what it is doing; with `environment_name`, only if
    the worker's queue is in that environment."""
    _own_worker(call, worker_id)
    row = await call.db.fetchrow(
        "UPDATE workers w SET last_heartbeat = now(), updated_at = now(), status = $3, "
        "tasks_processed = $4, current_task_id = $5, "
        "worker_metadata = w.worker_metadata || $6::jsonb, "
        "system_info = coalesce($7::jsonb, w.system_info) "
        "FROM worker_queues q WHERE w.id = $1 AND w.organization_id = $2 "
        "AND q.id = w.worker_queue_id AND w.status <> 'disconnected' "
        "AND ($8::text IS NULL OR EXISTS (SELECT 1 FROM environments e "
        "WHERE e.id = q.environment_id AND e.name = $8)) "
        "RETURNING w.status, w.last_heartbeat, q.heartbeat_interval",
        worker_id,
        call.org,
        body.status,
        body.tasks_processed,
        body.current_task_id,
        body.worker_metadata,
        body.system_info,
        environment_name,
    )
    if row is None:
        raise not_found("Worker", worker_id)
    ack = HeartbeatAck(
        worker_id=worker_id,
        status=row["status"],
        last_heartbeat=row["last_heartbeat"],
        heartbeat_interval=row["heartbeat_interval"],
    )
    if body.renew_temporal_token:
        access = temporal_access(call, worker_id)
        ack.temporal_api_key = access.temporal_api_key
        ack.temporal_api_key_expires_at = access.temporal_api_key_expires_at
    return ack


@router.post("/api/v1/workers/{worker_id}/heartbeat", role="worker_token", carries_secret=True)
async def heartbeat(call: Call, body: Heartbeat) -> HeartbeatAck:
    """Record that the worker is alive, and what it is doing."""
    return await record_heartbeat(call, call.path_uuid("worker_id", "Worker"), body)


@router.post("/api/v1/workers/{worker_id}/disconnect", role="worker_token")
async def disconnect(call: Call, body: Disconnect) -> Disconnected:
    """Mark the worker gone; its token stops working."""
    worker_id = _own_worker(call, call.path_uuid("worker_id", "Worker"))
    record = {
        "disconnect_reason": body.reason,
        "exit_code": body.exit_code,
        "error_message": body.error_message,
    }
    async with call.db.acquire() as conn, conn.transaction():
        await mark_disconnected(conn, call.org, worker_id, record)
    call.state.credentials.forget(lambda principal: principal.worker_id == worker_id)
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


# --- Temporal's view of the queues: `GET /workers` ------------------------------------------

# Describes run concurrently, but a page of 1000 queues must not open 1000 RPCs at once.
DESCRIBE_CONCURRENCY = 16
DESCRIBE_TIMEOUT = timedelta(seconds=5)
_QUEUE_TABLE = "worker_queues q JOIN environments e ON e.id = q.environment_id"
_QUEUE_COLUMNS = (
    "q.id, q.name, q.organization_id, e.name AS environment_name, "
    + live_workers_sql("w.worker_queue_id = q.id")
    + " AS registered_workers"
)


class Poller(BaseModel):
    identity: str
    last_access_time: datetime | None
    rate_per_second: float


class TaskQueueInfo(BaseModel):
    task_queue: str = Field(description="The Temporal task queue: the worker queue's id")
    queue_id: uuid.UUID
    queue_name: str
    environment_name: str
    organization_id: str
    runner_name: str = Field(description="The worker queue's name")
    workers: list[Poller] = Field(description="Temporal's pollers of the workflow task queue")
    worker_count: int
    approximate_backlog_count: int
    registered_workers: int = Field(description="Live workers by the control plane's heartbeats")


async def _describe(client: Client, call: Call, task_queue: str) -> DescribeTaskQueueResponse:
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        report_stats=True,
    )
    try:
        return await client.workflow_service.describe_task_queue(request, timeout=DESCRIBE_TIMEOUT)
    except RPCError as error:
        call.state.metrics.temporal_errors.labels(operation="describe_task_queue").inc()
        raise ApiError(
            503,
            f"Temporal could not describe task queue {task_queue}: {error.message}",
            details={"task_queue": task_queue, "temporal_status": error.status.name},
        ) from None


def _task_queue_info(row: asyncpg.Record, described: DescribeTaskQueueResponse) -> TaskQueueInfo:
    pollers = [
        Poller(
            identity=poller.identity,
            last_access_time=poller.last_access_time.ToDatetime(tzinfo=UTC)
            if poller.HasField("last_access_time")
            else None,
            rate_per_second=poller.rate_per_second,
        )
        for poller in described.pollers
    ]
    return TaskQueueInfo(
        task_queue=str(row["id"]),
        queue_id=row["id"],
        queue_name=row["name"],
        environment_name=row["environment_name"],
        organization_id=row["organization_id"],
        runner_name=row["name"],
        workers=pollers,
        worker_count=len(pollers),
        approximate_backlog_count=described.stats.approximate_backlog_count,
        registered_workers=row["registered_workers"],
    )


async def _describe_rows(call: Call, rows: list[asyncpg.Record]) -> list[TaskQueueInfo]:
    # Asked for first, so an unreachable Temporal answers 503 even for an org without queues.
    client = await call.state.temporal.client(call.org)
    gate = asyncio.Semaphore(DESCRIBE_CONCURRENCY)

    async def one(row: asyncpg.Record) -> TaskQueueInfo:
        async with gate:
            return _task_queue_info(row, await _describe(client, call, str(row["id"])))

    return list(await asyncio.gather(*(one(row) for row in rows)))


@router.get("/api/v1/workers")
async def list_task_queues(call: Call, query: ListQuery) -> Page[TaskQueueInfo]:
    """Each worker queue (ephemeral ones hidden) as Temporal sees it: its pollers and backlog."""
    rows, total = await fetch_page(
        call.db,
        table=_QUEUE_TABLE,
        columns=_QUEUE_COLUMNS,
        where="q.organization_id = $1 AND NOT q.ephemeral",
        args=[call.org],
        query=query,
        order="q.created_at, q.id",
    )
    items = await _describe_rows(call, rows)
    return Page[TaskQueueInfo](items=items, total=total, limit=query.limit, offset=query.start)


@router.get("/api/v1/workers/{runner_name}", responses={409: "Ambiguous name: ask by id"})
async def get_task_queue(call: Call) -> TaskQueueInfo:
    """One worker queue, by id or by name, as Temporal sees it; a name that several
    environments use is ambiguous (409): ask by id."""
    runner_name = call.path["runner_name"]
    try:
        as_id: uuid.UUID | None = uuid.UUID(runner_name)
    except ValueError:
        as_id = None
    rows = await call.db.fetch(
        f"SELECT {_QUEUE_COLUMNS} FROM {_QUEUE_TABLE} WHERE q.organization_id = $1 "
        "AND (q.name = $2 OR q.id = $3) ORDER BY (q.id = $3) IS TRUE DESC, q.created_at, q.id",
        call.org,
        runner_name,
        as_id,
    )
    if not rows:
        raise not_found("Worker queue", runner_name)
    if len(rows) > 1 and rows[0]["id"] != as_id:
        raise ApiError(
            409,
            f"{len(rows)} worker queues are named '{runner_name}'; ask for one by its id",
            details={
                "matches": [
                    {"queue_id": str(row["id"]), "environment_name": row["environment_name"]}
                    for row in rows
                ]
            },
        )
    (info,) = await _describe_rows(call, rows[:1])
    return info


# --- The 0.3 environment-based worker protocol ------------------------------------------------

LEGACY_QUEUE_NAME = "default"
USABLE_ENVIRONMENT_STATUSES = ("ready", "active")


class LegacyRegister(BaseModel):
    environment_name: str = Field(min_length=1, max_length=100, pattern=NAME_PATTERN)
    hostname: str | None = Field(None, max_length=255)
    runner_name: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_RUNNER_NAME,
        pattern=RUNNER_NAME_PATTERN,
        description=RUNNER_DOC,
    )
    worker_metadata: dict[str, Any] = Field(default_factory=dict)


class LegacyRegistered(TemporalAccess):
    worker_id: uuid.UUID
    worker_token: str = Field(description="Authenticates this worker's reports; shown once")
    environment_name: str
    task_queue_name: str = Field(description="The environment's `default` worker queue's id")
    organization_id: str
    control_plane_url: str
    queue_id: uuid.UUID
    queue_name: str
    heartbeat_interval: int


class LegacyHeartbeat(Heartbeat):
    worker_id: uuid.UUID
    environment_name: str | None = Field(None, max_length=100)


@router.post("/api/v1/workers/register", role="starter", carries_secret=True)
async def legacy_register(call: Call, body: LegacyRegister) -> LegacyRegistered:
    """0.3 registration by environment name: creates the environment if missing, and its
    `default` queue, then starts a worker there as `POST /worker-queues/{id}/start` does."""
    async with call.db.acquire() as conn, conn.transaction():
        # ON CONFLICT DO NOTHING then SELECT: two first registrations racing both find one row.
        await conn.execute(
            "INSERT INTO environments (id, organization_id, name, status, created_by, "
            "worker_token, provisioned_at) VALUES ($1, $2, $3, 'ready', $4, $5, now()) "
            "ON CONFLICT (organization_id, name) DO NOTHING",
            uuid.uuid4(),
            call.org,
            body.environment_name,
            call.principal.actor,
            uuid.uuid4(),
        )
        environment = await conn.fetchrow(
            "SELECT id, status FROM environments WHERE organization_id = $1 AND name = $2",
            call.org,
            body.environment_name,
        )
        assert environment is not None
        if environment["status"] not in USABLE_ENVIRONMENT_STATUSES:
            raise ApiError(
                400,
                f"Environment '{body.environment_name}' is {environment['status']}; workers "
                f"register only in a {' or '.join(USABLE_ENVIRONMENT_STATUSES)} environment",
                details={"status": environment["status"]},
            )
        await conn.execute(
            "INSERT INTO worker_queues (id, organization_id, environment_id, name, created_by) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (environment_id, name) DO NOTHING",
            uuid.uuid4(),
            call.org,
            environment["id"],
            LEGACY_QUEUE_NAME,
            call.principal.actor,
        )
        queue_id = await conn.fetchval(
            "SELECT id FROM worker_queues WHERE environment_id = $1 AND name = $2",
            environment["id"],
            LEGACY_QUEUE_NAME,
        )
        started = await start_on_queue(
            call,
            conn,
            queue_id,
            hostname=body.hostname,
            runner_name=body.runner_name,
            system_info={"hostname": body.hostname} if body.hostname else {},
            worker_metadata=body.worker_metadata,
        )
    return LegacyRegistered(
        **started.model_dump(include=set(TemporalAccess.model_fields)),
        worker_id=started.worker_id,
        worker_token=started.worker_token,
        environment_name=started.environment_name,
        task_queue_name=started.task_queue_name,
        organization_id=started.organization_id,
        control_plane_url=started.control_plane_url,
        queue_id=started.queue_id,
        queue_name=started.queue_name,
        heartbeat_interval=started.heartbeat_interval,
    )


@router.post("/api/v1/workers/heartbeat", role="worker_token", carries_secret=True)
async def legacy_heartbeat(call: Call, body: LegacyHeartbeat) -> HeartbeatAck:
    """0.3 heartbeat with the worker id in the body; the same as `/workers/{worker_id}/heartbeat`
    (and, given `environment_name`, only for a worker in that environment)."""
    return await record_heartbeat(call, body.worker_id, body, body.environment_name)
