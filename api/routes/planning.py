"""Task planning (reference §3.16, §5.4): the HTTP shapes of a plan generation
(controlplane/planning/generation.py), which PlanGenerationWorkflow runs on the system worker.

Every route starts the same workflow. The synchronous ones wait for it to end (woken by its
events, at most PLANNING_TIMEOUT_SECONDS) and answer the plan or the failure's status; the
stream relays its events; `/plans/generate` answers at once with the ids to follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field
from starlette.responses import Response, StreamingResponse

from api.event_stream import KEEPALIVE_SECONDS, sse
from api.routing import Call, Router
from controlplane.errors import DomainError, TimedOut
from controlplane.planning.generation import (
    GenerationStarted,
    ended,
    error_of,
    finished_plan,
    load_generation,
    plan_of,
    planner_model,
    start_plan_generation,
    system_worker_polling,
)
from controlplane.planning.plan import TaskPlanRequest, TaskPlanResponse

router = Router("planning")

PLAN_ERRORS = {
    502: "The model's answer was unusable (invalid twice) or the model call failed",
    503: "No model key on the system worker, no planner model, or no system worker running",
    504: "The plan was not ready in time (PLANNING_TIMEOUT_SECONDS); it goes on",
}
STRATEGY = "messages_api"


class PlanOut(BaseModel):
    plan: TaskPlanResponse
    execution_id: uuid.UUID = Field(description="The plan generation (an execution)")


class PlanningHealth(BaseModel):
    status: Literal["healthy", "degraded"]
    strategies: list[str] = Field(description="Every planning strategy runs this one planner")
    default_strategy: str
    planner_model: str | None
    system_worker: bool = Field(description="Whether a system worker serves the task queue")
    task_queue: str
    problems: list[str]
    timestamp: datetime


class GenerationAccepted(BaseModel):
    execution_id: uuid.UUID
    workflow_id: str
    status: str
    message: str
    status_url: str
    stream_url: str


class PlanFailure(BaseModel):
    kind: str = Field(
        description="model_not_configured, invalid_model_output, model_error, cancelled or "
        "internal_error"
    )
    message: str
    details: dict[str, Any]


class GenerationOut(BaseModel):
    execution_id: uuid.UUID
    workflow_id: str | None
    status: str
    plan: TaskPlanResponse | None
    error: PlanFailure | None
    analysis: dict[str, Any] | None
    planner_model: str | None
    usage: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


async def _start(call: Call, body: TaskPlanRequest, *, require_worker: bool) -> GenerationStarted:
    return await start_plan_generation(
        call.db,
        call.state.temporal,
        call.state.settings,
        call.caller,
        body,
        require_worker=require_worker,
    )


async def _wait_until_ended(call: Call, execution_id: uuid.UUID) -> asyncpg.Record:
    """The generation's row once it has ended, woken by its events."""
    timeout = call.state.settings.planning_timeout_seconds
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with call.state.events.subscribe(execution_id) as woken:
        while True:
            woken.clear()  # before reading, so an end committed after the read still wakes us
            row = await load_generation(call.db, call.org, execution_id)
            if ended(row):
                return row
            left = deadline - loop.time()
            if left <= 0:
                raise TimedOut(
                    f"The plan was not ready within {timeout} s; the generation goes on: "
                    f"follow it at /api/v1/plans/generation/{execution_id}",
                    details={"execution_id": str(execution_id), "status": row["status"]},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout=left)


async def _plan(call: Call, body: TaskPlanRequest) -> PlanOut:
    started = await _start(call, body, require_worker=True)
    row = await _wait_until_ended(call, started.execution_id)
    return PlanOut(plan=finished_plan(row), execution_id=started.execution_id)


@router.post("/api/v1/tasks/plan", responses=PLAN_ERRORS)
async def plan_task(call: Call, body: TaskPlanRequest) -> PlanOut:
    """Plan a task and answer the plan (`{plan: TaskPlanResponse}`)."""
    return await _plan(call, body)


@router.post("/api/v1/planning/plan", responses=PLAN_ERRORS)
async def plan_task_for_client(call: Call, body: TaskPlanRequest) -> PlanOut:
    """The official client's path (`task_planning.plan`): the same as `/tasks/plan`."""
    return await _plan(call, body)


# --- the stream ------------------------------------------------------------------------------


