"""Executing a task plan (reference §3.16, 1.0.2's `/tasks/plan/execute`): the plan's tasks run
as a DAG by their `dependencies` (PlanOrchestratorWorkflow, workflows/runs.py), each an agent or
team execution of the organization on the given worker queue.

Who runs a task: its `agent_id`, else the plan's recommended entity (an agent or a team), else
the request's `agent_id`. A task's prompt is its title, description, details, test strategy and
subtasks; when it starts, the outputs of the tasks it depends on are added. Everything is
checked before anything is written (422 names every problem: duplicate ids, unknown
dependencies, a cycle, a task nobody can run).

Waiting tasks, the one rule: a task ends when its execution ends. A one-shot agent (or team)
answers once and its task completes with that answer. One that waits for input after answering
keeps its task `waiting_for_input` (listed in `waiting_tasks`) until its execution ends: a
message with `mark_done` (answered, then the conversation ends), or
`/executions/{id}/mark-done`. A plain message gets an answer and the task waits again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from controlplane.crud import fetch_page
from controlplane.errors import Invalid, not_found
from controlplane.executions.launch import Caller, find_active_queue
from controlplane.runs.graph import graph_errors
from controlplane.runs.records import (
    NewRun,
    NewStep,
    RunStarted,
    record_run,
    start_run_workflow,
)
from controlplane.settings import Settings
from controlplane.temporal import TemporalGateway
from workflows.contracts import RunInput, RunStep

EXECUTION_TYPE = "plan"
MAX_TASKS = 200
MAX_TEXT = 20_000
MAX_NAME = 300
TASK_ID_MAX = 2**31 - 1
# The plan view's status: the run's, with waiting for input named as Kubiya's plan executions.
PLAN_STATUSES = {"waiting_for_input": "pending_user_input"}
EXECUTION_STATUSES = {view: status for status, view in PLAN_STATUSES.items()}
PlanStatus = Literal[
    "pending", "running", "pending_user_input", "paused", "completed", "failed", "cancelled"
]
TaskId = Annotated[int, Field(ge=0, le=TASK_ID_MAX)]


# --- what a client sends: a TaskPlanResponse, or the parts of one a run needs ----------------


class PlanTaskIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: TaskId
    title: str = Field(min_length=1, max_length=MAX_NAME)
    description: str = Field("", max_length=MAX_TEXT)
    details: str = Field("", max_length=MAX_TEXT)
    test_strategy: str = Field("", max_length=MAX_TEXT)
    dependencies: list[TaskId] = Field(default_factory=list, max_length=100)
    agent_id: str | None = Field(
        None, max_length=MAX_NAME, description="Who runs the task (an agent of yours)"
    )
    subtasks: list[dict[str, Any]] = Field(
        default_factory=list, max_length=50, description="Listed in the task's prompt"
    )


class WorkstreamIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    team_name: str | None = Field(None, max_length=MAX_NAME)
    agent_name: str | None = Field(None, max_length=MAX_NAME)
    tasks: list[PlanTaskIn] = Field(max_length=MAX_TASKS)


class RecommendedIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    entity_type: Literal["agent", "team"] | None = None
    entity_id: str | None = Field(None, max_length=MAX_NAME)
    entity_name: str | None = Field(None, max_length=MAX_NAME)


EXAMPLE_PLAN: dict[str, Any] = {
    "title": "Rotate the TLS certificates",
    "summary": "Renew the certificates, then roll them out",
    "team_breakdown": [
        {
            "team_name": "Platform",
            "tasks": [
                {"id": 1, "title": "Renew", "description": "Renew the certificates"},
                {"id": 2, "title": "Roll out", "description": "Deploy them", "dependencies": [1]},
            ],
        }
    ],
}


class PlanToRun(BaseModel):
    """A plan to execute: a TaskPlanResponse (extra fields are kept in `plan_json`)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [EXAMPLE_PLAN]})

    title: str = Field(min_length=1, max_length=MAX_NAME)
    summary: str = Field("", max_length=MAX_TEXT)
    team_breakdown: list[WorkstreamIn] = Field(min_length=1, max_length=20)
    recommended_execution: RecommendedIn | None = None

    def tasks(self) -> list[PlanTaskIn]:
        return [task for stream in self.team_breakdown for task in stream.tasks]


