"""Executing a task plan (reference §3.16, 1.0.2): `/api/v1/tasks/plan/execute` and the plan
executions it starts. The rules are the domain's (controlplane/runs/plans.py); the run is
PlanOrchestratorWorkflow on the system worker. A plan execution is an execution of type `plan`:
cancel it (or pause and resume it) through `/api/v1/executions/{id}/...`."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field
from starlette.responses import Response, StreamingResponse

from api.errors import ApiError
from api.event_stream import stream_events
from api.pagination import ListQuery, Page
from api.routing import BIGINT_MAX, Call, Router
from controlplane.errors import not_found
from controlplane.runs import control, plans
from controlplane.runs.records import counts, load_run, steps_of
from workflows.contracts import StepStatus

router = Router("plan executions")

TASK_ID = re.compile(r"[0-9]{1,10}")
START_ERRORS = {503: "Temporal is unreachable: the plan execution could not start"}


class PlanExecuteIn(BaseModel):
    plan: plans.PlanToRun = Field(description="The plan (a TaskPlanResponse) to execute")
    worker_queue_id: uuid.UUID = Field(description="Where every task runs: an active queue")
    agent_id: uuid.UUID | None = Field(
        None, description="Runs the tasks that name no agent, when the plan recommends none"
    )
    plan_generation_id: uuid.UUID | None = Field(
        None, description="The plan generation the plan came from"
    )


class PlanExecuteOut(BaseModel):
    execution_id: uuid.UUID
    workflow_id: str
    status: str
    plan_title: str
    total_tasks: int
    status_url: str
    stream_url: str


class PlanTaskOut(BaseModel):
    task_id: int
    title: str
    status: StepStatus
    entity_type: Literal["agent", "team", "approval"]
    entity_id: uuid.UUID | None
    dependencies: list[int]
    execution_id: uuid.UUID | None = Field(description="The task's execution, once it started")
    output: str | None = Field(description="Its execution's answer (the latest, while waiting)")
    error_message: str | None
    started_at: datetime | None
    completed_at: datetime | None


class WaitingTask(BaseModel):
    task_id: int
    title: str
    execution_id: uuid.UUID | None
    output: str | None = Field(description="What it answered last: what it waits on you about")


class PlanExecutionOut(BaseModel):
    execution_id: uuid.UUID
    workflow_id: str | None
    plan_generation_id: uuid.UUID | None
    status: plans.PlanStatus
    plan_title: str | None
    total_tasks: int
    completed_tasks: int
    failed_tasks: int = Field(description="Tasks that failed (or were cancelled)")
    skipped_tasks: int = Field(description="Tasks not run because a task before them failed")
    progress_percentage: float
    waiting_tasks: list[WaitingTask]
    tasks: list[PlanTaskOut]
    worker_queue_id: uuid.UUID | None
    response: str | None
    error_message: str | None
    usage: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    plan_json: dict[str, Any] | None


class PlanExecutionSummary(BaseModel):
    execution_id: uuid.UUID
    plan_title: str | None
    status: plans.PlanStatus
    total_tasks: int
    completed_tasks: int
    failed_tasks: int
    skipped_tasks: int
    waiting_tasks: int
    progress_percentage: float
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class PlanExecutionQuery(ListQuery):
    status: plans.PlanStatus | None = None


class StreamQuery(BaseModel):
    last_event_id: int | None = Field(None, ge=0, le=BIGINT_MAX)


class TaskMessageIn(BaseModel):
    message: str = Field(min_length=1, max_length=100_000)
    mark_done: bool = Field(
        False,
        description="End the task's conversation after this answer, so the task completes",
    )


class TaskMessageAccepted(BaseModel):
    success: bool
    execution_id: uuid.UUID
    task_id: int
    task_execution_id: uuid.UUID
    mark_done: bool
    message: str


async def _plan_run(call: Call) -> asyncpg.Record:
    ident = call.path_uuid("execution_id", "Plan execution")
    row = await load_run(call.db, call.org, ident, plans.EXECUTION_TYPE)
    if row is None:
        raise not_found("Plan execution", ident)
    return row


def _task_id(step_id: str) -> int:
    return int(step_id)


@router.post("/api/v1/tasks/plan/execute", responses=START_ERRORS)
async def execute_plan(call: Call, body: PlanExecuteIn) -> PlanExecuteOut:
    """Run a plan's tasks on a worker queue, as a DAG by their dependencies (422 names every
    problem first: a cycle, an unknown dependency, a task nobody can run)."""
    started = await plans.execute_plan(
        call.db,
        call.state.temporal,
        call.state.settings,
        call.caller,
        body.plan,
        worker_queue_id=body.worker_queue_id,
        agent_id=body.agent_id,
        plan_generation_id=body.plan_generation_id,
    )
    return PlanExecuteOut(
        execution_id=started.execution_id,
        workflow_id=started.workflow_id,
        status="pending",
        plan_title=started.plan_title,
        total_tasks=started.total_tasks,
        status_url=f"/api/v1/tasks/plan/{started.execution_id}",
        stream_url=f"/api/v1/tasks/plan/{started.execution_id}/stream",
    )


@router.get("/api/v1/tasks/plan/plan-executions")
async def list_plan_executions(call: Call, query: PlanExecutionQuery) -> Page[PlanExecutionSummary]:
    """The organization's plan executions, newest first."""
    rows, total = await plans.list_plan_executions(
        call.db, call.org, status=query.status, limit=query.limit, offset=query.start
    )
    items = []
    for row in rows:
        tally = row["tally"] or {}
        done = tally.get("completed", 0) + tally.get("failed", 0) + tally.get("skipped", 0)
        total_tasks = int(tally.get("total", 0))
        items.append(
            PlanExecutionSummary(
                execution_id=row["id"],
                plan_title=row["entity_name"],
                status=plans.plan_status(row["status"]),
                total_tasks=total_tasks,
                completed_tasks=tally.get("completed", 0),
                failed_tasks=tally.get("failed", 0),
                skipped_tasks=tally.get("skipped", 0),
                waiting_tasks=tally.get("waiting", 0),
                progress_percentage=round(100.0 * done / total_tasks, 1) if total_tasks else 100.0,
                error_message=row["error_message"],
                created_at=row["created_at"],
                started_at=row["started_at"],
                completed_at=row["completed_at"],
            )
        )
    return Page[PlanExecutionSummary](
        items=items, total=total, limit=query.limit, offset=query.start
    )