async def _relay(call: Call, started: GenerationStarted) -> AsyncIterator[str]:
    """Planning SSE (reference §5.4): `progress`, `tool_call`, `tool_result`, then `complete`
    or `error`; `event:`/`data:` lines without ids."""
    execution_id = started.execution_id
    yield sse(
        "progress",
        {
            "message": "Plan generation submitted",
            "progress": 0,
            "execution_id": str(execution_id),
            "workflow_id": started.workflow_id,
        },
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + call.state.settings.planning_timeout_seconds
    after = 0
    async with call.state.events.subscribe(execution_id) as woken:
        while True:
            woken.clear()
            rows = await call.db.fetch(
                "SELECT seq, event_type, data FROM execution_events "
                "WHERE execution_id = $1 AND seq > $2 ORDER BY seq",
                execution_id,
                after,
            )
            for event in rows:
                after = event["seq"]
                kind = event["event_type"]
                if kind in ("progress", "tool_call", "tool_result"):
                    yield sse(kind, event["data"])
                elif kind in ("done", "error"):
                    row = await load_generation(call.db, call.org, execution_id)
                    yield _ending(row)
                    return
            left = deadline - loop.time()
            if left <= 0:
                yield sse(
                    "error",
                    {
                        "error": "timeout",
                        "message": "The plan was not ready in time; the generation goes on",
                        "details": {"execution_id": str(execution_id)},
                        "suggestion": f"Follow it at /api/v1/plans/generation/{execution_id}",
                    },
                )
                return
            try:
                await asyncio.wait_for(woken.wait(), timeout=min(left, KEEPALIVE_SECONDS))
            except TimeoutError:
                yield ": keepalive\n\n"


SUGGESTIONS = {
    "model_not_configured": "Set ANTHROPIC_API_KEY for the system worker",
    "invalid_model_output": "Try again, or rephrase the task",
    "model_error": "Try again later",
}


def _ending(row: asyncpg.Record) -> str:
    plan = plan_of(row)
    if plan is not None:
        return sse(
            "complete",
            {
                "plan": plan.model_dump(mode="json"),
                "progress": 100,
                "message": "Plan generated",
                "execution_id": str(row["id"]),
            },
        )
    error = error_of(row) or {"kind": row["status"], "message": row["status"], "details": {}}
    return sse(
        "error",
        {
            "error": error["kind"],
            "message": error["message"],
            "details": {"execution_id": str(row["id"]), **error["details"]},
            "suggestion": SUGGESTIONS.get(error["kind"], ""),
        },
    )


async def _stream(call: Call, body: TaskPlanRequest) -> Response:
    started = await _start(call, body, require_worker=True)
    return StreamingResponse(
        _relay(call, started),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Execution-ID": str(started.execution_id),
        },
    )


@router.post("/api/v1/tasks/plan/stream", responses=PLAN_ERRORS)
async def plan_task_stream(call: Call, body: TaskPlanRequest) -> Response:
    """Plan a task, streaming its progress as server-sent events, ending with the plan."""
    return await _stream(call, body)


@router.post("/api/v1/planning/plan/stream", responses=PLAN_ERRORS)
async def plan_task_stream_for_client(call: Call, body: TaskPlanRequest) -> Response:
    """The official client's path (`task_planning.plan_stream`): the same as
    `/tasks/plan/stream`."""
    return await _stream(call, body)


# --- health, and generations followed by id --------------------------------------------------


@router.get("/api/v1/tasks/plan/health")
async def planning_health(call: Call) -> PlanningHealth:
    """Whether planning can run now: the planner model, and a system worker to run it."""
    settings = call.state.settings
    problems: list[str] = []
    model: str | None = None
    try:
        model = (await planner_model(call.db, call.org, settings)).value
    except DomainError as error:
        problems.append(error.message)
    polling = False
    try:
        client = await call.state.temporal.system_client()
        polling = await system_worker_polling(client, settings.system_task_queue)
    except DomainError as error:
        problems.append(error.message)
    if not polling and not problems:
        problems.append(f"No system worker serves task queue '{settings.system_task_queue}'")
    return PlanningHealth(
        status="healthy" if not problems else "degraded",
        strategies=[STRATEGY],
        default_strategy=STRATEGY,
        planner_model=model,
        system_worker=polling,
        task_queue=settings.system_task_queue,
        problems=problems,
        timestamp=datetime.now(UTC),
    )


@router.post("/api/v1/plans/generate", responses={503: PLAN_ERRORS[503]})
async def generate_plan(call: Call, body: TaskPlanRequest) -> GenerationAccepted:
    """Start a plan generation and answer at once; it runs whenever a system worker takes it."""
    started = await _start(call, body, require_worker=False)
    return GenerationAccepted(
        execution_id=started.execution_id,
        workflow_id=started.workflow_id,
        status="pending",
        message=f"Plan generation submitted (planner model {started.model})",
        status_url=f"/api/v1/plans/generation/{started.execution_id}",
        stream_url=f"/api/v1/executions/{started.execution_id}/stream",
    )


@router.get("/api/v1/plans/generation/{execution_id}")
async def get_generation(call: Call) -> GenerationOut:
    """A plan generation: its status, and its plan or why it failed."""
    row = await load_generation(
        call.db, call.org, call.path_uuid("execution_id", "Plan generation")
    )
    metadata = row["execution_metadata"] or {}
    error = error_of(row)
    return GenerationOut(
        execution_id=row["id"],
        workflow_id=row["temporal_workflow_id"],
        status=row["status"],
        plan=plan_of(row),
        error=PlanFailure.model_validate(error) if error is not None else None,
        analysis=metadata.get("analysis"),
        planner_model=metadata.get("planner_model"),
        usage=row["usage"] or {},
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
    )
