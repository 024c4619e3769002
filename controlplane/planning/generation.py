"""Plan generations: starting one, what its steps record, and reading it back.

A plan generation is an execution (`execution_type: plan_generation`) in the executions table:
the same row, participants, transitions, events and webhooks as an agent run, its status
changed only through the lifecycle (controlplane/executions/lifecycle.py). It does not start
through `start_execution`, which starts an *agent* on a *worker queue* of the organization's
namespace after the agent_execution policy check; a plan generation has no agent and no queue
and runs on the system worker, in the control plane's namespace (PlanGenerationWorkflow).

The plan itself is the execution's `response` (the TaskPlanResponse as JSON text): a
`plan_json` column (reference §4) needs a migration numbered after the ones reserved for
parallel work, and can take it over then without changing `plan_of`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError

from controlplane.db import Queryable
from controlplane.errors import (
    Broken,
    Conflict,
    DomainError,
    TimedOut,
    Unavailable,
    UpstreamFailed,
    not_found,
)
from controlplane.executions.events import append_event
from controlplane.executions.launch import Caller
from controlplane.executions.lifecycle import COLUMNS, Report, apply_report
from controlplane.models import default_model_row, model_info, resolve_model
from controlplane.planning.finalize import build_plan, resolve_analysis
from controlplane.planning.plan import AnalysisDraft, PlanDraft, TaskPlanRequest, TaskPlanResponse
from controlplane.planning.resources import PLANNING_TOOLS
from controlplane.settings import Settings
from controlplane.temporal import TemporalGateway
from workflows.contracts import (
    PLAN_GENERATION_WORKFLOW,
    TERMINAL_STATES,
    ModelSpec,
    PlanBegin,
    PlanFinish,
    PlanGenerationInput,
    PlanModelStep,
    PlanningToolCall,
    PlanningToolResult,
    StepUsage,
    plan_workflow_id,
)

EXECUTION_TYPE = "plan_generation"
ENTITY_NAME = "Task planner"
# A generation no system worker takes up within this long times out (and is settled failed).
EXECUTION_TIMEOUT = timedelta(hours=1)
# Progress (0-100) as each stage starts; the stream's `complete` is 100.
PROGRESS = {"begin": 5, "analysis": 25, "analysis_repair": 40, "plan": 50, "plan_repair": 70}
PROGRESS_MESSAGES = {
    "begin": "Plan generation started",
    "analysis": "Analysing the task and choosing who runs it",
    "analysis_repair": "The analysis did not validate: asking the model to correct it",
    "plan": "Writing the plan",
    "plan_repair": "The plan did not validate: asking the model to correct it",
}


class ExecutionGone(DomainError):
    """The generation's execution row was deleted while it ran."""


@dataclass(frozen=True)
class GenerationStarted:
    execution_id: uuid.UUID
    workflow_id: str
    model: str


# --- starting ----------------------------------------------------------------------------------


async def planner_model(db: Queryable, org: str, settings: Settings) -> ModelSpec:
    """The model the planner calls: PLANNING_MODEL, else the organization's default model."""
    if settings.planning_model:
        model = await resolve_model(db, org, settings.planning_model)
        if model is None:
            raise Unavailable(
                f"PLANNING_MODEL names '{settings.planning_model}', which is not in the model "
                "catalogue"
            )
    else:
        row = await default_model_row(db, org)
        if row is None:
            raise Unavailable(
                "No planner model: set PLANNING_MODEL or give the organization a default "
                "(recommended, enabled) model"
            )
        model = model_info(row)
    if not model.enabled:
        raise Unavailable(f"The planner model '{model.value}' is disabled")
    pricing = model.pricing
    return ModelSpec(
        value=model.value,
        api_model=model.api_model,
        input_per_million=pricing.input_per_million if pricing else 0.0,
        output_per_million=pricing.output_per_million if pricing else 0.0,
    )


