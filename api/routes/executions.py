"""`/api/v1/executions` (reference §3.5): the read model of executions, the user's actions on
them (signals to the workflow), the worker protocol reports, and the SSE stream."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field
from starlette.responses import Response, StreamingResponse
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError

from api.db import Conn, Queryable
from api.errors import ApiError, not_found
from api.event_stream import append_event, stream_events
from api.pagination import ListQuery, Page, fetch_page
from api.routing import BIGINT_MAX, Call, Router
from api.schemas import Deleted
from workflows.contracts import (
    ADD_MESSAGE,
    MARK_AS_DONE,
    PAUSE_EXECUTION,
    RESUME_EXECUTION,
    TERMINAL_STATES,
    ChatMessage,
    workflow_id_for,
)

router = Router("executions")

ExecutionStatus = Literal[
    "pending",
    "queued",
    "running",
    "waiting_for_input",
    "paused",
    "completed",
    "failed",
    "cancelled",
]
COLUMNS = (
    "id, organization_id, execution_type, entity_id, entity_name, prompt, system_prompt, status, "
    "response, error_message, usage, execution_metadata, runner_name, user_id, user_name, "
    "user_email, user_avatar, created_at, started_at, completed_at, updated_at, "
    "last_message_at, last_message_preview, temporal_workflow_id, worker_queue_id"
)


class Participant(BaseModel):
    id: uuid.UUID
    user_id: str
    user_name: str | None
    user_email: str | None
    user_avatar: str | None
    role: str
    joined_at: datetime
    last_active_at: datetime


class ExecutionOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    execution_type: str
    entity_id: uuid.UUID | None
    entity_name: str | None
    prompt: str
    system_prompt: str | None
    status: ExecutionStatus
    response: str | None
    error_message: str | None
    usage: dict[str, Any]
    execution_metadata: dict[str, Any]
    runner_name: str | None
    user_id: str | None
    user_name: str | None
    user_email: str | None
    user_avatar: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    last_message_at: datetime | None
    last_message_preview: str | None
    temporal_workflow_id: str | None
    worker_queue_id: uuid.UUID | None
    participants: list[Participant] = Field(default_factory=list)


class ExecutionQuery(ListQuery):
    status_filter: ExecutionStatus | None = None
    status: ExecutionStatus | None = None
    execution_type: Literal["agent", "team", "workflow", "plan_generation"] | None = None
    entity_id: uuid.UUID | None = None


class StatusReport(BaseModel):
    """A worker's status/result report."""

    status: ExecutionStatus | None = None
    response: str | None = None
    error_message: str | None = None
    usage: dict[str, Any] | None = None
    execution_metadata: dict[str, Any] | None = None
    reason: str | None = None
    mark_started: bool = False
    mark_completed: bool = False
    started_at: datetime | None = None
    completed_at: datetime | None = None
    version: int | None = Field(
        None, ge=0, le=BIGINT_MAX, description="Reports older than the last are ignored"
    )


class EventIn(BaseModel):
    event_type: str = Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$")
    data: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime | None = None
    event_key: str | None = Field(None, max_length=300)


class EventAccepted(BaseModel):
    success: bool
    execution_id: uuid.UUID
    seq: int | None = Field(description="null when this event_key was stored before")


class SessionIn(BaseModel):
    session_id: str = Field(min_length=1)
    messages: list[dict[str, Any]]
    user_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionOut(BaseModel):
    execution_id: uuid.UUID
    session_id: str | None
    messages: list[dict[str, Any]]
    metadata: dict[str, Any]


class MessageIn(BaseModel):
    message: str = Field(min_length=1)
    role: Literal["user"] = "user"


class MessageAccepted(BaseModel):
    success: bool
    execution_id: uuid.UUID
    message_id: str
    status: str


class ActionResult(BaseModel):
    success: bool
    execution_id: uuid.UUID
    workflow_id: str
    status: str
    message: str


class Transition(BaseModel):
    from_state: str | None
    to_state: str
    reasoning: str | None
    created_at: datetime


class TransitionList(BaseModel):
    execution_id: uuid.UUID
    transitions: list[Transition]


class StreamQuery(BaseModel):
    last_event_id: int | None = Field(None, ge=0, le=BIGINT_MAX)