@router.get("/api/v1/tasks/plan/{execution_id}")
async def get_plan_execution(call: Call) -> PlanExecutionOut:
    """A plan execution: its status, each task's status, execution and output, the tasks that
    wait for input, and the plan."""
    row = await _plan_run(call)
    steps = await steps_of(call.db, row["id"])
    tally = counts(steps)
    tasks = [
        PlanTaskOut(
            task_id=_task_id(step["step_id"]),
            title=step["name"],
            status=step["status"],
            entity_type=step["kind"],
            entity_id=step["entity_id"],
            dependencies=[_task_id(d) for d in step["depends_on"]],
            execution_id=step["child_execution_id"],
            output=step["output"],
            error_message=step["error_message"],
            started_at=step["started_at"],
            completed_at=step["completed_at"],
        )
        for step in steps
    ]
    metadata = row["execution_metadata"] or {}
    generation = metadata.get("plan_generation_id")
    return PlanExecutionOut(
        execution_id=row["id"],
        workflow_id=row["temporal_workflow_id"],
        plan_generation_id=uuid.UUID(generation) if generation else None,
        status=plans.plan_status(row["status"]),
        plan_title=row["entity_name"],
        total_tasks=tally.total,
        completed_tasks=tally.completed,
        failed_tasks=tally.failed,
        skipped_tasks=tally.skipped,
        progress_percentage=tally.progress_percentage,
        waiting_tasks=[
            WaitingTask(
                task_id=task.task_id,
                title=task.title,
                execution_id=task.execution_id,
                output=task.output,
            )
            for task in tasks
            if task.status == "waiting_for_input"
        ],
        tasks=tasks,
        worker_queue_id=row["worker_queue_id"],
        response=row["response"],
        error_message=row["error_message"],
        usage=row["usage"] or {},
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        plan_json=row["plan_json"],
    )


@router.get("/api/v1/tasks/plan/{execution_id}/stream")
async def stream_plan_execution(call: Call, query: StreamQuery) -> Response:
    """The plan execution's events as SSE, as `/executions/{id}/stream`: `task_status` at each
    task's change (with the run's progress), `status`, then `done` or `error`."""
    row = await _plan_run(call)
    last_event_id = query.last_event_id
    header = call.request.headers.get("last-event-id")
    if header is not None:
        try:
            last_event_id = int(header)
        except ValueError:
            last_event_id = -1
        if not 0 <= last_event_id <= BIGINT_MAX:
            raise ApiError(400, "Last-Event-ID must be an event id (an integer)")
    return StreamingResponse(
        stream_events(call.db, call.state.events, row, last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/api/v1/tasks/plan/{execution_id}/tasks/{task_id}/message", status=202)
async def message_task(call: Call, body: TaskMessageIn) -> TaskMessageAccepted:
    """Answer a task that waits for input: the plan passes the message on to the task's
    execution. The task keeps waiting after the answer unless `mark_done` (or
    `/executions/{id}/mark-done` on its execution) ends its conversation."""
    row = await _plan_run(call)
    raw = call.path["task_id"]
    steps = await steps_of(call.db, row["id"])
    if TASK_ID.fullmatch(raw) is None:
        raise not_found("Task", raw)
    step = control.step_of(row, steps, str(int(raw)))
    await control.message(
        call.state.temporal,
        row,
        step,
        text=body.message,
        mark_done=body.mark_done,
        actor=call.principal.actor,
    )
    return TaskMessageAccepted(
        success=True,
        execution_id=row["id"],
        task_id=_task_id(step["step_id"]),
        task_execution_id=step["child_execution_id"],
        mark_done=body.mark_done,
        message="Message passed on to the task's execution",
    )