async def system_worker_polling(client: Client, task_queue: str) -> bool:
    """Whether a system worker has polled the task queue lately (Temporal keeps pollers for a
    few minutes, so a worker that just died still counts: the wait's timeout covers that)."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    try:
        described = await client.workflow_service.describe_task_queue(
            request, timeout=timedelta(seconds=5)
        )
    except RPCError as error:
        raise Unavailable(
            f"Temporal could not describe task queue {task_queue}: {error.message}"
        ) from None
    return len(described.pollers) > 0


async def _check_project(db: Queryable, org: str, project_id: str | None) -> None:
    if project_id is None:
        return
    try:
        ident = uuid.UUID(project_id)
    except ValueError:
        raise not_found("Project", project_id) from None
    found = await db.fetchval(
        "SELECT 1 FROM projects WHERE id = $1 AND organization_id = $2", ident, org
    )
    if found is None:
        raise not_found("Project", project_id)


async def start_plan_generation(
    db: asyncpg.Pool[Any],
    temporal: TemporalGateway,
    settings: Settings,
    caller: Caller,
    request: TaskPlanRequest,
    *,
    require_worker: bool,
) -> GenerationStarted:
    """Check, record and start a plan generation. Everything is checked before anything is
    written; `require_worker` refuses (503) when no system worker serves the task queue, for
    callers that would otherwise wait for nobody. A workflow that cannot start leaves no row."""
    org = caller.organization_id
    await _check_project(db, org, request.project_id)
    model = await planner_model(db, org, settings)
    client = await temporal.system_client()
    if require_worker and not await system_worker_polling(client, settings.system_task_queue):
        raise Unavailable(
            f"No system worker serves task queue '{settings.system_task_queue}': start "
            "`controlplane system-worker` (it runs the planner)",
            details={"task_queue": settings.system_task_queue},
        )
    execution_id = uuid.uuid4()
    workflow_id = plan_workflow_id(str(execution_id))
    metadata = {
        "organization_id": org,
        "planner_model": model.value,
        "priority": request.priority,
        "iteration": request.iteration,
        "project_id": request.project_id,
    }
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO executions (id, organization_id, execution_type, entity_name, "
            "user_id, prompt, execution_metadata, temporal_workflow_id, user_role, "
            "trigger_source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'user')",
            execution_id,
            org,
            EXECUTION_TYPE,
            ENTITY_NAME,
            caller.actor,
            request.description,
            metadata,
            workflow_id,
            caller.role,
        )
        await conn.execute(
            "INSERT INTO execution_participants (id, execution_id, organization_id, user_id, "
            "role) VALUES ($1, $2, $3, $4, 'owner')",
            uuid.uuid4(),
            execution_id,
            org,
            caller.actor,
        )
        await conn.execute(
            "INSERT INTO execution_transitions (execution_id, organization_id, to_state, "
            "reasoning) VALUES ($1, $2, 'pending', 'plan generation submitted')",
            execution_id,
            org,
        )
    try:
        await client.start_workflow(
            PLAN_GENERATION_WORKFLOW,
            PlanGenerationInput(
                execution_id=str(execution_id),
                organization_id=org,
                request=request.model_dump(mode="json"),
                model=model,
            ),
            id=workflow_id,
            task_queue=settings.system_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            execution_timeout=EXECUTION_TIMEOUT,
        )
    except Exception as error:
        await db.execute("DELETE FROM executions WHERE id = $1", execution_id)
        temporal.count_error("start_workflow")
        raise Unavailable(f"Could not start the plan generation on Temporal: {error}") from None
    return GenerationStarted(execution_id, workflow_id, model.value)


# --- reading -----------------------------------------------------------------------------------


async def load_generation(db: Queryable, org: str, execution_id: uuid.UUID) -> asyncpg.Record:
    """The organization's plan generation (another organization's, or another kind of
    execution, is not found)."""
    row: asyncpg.Record | None = await db.fetchrow(
        f"SELECT {COLUMNS} FROM executions WHERE id = $1 AND organization_id = $2 "
        "AND execution_type = $3",
        execution_id,
        org,
        EXECUTION_TYPE,
    )
    if row is None:
        raise not_found("Plan generation", execution_id)
    return row


def plan_of(row: asyncpg.Record) -> TaskPlanResponse | None:
    if row["status"] != "completed" or not row["response"]:
        return None
    return TaskPlanResponse.model_validate_json(row["response"])


def error_of(row: asyncpg.Record) -> dict[str, Any] | None:
    if row["status"] not in ("failed", "cancelled"):
        return None
    recorded = (row["execution_metadata"] or {}).get("error") or {}
    return {
        "kind": recorded.get("kind", row["status"]),
        "message": recorded.get("message") or row["error_message"] or row["status"],
        "details": recorded.get("details") or {},
    }


# How each kind of failure answers a caller that waited for the plan.
FAILURES: dict[str, type[DomainError]] = {
    "model_not_configured": Unavailable,
    "invalid_model_output": UpstreamFailed,
    "model_error": UpstreamFailed,
    "cancelled": Conflict,
    "internal_error": Broken,
}


def finished_plan(row: asyncpg.Record) -> TaskPlanResponse:
    """The plan of a generation that has ended, or the domain error its failure maps to."""
    plan = plan_of(row)
    if plan is not None:
        return plan
    error = error_of(row)
    if error is None:
        raise TimedOut(
            f"The plan generation is still {row['status']}",
            details={"execution_id": str(row["id"]), "status": row["status"]},
        )
    kind = FAILURES.get(error["kind"], UpstreamFailed)
    raise kind(
        error["message"],
        details={"execution_id": str(row["id"]), "kind": error["kind"], **error["details"]},
    )


def ended(row: asyncpg.Record) -> bool:
    return row["status"] in TERMINAL_STATES


# --- what the steps record (called by the system worker's activities) --------------------------


async def publish(
    db: asyncpg.Pool[Any], execution_id: str, event_type: str, data: dict[str, Any], key: str
) -> None:
    """One event of the generation's stream; a repeated key (a retried activity) lands once."""
    async with db.acquire() as conn, conn.transaction():
        found = await conn.fetchval(
            "SELECT 1 FROM executions WHERE id = $1 FOR UPDATE", uuid.UUID(execution_id)
        )
        if found is None:
            raise ExecutionGone(f"Plan generation {execution_id} no longer exists")
        await append_event(conn, uuid.UUID(execution_id), event_type, data, key)


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def progress(db: asyncpg.Pool[Any], execution_id: str, stage: str) -> None:
    await publish(
        db,
        execution_id,
        "progress",
        {"message": PROGRESS_MESSAGES[stage], "progress": PROGRESS[stage], "stage": stage},
        f"progress:{stage}",
    )