def _worker_scope(call: Call, first_param: int) -> tuple[str, list[Any]]:
    """A worker token reaches only executions on its own queue."""
    if not call.principal.is_worker_token:
        return "", []
    return f" AND worker_queue_id = ${first_param}", [call.principal.worker_queue_id]


async def load_execution(
    call: Call,
    conn: Queryable | None = None,
    *,
    lock: bool = False,
) -> asyncpg.Record:
    execution_id = call.path_uuid("execution_id", "Execution")
    scope, args = _worker_scope(call, 3)
    row = await (conn or call.db).fetchrow(
        f"SELECT {COLUMNS} FROM executions WHERE id = $1 AND organization_id = $2{scope}"
        + (" FOR UPDATE" if lock else ""),
        execution_id,
        call.org,
        *args,
    )
    if row is None:
        raise not_found("Execution", execution_id)
    record: asyncpg.Record = row
    return record


async def execution_out(call: Call, row: asyncpg.Record) -> ExecutionOut:
    participants = await call.db.fetch(
        "SELECT id, user_id, user_name, user_email, user_avatar, role, joined_at, last_active_at "
        "FROM execution_participants WHERE execution_id = $1 ORDER BY joined_at",
        row["id"],
    )
    return ExecutionOut(
        **dict(row), participants=[Participant.model_validate(dict(p)) for p in participants]
    )


@router.get("/api/v1/executions")
async def list_executions(call: Call, query: ExecutionQuery) -> Page[ExecutionOut]:
    """The organization's executions, newest first."""
    rows, total = await fetch_page(
        call.db,
        table="executions",
        columns=COLUMNS,
        where="organization_id = $1",
        args=[call.org],
        query=query,
        order="created_at DESC, id",
        filters={
            "status": query.status_filter or query.status,
            "execution_type": query.execution_type,
            "entity_id": query.entity_id,
        },
    )
    items = [ExecutionOut(**dict(row)) for row in rows]
    return Page[ExecutionOut](items=items, total=total, limit=query.limit, offset=query.start)


@router.get("/api/v1/executions/{execution_id}")
async def get_execution(call: Call) -> ExecutionOut:
    """One execution with its participants."""
    return await execution_out(call, await load_execution(call))


@router.get("/api/v1/executions/{execution_id}/transitions")
async def list_transitions(call: Call) -> TransitionList:
    """Every status change of the execution, with its time, oldest first."""
    row = await load_execution(call)
    rows = await call.db.fetch(
        "SELECT from_state, to_state, reasoning, created_at FROM execution_transitions "
        "WHERE execution_id = $1 ORDER BY id",
        row["id"],
    )
    return TransitionList(
        execution_id=row["id"], transitions=[Transition.model_validate(dict(r)) for r in rows]
    )


@router.patch("/api/v1/executions/{execution_id}", role="worker_token")
async def report_status(call: Call, body: StatusReport) -> ExecutionOut:
    """Worker → control plane: status and result. Records the transition and streams a
    `status` event, and `done` or `error` when the execution ends."""
    async with call.db.acquire() as conn, conn.transaction():
        current = await load_execution(call, conn, lock=True)
        execution_id = current["id"]
        stale = body.version is not None and body.version <= await conn.fetchval(
            "SELECT status_version FROM executions WHERE id = $1", execution_id
        )
        if not stale:
            await apply_report(conn, current, body)
        row = await load_execution(call, conn)
    return await execution_out(call, row)


async def apply_report(conn: Conn, current: asyncpg.Record, body: StatusReport) -> None:
    execution_id = current["id"]
    new_status = body.status or current["status"]
    if current["status"] in TERMINAL_STATES and new_status != current["status"]:
        return  # an execution that ended stays ended
    now = datetime.now(UTC)
    started = body.started_at or (now if body.mark_started else None)
    completed = body.completed_at or (now if body.mark_completed else None)
    await conn.execute(
        "UPDATE executions SET status = $2, response = coalesce($3, response), "
        "error_message = coalesce($4, error_message), usage = coalesce($5, usage), "
        "execution_metadata = execution_metadata || coalesce($6, '{}'::jsonb), "
        "started_at = coalesce(started_at, $7), completed_at = coalesce(completed_at, $8), "
        "status_version = greatest(status_version, coalesce($9, status_version)), "
        "updated_at = now() WHERE id = $1",
        execution_id,
        new_status,
        body.response,
        body.error_message,
        body.usage,
        body.execution_metadata,
        started,
        completed,
        body.version,
    )
    if new_status == current["status"]:
        return
    await conn.execute(
        "INSERT INTO execution_transitions (execution_id, organization_id, from_state, to_state, "
        "reasoning) VALUES ($1, $2, $3, $4, $5)",
        execution_id,
        current["organization_id"],
        current["status"],
        new_status,
        body.reason,
    )
    await append_event(
        conn, execution_id, "status", {"status": new_status, "execution_id": str(execution_id)}
    )
    if new_status == "completed":
        await append_event(
            conn,
            execution_id,
            "done",
            {
                "execution_id": str(execution_id),
                "status": new_status,
                "response": body.response,
                "usage": body.usage or {},
            },
        )
    elif new_status in ("failed", "cancelled"):
        await append_event(
            conn,
            execution_id,
            "error",
            {
                "execution_id": str(execution_id),
                "status": new_status,
                "error": body.error_message or new_status,
                "error_type": "cancelled" if new_status == "cancelled" else "execution_failed",
            },
        )