@dataclass(frozen=True)
class PlanRunStarted:
    execution_id: uuid.UUID
    workflow_id: str
    plan_title: str
    total_tasks: int


# --- executing ---------------------------------------------------------------------------------


def task_prompt(plan: PlanToRun, task: PlanTaskIn) -> str:
    parts = [f'You are carrying out one task of the plan "{plan.title}".']
    if plan.summary:
        parts.append(f"The plan: {plan.summary}")
    parts.append(f"\nTask {task.id}: {task.title}")
    for heading, text in (
        ("", task.description),
        ("Details:\n", task.details),
        ("How to check it worked:\n", task.test_strategy),
    ):
        if text.strip():
            parts.append(f"\n{heading}{text.strip()}")
    subtasks = [str(sub.get("title") or "").strip() for sub in task.subtasks]
    if any(subtasks):
        parts.append("\nSubtasks:\n" + "\n".join(f"- {title}" for title in subtasks if title))
    return "\n".join(parts)


def _uuid(raw: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw) if raw else None
    except ValueError:
        return None


async def _existing(
    db: asyncpg.Pool[Any], org: str, table: str, ids: set[uuid.UUID]
) -> set[uuid.UUID]:
    if not ids:
        return set()
    rows = await db.fetch(
        f"SELECT id FROM {table} WHERE organization_id = $1 AND id = ANY($2)", org, list(ids)
    )
    return {row["id"] for row in rows}


async def _assign(
    db: asyncpg.Pool[Any], org: str, plan: PlanToRun, fallback: uuid.UUID | None
) -> tuple[dict[int, tuple[str, uuid.UUID]], list[str]]:
    """Who runs each task, and the problems with that."""
    errors: list[str] = []
    recommended: tuple[str, uuid.UUID] | None = None
    chosen = plan.recommended_execution
    if chosen is not None and chosen.entity_type and chosen.entity_id:
        ident = _uuid(chosen.entity_id)
        if ident is None:
            errors.append(f"recommended_execution.entity_id '{chosen.entity_id}' is not an id")
        else:
            recommended = (chosen.entity_type, ident)
    assigned: dict[int, tuple[str, uuid.UUID]] = {}
    for task in plan.tasks():
        if task.agent_id:
            ident = _uuid(task.agent_id)
            if ident is None:
                errors.append(f"task {task.id}: agent_id '{task.agent_id}' is not an id")
                continue
            assigned[task.id] = ("agent", ident)
        elif recommended is not None:
            assigned[task.id] = recommended
        elif fallback is not None:
            assigned[task.id] = ("agent", fallback)
        else:
            errors.append(
                f"task {task.id}: nobody runs it (no agent_id, no recommended agent or team, "
                "and no agent_id in the request)"
            )
    agents = {ident for kind, ident in assigned.values() if kind == "agent"}
    teams = {ident for kind, ident in assigned.values() if kind == "team"}
    found = await _existing(db, org, "agents", agents) | await _existing(db, org, "teams", teams)
    for task_id, (kind, ident) in assigned.items():
        if ident not in found:
            errors.append(f"task {task_id}: {kind} '{ident}' is not an {kind} of your organization")
    return assigned, errors