async def begin(db: asyncpg.Pool[Any], start: PlanBegin) -> None:
    """The generation runs."""
    ident = uuid.UUID(start.execution_id)
    async with db.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(
            f"SELECT {COLUMNS} FROM executions WHERE id = $1 FOR UPDATE", ident
        )
        if current is None:
            raise ExecutionGone(f"Plan generation {start.execution_id} no longer exists")
        await apply_report(
            conn,
            current,
            Report(status="running", mark_started=True, reason="plan generation started"),
        )
    await progress(db, start.execution_id, "begin")


async def step_started(db: asyncpg.Pool[Any], step: PlanModelStep) -> None:
    await progress(db, step.execution_id, step.step + ("_repair" if step.repair else ""))


async def run_tool(db: asyncpg.Pool[Any], call: PlanningToolCall) -> PlanningToolResult:
    """A planning tool's read, between its `tool_call` and `tool_result` events."""
    started = time.monotonic()
    await publish(
        db,
        call.execution_id,
        "tool_call",
        {"tool_name": call.tool_name, "tool_id": call.tool_id, "step": 1, "timestamp": _now()},
        f"tool_call:{call.tool_id}",
    )
    items, total = await PLANNING_TOOLS[call.tool_name](db, call.organization_id)
    await publish(
        db,
        call.execution_id,
        "tool_result",
        {
            "tool_name": call.tool_name,
            "tool_id": call.tool_id,
            "status": "success",
            "duration": round(time.monotonic() - started, 4),
            "step": 1,
            "count": len(items),
            "total": total,
        },
        f"tool_result:{call.tool_id}",
    )
    return PlanningToolResult(call.tool_name, items, total)


def usage_of(steps: list[StepUsage]) -> dict[str, Any]:
    return {
        "input_tokens": sum(s.input_tokens for s in steps),
        "output_tokens": sum(s.output_tokens for s in steps),
        "cost_usd": round(sum(s.cost_usd for s in steps), 8),
        "model_calls": sum(s.calls for s in steps),
        "steps": [asdict(s) for s in steps],
    }


async def finish(db: asyncpg.Pool[Any], outcome: PlanFinish) -> dict[str, Any] | None:
    """Record how the generation ended; a completed one's plan is built here (names to ids,
    costs from prices) and returned. An execution deleted meanwhile records nothing."""
    plan: TaskPlanResponse | None = None
    metadata: dict[str, Any] = {}
    if outcome.status == "completed":
        assert outcome.analysis is not None and outcome.draft is not None
        analysis = resolve_analysis(
            AnalysisDraft.model_validate(outcome.analysis), outcome.resources
        )
        plan = await build_plan(
            db,
            outcome.organization_id,
            analysis,
            PlanDraft.model_validate(outcome.draft),
            outcome.resources,
        )
        metadata["analysis"] = analysis.model_dump(
            mode="json", exclude={"discovered_agents", "discovered_teams"}
        )
        metadata["plan_title"] = plan.title
    elif outcome.error is not None:
        metadata["error"] = asdict(outcome.error)
    change = Report(
        status=outcome.status,
        response=plan.model_dump_json() if plan is not None else None,
        error_message=outcome.error.message if outcome.error else None,
        usage=usage_of(outcome.usage),
        execution_metadata=metadata,
        reason=(
            "plan generated"
            if plan is not None
            else (outcome.error.message if outcome.error else outcome.status)
        ),
        mark_completed=True,
    )
    async with db.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(
            f"SELECT {COLUMNS} FROM executions WHERE id = $1 FOR UPDATE",
            uuid.UUID(outcome.execution_id),
        )
        if current is None:
            return None
        await apply_report(conn, current, change)
    return plan.model_dump(mode="json") if plan is not None else None
