"""`/api/v1/executions` (reference §3.5): the read model of executions, the user's actions on
them (signals to the workflow), the worker protocol reports, and the SSE stream."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field
from starlette.responses import Response, StreamingResponse

from api.access import execution_for
from api.errors import ApiError
from api.event_stream import stream_events
from api.pagination import ListQuery, Page, fetch_page, page_of
from api.routing import BIGINT_MAX, Call, Router
from api.schemas import Deleted
from controlplane.executions import actions
from controlplane.executions.events import append_event
from controlplane.executions.lifecycle import COLUMNS, Report, report

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
        counted="executions",
    )
    return page_of(ExecutionOut, [dict(row) for row in rows], total, query)


@router.get("/api/v1/executions/{execution_id}")
async def get_execution(call: Call) -> ExecutionOut:
    """One execution with its participants."""
    return await execution_out(call, await execution_for(call))


@router.get("/api/v1/executions/{execution_id}/transitions")
async def list_transitions(call: Call) -> TransitionList:
    """Every status change of the execution, with its time, oldest first."""
    row = await execution_for(call)
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
        current = await execution_for(call, conn, lock=True)
        await report(conn, current, Report(**body.model_dump()))
        row = await execution_for(call, conn)
    return await execution_out(call, row)


@router.post("/api/v1/executions/{execution_id}/events", status=202, role="worker_token")
async def publish_event(call: Call, body: EventIn) -> EventAccepted:
    """Worker → control plane: one stream event; a repeated `event_key` is stored once."""
    async with call.db.acquire() as conn, conn.transaction():
        row = await execution_for(call, conn, lock=True)
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
    row = await execution_for(call)
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
    row = await execution_for(call)
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
    row = await execution_for(call)
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


# --- user actions: signals to the workflow (controlplane/executions/actions.py) ---------------


def _acted(row: asyncpg.Record, workflow_id: str, status: str, message: str) -> ActionResult:
    return ActionResult(
        success=True,
        execution_id=row["id"],
        workflow_id=workflow_id,
        status=status,
        message=message,
    )


@router.post("/api/v1/executions/{execution_id}/message", status=202)
async def send_message(call: Call, body: MessageIn) -> MessageAccepted:
    """A follow-up user message (signal `add_message`)."""
    row = await execution_for(call)
    message = await actions.send_message(
        call.db, call.state.temporal, row, body.message, call.principal.actor
    )
    return MessageAccepted(
        success=True, execution_id=row["id"], message_id=message.message_id, status=row["status"]
    )


@router.post("/api/v1/executions/{execution_id}/pause")
async def pause(call: Call) -> ActionResult:
    """Hold the execution after its current step (signal `pause_execution`)."""
    row = await execution_for(call)
    workflow_id = await actions.pause(call.state.temporal, row)
    return _acted(row, workflow_id, "paused", "Execution paused")


@router.post("/api/v1/executions/{execution_id}/resume")
async def resume(call: Call) -> ActionResult:
    """Continue a paused execution (signal `resume_execution`)."""
    row = await execution_for(call)
    workflow_id = await actions.resume(call.state.temporal, row)
    return _acted(row, workflow_id, "running", "Execution resumed")


@router.post("/api/v1/executions/{execution_id}/mark-done", status=202)
async def mark_done(call: Call) -> ActionResult:
    """End the conversation after the current turn (signal `mark_as_done`)."""
    row = await execution_for(call)
    workflow_id = await actions.mark_done(call.state.temporal, row)
    return _acted(row, workflow_id, row["status"], "Execution will complete")


@router.post("/api/v1/executions/{execution_id}/cancel")
async def cancel(call: Call) -> ActionResult:
    """Cancel the workflow; the execution ends `cancelled`."""
    row = await execution_for(call)
    workflow_id = await actions.cancel(call.state.temporal, row)
    return _acted(row, workflow_id, "cancelled", "Cancellation requested")


@router.delete("/api/v1/executions/{execution_id}")
async def delete_execution(call: Call) -> Deleted:
    """Delete an execution's records; a live workflow is terminated first."""
    row = await execution_for(call)
    await actions.delete(call.db, call.state.temporal, row)
    return Deleted(id=row["id"])