@router.post("/api/v1/executions/{execution_id}/events", status=202, role="worker_token")
async def publish_event(call: Call, body: EventIn) -> EventAccepted:
    """Worker → control plane: one stream event; a repeated `event_key` is stored once."""
    async with call.db.acquire() as conn, conn.transaction():
        row = await load_execution(call, conn, lock=True)
        data = dict(body.data)
        seq = await append_event(conn, row["id"], body.event_type, data, body.event_key)
        if seq is not None and body.event_type == "message" and data.get("content"):
            await conn.execute(
                "UPDATE executions SET last_message_at = now(), last_message_preview = $2 "
                "WHERE id = $1",
                row["id"],
                str(data["content"])[:200],
            )
    return EventAccepted(success=True, execution_id=row["id"], seq=seq)


@router.post("/api/v1/executions/{execution_id}/session", status=201, role="worker_token")
async def persist_session(call: Call, body: SessionIn) -> SessionOut:
    """Worker → control plane: the conversation so far (replaces what was stored)."""
    row = await load_execution(call)
    await call.db.execute(
        "INSERT INTO sessions (execution_id, session_id, organization_id, user_id, messages, "
        "metadata) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (execution_id) DO UPDATE SET "
        "session_id = excluded.session_id, messages = excluded.messages, "
        "metadata = excluded.metadata, updated_at = now()",
        row["id"],
        body.session_id,
        call.org,
        body.user_id,
        body.messages,
        body.metadata,
    )
    return SessionOut(
        execution_id=row["id"],
        session_id=body.session_id,
        messages=body.messages,
        metadata=body.metadata,
    )


@router.get("/api/v1/executions/{execution_id}/session")
async def get_session(call: Call) -> SessionOut:
    """The stored conversation of an execution."""
    row = await load_execution(call)
    session = await call.db.fetchrow(
        "SELECT session_id, messages, metadata FROM sessions WHERE execution_id = $1", row["id"]
    )
    if session is None:
        return SessionOut(execution_id=row["id"], session_id=None, messages=[], metadata={})
    return SessionOut(execution_id=row["id"], **dict(session))