async def execute_plan(
    db: asyncpg.Pool[Any],
    temporal: TemporalGateway,
    settings: Settings,
    caller: Caller,
    plan: PlanToRun,
    *,
    worker_queue_id: uuid.UUID,
    agent_id: uuid.UUID | None = None,
    plan_generation_id: uuid.UUID | None = None,
) -> PlanRunStarted:
    """Check the plan and start its execution; nothing is written unless it can run."""
    org = caller.organization_id
    queue = await find_active_queue(db, org, worker_queue_id)
    if agent_id is not None and not await _existing(db, org, "agents", {agent_id}):
        raise not_found("Agent", agent_id)
    if plan_generation_id is not None:
        found = await db.fetchval(
            "SELECT 1 FROM executions WHERE id = $1 AND organization_id = $2 "
            "AND execution_type = 'plan_generation'",
            plan_generation_id,
            org,
        )
        if found is None:
            raise not_found("Plan generation", plan_generation_id)
    tasks = plan.tasks()
    errors = [] if tasks else ["the plan has no tasks"]
    if len(tasks) > MAX_TASKS:
        errors.append(f"the plan has {len(tasks)} tasks; at most {MAX_TASKS} run at once")
    errors += graph_errors(
        [(str(task.id), [str(d) for d in task.dependencies]) for task in tasks], noun="task"
    )
    assigned, problems = await _assign(db, org, plan, agent_id)
    errors += problems
    if errors:
        raise Invalid("The plan cannot run: " + "; ".join(errors[:5]), details={"errors": errors})
    steps = [
        RunStep(
            id=str(task.id),
            kind=assigned[task.id][0],
            name=task.title,
            entity_id=str(assigned[task.id][1]),
            prompt=task_prompt(plan, task),
            depends_on=[str(d) for d in task.dependencies],
        )
        for task in tasks
    ]
    async with db.acquire() as conn, conn.transaction():
        started: RunStarted = await record_run(
            conn,
            NewRun(
                caller=caller,
                execution_type=EXECUTION_TYPE,
                entity_id=plan_generation_id,
                entity_name=plan.title,
                prompt=plan.summary or plan.title,
                queue=queue,
                steps=[
                    NewStep(s.id, s.name, s.kind, uuid.UUID(str(s.entity_id)), s.depends_on)
                    for s in steps
                ],
                metadata={
                    "plan_title": plan.title,
                    "plan_generation_id": str(plan_generation_id) if plan_generation_id else None,
                    "agent_id": str(agent_id) if agent_id else None,
                },
                plan_json=plan.model_dump(mode="json"),
            ),
        )
    await start_run_workflow(
        db,
        temporal,
        settings,
        started,
        EXECUTION_TYPE,
        RunInput(
            execution_id=str(started.execution_id),
            organization_id=org,
            worker_queue_id=str(queue.id),
            steps=steps,
            title=plan.title,
        ),
    )
    return PlanRunStarted(started.execution_id, started.workflow_id, plan.title, len(steps))


# --- reading -----------------------------------------------------------------------------------

TALLY = (
    "(SELECT jsonb_build_object('total', count(*), "
    "'completed', count(*) FILTER (WHERE s.status = 'completed'), "
    "'failed', count(*) FILTER (WHERE s.status IN ('failed', 'rejected', 'cancelled')), "
    "'skipped', count(*) FILTER (WHERE s.status = 'skipped'), "
    "'waiting', count(*) FILTER (WHERE s.status = 'waiting_for_input')) "
    "FROM execution_steps s WHERE s.execution_id = executions.id) AS tally"
)
LIST_COLUMNS = (
    "id, status, entity_name, execution_metadata, created_at, started_at, completed_at, "
    f"error_message, {TALLY}"
)


def plan_status(status: str) -> str:
    return PLAN_STATUSES.get(status, status)


async def list_plan_executions(
    db: asyncpg.Pool[Any], org: str, *, status: str | None, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """The organization's plan executions, newest first."""
    return await fetch_page(
        db,
        table="executions",
        columns=LIST_COLUMNS,
        where="organization_id = $1 AND execution_type = 'plan'",
        args=[org],
        limit=limit,
        offset=offset,
        order="created_at DESC, id",
        filters={"status": EXECUTION_STATUSES.get(status, status) if status else None},
    )
