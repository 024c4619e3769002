"""`/api/v1/executions` (reference §3.5): the read model of executions, the user's actions on
them (signals to the workflow), the worker protocol reports, and the SSE stream."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field, model_validator
from starlette.responses import Response, StreamingResponse

from api.access import execution_for
from api.errors import ApiError
from api.event_stream import stream_events
from api.execution_shapes import ExecutionOut, ExecutionStatus, execution_out
from api.pagination import ListQuery, Page, fetch_page, page_of
from api.routing import BIGINT_MAX, Call, Router, launch_services
from api.schemas import Deleted
from controlplane.errors import not_found
from controlplane.executions import actions, reports
from controlplane.executions.launch import record_member_execution
from controlplane.executions.lifecycle import COLUMNS, Report
from controlplane.executions.reports import WorkerReport, apply_reports
from workflows.contracts import TERMINAL_STATES

router = Router("executions")


class ExecutionQuery(ListQuery):
    status_filter: ExecutionStatus | None = None
    status: ExecutionStatus | None = None
    execution_type: Literal["agent", "team", "workflow", "plan_generation"] | None = None
    entity_id: uuid.UUID | None = None
    parent_execution_id: uuid.UUID | None = Field(
        None, description="Only the member runs of this team execution"
    )
    job_id: uuid.UUID | None = Field(None, description="Only the runs of this job")


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

    def as_event(self) -> reports.EventIn:
        return reports.EventIn(self.event_type, dict(self.data), self.event_key)


class EventAccepted(BaseModel):
    success: bool
    execution_id: uuid.UUID
    seq: int | None = Field(description="null when this event_key was stored before")


class SessionIn(BaseModel):
    session_id: str = Field(min_length=1)
    messages: list[dict[str, Any]]
    user_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def as_session(self) -> reports.SessionIn:
        return reports.SessionIn(self.session_id, self.messages, self.user_id, self.metadata)


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
            "parent_execution_id": query.parent_execution_id,
            "job_id": query.job_id,
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
        await apply_reports(conn, current, [WorkerReport(status=Report(**body.model_dump()))])
        row = await execution_for(call, conn)
    return await execution_out(call, row)


@router.post("/api/v1/executions/{execution_id}/events", status=202, role="worker_token")
async def publish_event(call: Call, body: EventIn) -> EventAccepted:
    """Worker → control plane: one stream event; a repeated `event_key` is stored once."""
    async with call.db.acquire() as conn, conn.transaction():
        row = await execution_for(call, conn, lock=True)
        (seq,) = await apply_reports(conn, row, [WorkerReport(event=body.as_event())])
    return EventAccepted(success=True, execution_id=row["id"], seq=seq)


class MemberRunIn(BaseModel):
    """A team execution's delegation: which member, what task; the key names the delegation
    (the same key answers the same run)."""

    agent_id: uuid.UUID
    task: str = Field(min_length=1)
    delegation_key: str = Field(min_length=1, max_length=200)


class MemberRunOut(BaseModel):
    execution_id: uuid.UUID
    workflow_id: str
    agent_id: uuid.UUID
    name: str
    input: dict[str, Any] = Field(description="The member run's AgentExecutionWorkflow input")


@router.post("/api/v1/executions/{execution_id}/members", role="worker_token")
async def record_member_run(call: Call, body: MemberRunIn) -> MemberRunOut:
    """Worker → control plane: a team execution delegates to a member. The control plane checks
    the member against its own rows (on the team, allowed by policy) and records the member's
    run as the team run's child; the team's workflow then starts it."""
    team_run = await execution_for(call)
    if team_run["status"] in TERMINAL_STATES:
        raise not_found("Running execution", team_run["id"])
    member = await record_member_execution(
        call.db,
        launch_services(call),
        team_run,
        body.agent_id,
        body.task,
        body.delegation_key,
    )
    return MemberRunOut(
        execution_id=uuid.UUID(member.execution_id),
        workflow_id=member.workflow_id,
        agent_id=uuid.UUID(member.agent_id),
        name=member.name,
        input=asdict(member.input),
    )


@router.post("/api/v1/executions/{execution_id}/session", status=201, role="worker_token")
async def persist_session(call: Call, body: SessionIn) -> SessionOut:
    """Worker → control plane: the conversation so far (replaces what was stored)."""
    async with call.db.acquire() as conn, conn.transaction():
        row = await execution_for(call, conn, lock=True)
        await apply_reports(conn, row, [WorkerReport(session=body.as_session())])
    return SessionOut(
        execution_id=row["id"],
        session_id=body.session_id,
        messages=body.messages,
        metadata=body.metadata,
    )


class ReportIn(BaseModel):
    """One report of a batch: exactly one of `status`, `event`, `session`."""

    status: StatusReport | None = None
    event: EventIn | None = None
    session: SessionIn | None = None

    @model_validator(mode="after")
    def one_kind(self) -> ReportIn:
        if sum(part is not None for part in (self.status, self.event, self.session)) != 1:
            raise ValueError("a report carries exactly one of status, event, session")
        return self

    def as_report(self) -> WorkerReport:
        if self.status is not None:
            return WorkerReport(status=Report(**self.status.model_dump()))
        if self.event is not None:
            return WorkerReport(event=self.event.as_event())
        assert self.session is not None
        return WorkerReport(session=self.session.as_session())


class ReportsIn(BaseModel):
    reports: list[ReportIn] = Field(min_length=1, max_length=100)


class ReportsAccepted(BaseModel):
    execution_id: uuid.UUID
    status: ExecutionStatus = Field(description="The execution's status after the batch")
    seqs: list[int | None] = Field(
        description="Each report's event seq (null: not an event, or stored before)"
    )


@router.post("/api/v1/executions/{execution_id}/reports", role="worker_token")
async def apply_report_batch(call: Call, body: ReportsIn) -> ReportsAccepted:
    """Worker → control plane: several reports (status, events, the session) in one request,
    applied in order in one transaction; each is idempotent, so a batch may be sent again."""
    async with call.db.acquire() as conn, conn.transaction():
        row = await execution_for(call, conn, lock=True)
        seqs = await apply_reports(conn, row, [item.as_report() for item in body.reports])
        status = await conn.fetchval("SELECT status FROM executions WHERE id = $1", row["id"])
    return ReportsAccepted(execution_id=row["id"], status=status, seqs=seqs)


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
    workflow_id = await actions.pause(call.db, call.state.temporal, row)
    return _acted(row, workflow_id, "paused", "Execution paused")


@router.post("/api/v1/executions/{execution_id}/resume")
async def resume(call: Call) -> ActionResult:
    """Continue a paused execution (signal `resume_execution`)."""
    row = await execution_for(call)
    workflow_id = await actions.resume(call.db, call.state.temporal, row)
    return _acted(row, workflow_id, "running", "Execution resumed")


@router.post("/api/v1/executions/{execution_id}/mark-done", status=202)
async def mark_done(call: Call) -> ActionResult:
    """End the conversation after the current turn (signal `mark_as_done`)."""
    row = await execution_for(call)
    workflow_id = await actions.mark_done(call.db, call.state.temporal, row)
    return _acted(row, workflow_id, row["status"], "Execution will complete")


@router.post("/api/v1/executions/{execution_id}/cancel")
async def cancel(call: Call) -> ActionResult:
    """Cancel the workflow; the execution ends `cancelled`."""
    row = await execution_for(call)
    workflow_id = await actions.cancel(call.db, call.state.temporal, row)
    return _acted(row, workflow_id, "cancelled", "Cancellation requested")


@router.delete("/api/v1/executions/{execution_id}")
async def delete_execution(call: Call) -> Deleted:
    """Delete an execution's records; a live workflow is terminated first."""
    row = await execution_for(call)
    await actions.delete(call.db, call.state.temporal, row)
    return Deleted(id=row["id"])