@router.get("/api/v1/executions/{execution_id}/stream")
async def stream(call: Call, query: StreamQuery) -> Response:
    """SSE: `connected`, the history (or what follows Last-Event-ID), `history_complete`, then
    live events until `done` or `error`; a keepalive comment every 15 s."""
    row = await load_execution(call)
    last_event_id = query.last_event_id
    header = call.request.headers.get("last-event-id")
    if header is not None:
        try:
            last_event_id = int(header)
        except ValueError:
            last_event_id = -1  # refused below, as an id out of range is
        if not 0 <= last_event_id <= BIGINT_MAX:  # event seqs are bigints
            raise ApiError(400, "Last-Event-ID must be an event id (an integer)")
    return StreamingResponse(
        stream_events(call.db, call.state.events, row, last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --- user actions: signals to the workflow ---------------------------------------------------


async def _handle(call: Call, row: asyncpg.Record) -> WorkflowHandle[Any, Any]:
    client = await call.state.temporal.client(call.org)
    return client.get_workflow_handle(
        row["temporal_workflow_id"] or workflow_id_for(str(row["id"]))
    )


def _require_status(row: asyncpg.Record, allowed: tuple[str, ...], action: str) -> None:
    if row["status"] not in allowed:
        raise ApiError(
            409,
            f"Cannot {action} an execution that is {row['status']}",
            details={"status": row["status"], "allowed_from": list(allowed)},
        )


async def _signal(call: Call, row: asyncpg.Record, signal: str, *args: Any) -> str:
    handle = await _handle(call, row)
    try:
        await handle.signal(signal, *args)
    except RPCError as error:
        call.state.metrics.temporal_errors.labels(operation="signal").inc()
        raise ApiError(
            409,
            f"The execution's workflow cannot take '{signal}': {error.message}",
            details={"status": row["status"]},
        ) from None
    return handle.id


@router.post("/api/v1/executions/{execution_id}/message", status=202)
async def send_message(call: Call, body: MessageIn) -> MessageAccepted:
    """A follow-up user message (signal `add_message`)."""
    row = await load_execution(call)
    _require_status(row, ("pending", "running", "waiting_for_input", "paused"), "message")
    now = datetime.now(UTC)
    message = ChatMessage(
        role=body.role,
        content=body.message,
        timestamp=now.isoformat(),
        message_id=f"{row['id']}_{int(now.timestamp() * 1_000_000)}",
        user_id=call.principal.actor,
    )
    await _signal(call, row, ADD_MESSAGE, message)
    async with call.db.acquire() as conn, conn.transaction():
        await append_event(
            conn, row["id"], "message", asdict(message), f"message:{message.message_id}"
        )
    return MessageAccepted(
        success=True, execution_id=row["id"], message_id=message.message_id, status=row["status"]
    )


@router.post("/api/v1/executions/{execution_id}/pause")
async def pause(call: Call) -> ActionResult:
    """Hold the execution after its current step (signal `pause_execution`)."""
    row = await load_execution(call)
    _require_status(row, ("running", "waiting_for_input"), "pause")
    workflow_id = await _signal(call, row, PAUSE_EXECUTION)
    return ActionResult(
        success=True,
        execution_id=row["id"],
        workflow_id=workflow_id,
        status="paused",
        message="Execution paused",
    )


@router.post("/api/v1/executions/{execution_id}/resume")
async def resume(call: Call) -> ActionResult:
    """Continue a paused execution (signal `resume_execution`)."""
    row = await load_execution(call)
    _require_status(row, ("paused",), "resume")
    workflow_id = await _signal(call, row, RESUME_EXECUTION)
    return ActionResult(
        success=True,
        execution_id=row["id"],
        workflow_id=workflow_id,
        status="running",
        message="Execution resumed",
    )


@router.post("/api/v1/executions/{execution_id}/mark-done", status=202)
async def mark_done(call: Call) -> ActionResult:
    """End the conversation after the current turn (signal `mark_as_done`)."""
    row = await load_execution(call)
    _require_status(row, ("pending", "running", "waiting_for_input", "paused"), "mark done")
    workflow_id = await _signal(call, row, MARK_AS_DONE)
    return ActionResult(
        success=True,
        execution_id=row["id"],
        workflow_id=workflow_id,
        status=row["status"],
        message="Execution will complete",
    )


@router.post("/api/v1/executions/{execution_id}/cancel")
async def cancel(call: Call) -> ActionResult:
    """Cancel the workflow; the execution ends `cancelled`."""
    row = await load_execution(call)
    _require_status(row, ("pending", "running", "waiting_for_input", "paused"), "cancel")
    handle = await _handle(call, row)
    try:
        await handle.cancel()
    except RPCError as error:
        raise ApiError(
            409,
            f"The workflow cannot be cancelled: {error.message}",
            details={"status": row["status"]},
        ) from None
    return ActionResult(
        success=True,
        execution_id=row["id"],
        workflow_id=handle.id,
        status="cancelled",
        message="Cancellation requested",
    )


@router.delete("/api/v1/executions/{execution_id}")
async def delete_execution(call: Call) -> Deleted:
    """Delete an execution's records; a live workflow is terminated first."""
    row = await load_execution(call)
    if row["status"] not in TERMINAL_STATES:
        handle = await _handle(call, row)
        with contextlib.suppress(RPCError):  # already closed
            await handle.terminate(reason="execution deleted")
    await call.db.execute(
        "DELETE FROM executions WHERE id = $1 AND organization_id = $2", row["id"], call.org
    )
    return Deleted(id=row["id"])
