"""`/api/v1/workflows` (reference §3.4): user-defined workflows, their runs and the status
machine. The rules are the domain's (controlplane/runs/definitions.py); a run is
WorkflowInterpreterWorkflow on the system worker, and an execution of type `workflow`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import BaseModel, Field, field_validator, model_validator

from api.pagination import ListQuery, Page
from api.routing import Call, Router
from api.schemas import Deleted, PatchBody
from controlplane.crud import fetch_page
from controlplane.runs import control, definitions
from controlplane.runs.records import steps_of
from workflows.contracts import StepStatus

router = Router("workflows")

WorkflowStatus = Literal["pending", "running", "paused", "completed", "failed", "cancelled"]
StepId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
MAX_PROMPT = 20_000
TEMPLATE_DOC = (
    "A template: {{inputs.NAME}} is the run's input NAME, {{steps.ID.output}} the output of "
    "step ID (which this step must depend on, directly or through others). For an approval "
    "step, what the approver is shown."
)
START_ERRORS = {503: "Temporal is unreachable: the run could not start"}
READ_ONLY = (
    "is set by the workflow's runs: use POST /api/v1/workflows/{id}/start, /pause, /resume, "
    "/cancel or /complete"
)


class StepIn(BaseModel):
    """One step: an agent's or a team's execution, or a user's approval."""

    id: StepId
    name: str | None = Field(None, max_length=200)
    type: Literal["agent", "team", "approval"]
    agent_id: uuid.UUID | None = Field(None, description="For type agent: an agent of yours")
    team_id: uuid.UUID | None = Field(None, description="For type team: a team of yours")
    prompt: str = Field("", max_length=MAX_PROMPT, description=TEMPLATE_DOC)
    depends_on: list[StepId] = Field(
        default_factory=list, max_length=100, description="Steps that must complete first"
    )

    @model_validator(mode="after")
    def _entity(self) -> StepIn:
        wanted = {"agent": "agent_id", "team": "team_id"}.get(self.type)
        for key in ("agent_id", "team_id"):
            if key != wanted and getattr(self, key) is not None:
                raise ValueError(f"a step of type {self.type} has no {key}")
        if wanted is not None and getattr(self, wanted) is None:
            raise ValueError(f"a step of type {self.type} needs {wanted}")
        if wanted is not None and not self.prompt.strip():
            raise ValueError(f"a step of type {self.type} needs a prompt")
        return self


Steps = Annotated[list[StepIn], Field(max_length=100)]


class WorkflowCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=MAX_PROMPT)
    steps: Steps = Field(default_factory=list)
    configuration: dict[str, Any] = Field(default_factory=dict)
    team_id: uuid.UUID | None = Field(None, description="The team the workflow belongs to")


class WorkflowUpdate(PatchBody):
    required_if_sent = ("name", "steps", "configuration")

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=MAX_PROMPT)
    steps: Steps | None = None
    configuration: dict[str, Any] | None = None
    team_id: uuid.UUID | None = None
    status: str | None = Field(None, description=f"Read-only: it {READ_ONLY}")
    current_step: str | None = Field(None, description=f"Read-only: it {READ_ONLY}")
    state: dict[str, Any] | None = Field(None, description=f"Read-only: it {READ_ONLY}")

    @field_validator("status", "current_step", "state")
    @classmethod
    def _read_only(cls, value: Any) -> Any:
        raise ValueError(f"read-only: it {READ_ONLY}")


class StepRun(BaseModel):
    status: StepStatus
    execution_id: uuid.UUID | None = Field(description="The step's execution, once it started")
    output: str | None
    error_message: str | None
    prompt: str | None = Field(description="What the step was given, rendered")
    decided_by: str | None = Field(description="For an approval step: who decided")
    started_at: datetime | None
    completed_at: datetime | None


class WorkflowState(BaseModel):
    run_id: uuid.UUID | None = Field(description="The latest run (an execution of type workflow)")
    inputs: dict[str, Any]
    steps: dict[str, StepRun]


class WorkflowOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    name: str
    description: str | None
    status: WorkflowStatus = Field(description="The latest run's (pending before any)")
    steps: list[StepIn]
    current_step: str | None = Field(description="The first step running or waiting, if any")
    configuration: dict[str, Any]
    team_id: uuid.UUID | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    state: WorkflowState
    error_message: str | None


class WorkflowRunOut(BaseModel):
    run_id: uuid.UUID
    status: WorkflowStatus
    execution_status: str = Field(description="The run's execution status")
    inputs: dict[str, Any]
    current_step: str | None
    steps: dict[str, StepRun]
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class WorkflowQuery(ListQuery):
    status_filter: WorkflowStatus | None = None
    team_id: uuid.UUID | None = None


class StartIn(BaseModel):
    inputs: dict[str, Any] = Field(
        default_factory=dict, description="The values of the steps' {{inputs.NAME}}"
    )
    worker_queue_id: uuid.UUID = Field(description="Where the steps run: an active queue")


class DecisionIn(BaseModel):
    comment: str | None = Field(None, max_length=MAX_PROMPT)


class ActionResult(BaseModel):
    success: bool
    workflow_id: uuid.UUID
    run_id: uuid.UUID
    status: str = Field(description="What the run becomes once its workflow takes the action")
    message: str


class DecisionResult(BaseModel):
    success: bool
    workflow_id: uuid.UUID
    run_id: uuid.UUID
    step_id: str
    decision: Literal["approved", "rejected"]


def _workflow_status(run_status: str) -> str:
    if run_status in ("pending", "running", "waiting_for_input"):
        return "running"
    return run_status


def _step_runs(steps: list[asyncpg.Record]) -> dict[str, StepRun]:
    return {
        step["step_id"]: StepRun(
            status=step["status"],
            execution_id=step["child_execution_id"],
            output=step["output"],
            error_message=step["error_message"],
            prompt=step["prompt"],
            decided_by=step["decided_by"],
            started_at=step["started_at"],
            completed_at=step["completed_at"],
        )
        for step in steps
    }


def _current(steps: list[asyncpg.Record]) -> str | None:
    live = ("running", "waiting_for_input", "waiting_for_approval")
    return next((str(s["step_id"]) for s in steps if s["status"] in live), None)


async def _out(call: Call, row: asyncpg.Record) -> WorkflowOut:
    steps = await definitions.run_steps(call.db, row["run_id"])
    metadata = row["run_metadata"] or {}
    return WorkflowOut(
        id=row["id"],
        organization_id=row["organization_id"],
        name=row["name"],
        description=row["description"],
        status=row["status"],
        steps=[StepIn.model_validate(step) for step in row["steps"]],
        current_step=_current(steps),
        configuration=row["configuration"],
        team_id=row["team_id"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["run_started_at"],
        completed_at=row["run_completed_at"],
        state=WorkflowState(
            run_id=row["run_id"], inputs=metadata.get("inputs") or {}, steps=_step_runs(steps)
        ),
        error_message=row["run_error"],
    )


def _values(body: WorkflowCreate | WorkflowUpdate) -> dict[str, Any]:
    values = body.model_dump(
        mode="json",
        exclude_unset=isinstance(body, WorkflowUpdate),
        exclude={"status", "current_step", "state"},
    )
    if values.get("steps") is not None:
        values["steps"] = [
            {key: value for key, value in step.items() if value is not None}
            for step in values["steps"]
        ]
    if "team_id" in values and values["team_id"] is not None:
        values["team_id"] = uuid.UUID(values["team_id"])
    return values


def _workflow_id(call: Call) -> uuid.UUID:
    return call.path_uuid("workflow_id", "Workflow")


@router.post("/api/v1/workflows", status=201)
async def create_workflow(call: Call, body: WorkflowCreate) -> WorkflowOut:
    """Create a workflow (422 names every problem with its steps: a cycle, an unknown step,
    agent or team, a template using a step it does not depend on)."""
    row = await definitions.create_workflow(call.db, call.org, call.principal.actor, _values(body))
    return await _out(call, row)


@router.get("/api/v1/workflows")
async def list_workflows(call: Call, query: WorkflowQuery) -> Page[WorkflowOut]:
    """The organization's workflows, oldest first, each with its latest run's status."""
    rows, total = await fetch_page(
        call.db,
        table=definitions.WORKFLOWS.name,
        columns=definitions.COLUMNS,
        where="w.organization_id = $1",
        args=[call.org],
        limit=query.limit,
        offset=query.start,
        order=definitions.WORKFLOWS.order,
        filters={f"({definitions.STATUS_SQL})": query.status_filter, "w.team_id": query.team_id},
    )
    items = [await _out(call, row) for row in rows]
    return Page[WorkflowOut](items=items, total=total, limit=query.limit, offset=query.start)


@router.get("/api/v1/workflows/{workflow_id}")
async def get_workflow(call: Call) -> WorkflowOut:
    """A workflow: its status, current step and each step's status, execution and output in
    its latest run (`state.steps`)."""
    row = await definitions.WORKFLOWS.get(call.db, call.org, _workflow_id(call))
    return await _out(call, row)


@router.patch("/api/v1/workflows/{workflow_id}")
async def update_workflow(call: Call, body: WorkflowUpdate) -> WorkflowOut:
    """Change the fields sent, checked like at creation; a run already started keeps the
    definition it started with. `status`, `current_step` and `state` are the runs' (422)."""
    row = await definitions.update_workflow(call.db, call.org, _workflow_id(call), _values(body))
    return await _out(call, row)


@router.delete("/api/v1/workflows/{workflow_id}")
async def delete_workflow(call: Call) -> Deleted:
    """Delete a workflow (400 while a run is live: cancel it first); its runs stay listed as
    executions."""
    ident = _workflow_id(call)
    await definitions.delete_workflow(call.db, call.org, ident)
    return Deleted(id=ident)


@router.post("/api/v1/workflows/{workflow_id}/start", responses=START_ERRORS)
async def start_workflow(call: Call, body: StartIn) -> WorkflowOut:
    """Start a run (400 "Workflow is already running" while one is live): its steps run as a
    DAG on the worker queue, each agent or team step an execution of its own."""
    ident = _workflow_id(call)
    await definitions.start_workflow(
        call.db,
        call.state.temporal,
        call.state.settings,
        call.caller,
        ident,
        inputs=body.inputs,
        worker_queue_id=body.worker_queue_id,
    )
    return await _out(call, await definitions.WORKFLOWS.get(call.db, call.org, ident))


async def _act(call: Call, action: str) -> ActionResult:
    ident = _workflow_id(call)
    run = await definitions.latest_run(call.db, call.org, ident)
    temporal = call.state.temporal
    if action == "pause":
        await control.pause(temporal, run)
        status, message = "paused", "Pause requested: no further step starts until resumed"
    elif action == "resume":
        await control.resume(temporal, run)
        status, message = "running", "Resume requested"
    elif action == "cancel":
        await control.cancel(temporal, run)
        status, message = "cancelled", "Cancellation requested: running steps are cancelled"
    else:
        await control.complete(temporal, run)
        status, message = "completed", "Completion requested: running steps are cancelled"
    return ActionResult(
        success=True, workflow_id=ident, run_id=run["id"], status=status, message=message
    )


@router.post("/api/v1/workflows/{workflow_id}/pause")
async def pause_workflow(call: Call) -> ActionResult:
    """Pause the running workflow (400 unless running): steps not started wait; running ones
    go on."""
    return await _act(call, "pause")


@router.post("/api/v1/workflows/{workflow_id}/resume")
async def resume_workflow(call: Call) -> ActionResult:
    """Resume a paused workflow (400 unless paused)."""
    return await _act(call, "resume")


@router.post("/api/v1/workflows/{workflow_id}/cancel")
async def cancel_workflow(call: Call) -> ActionResult:
    """Cancel the workflow's run and its running steps (400 when it is not running)."""
    return await _act(call, "cancel")


@router.post("/api/v1/workflows/{workflow_id}/complete")
async def complete_workflow(call: Call) -> ActionResult:
    """End the run completed now: running steps are cancelled, the others skipped (400 when it
    is not running)."""
    return await _act(call, "complete")


async def _decide(call: Call, body: DecisionIn, approved: bool) -> DecisionResult:
    ident = _workflow_id(call)
    run = await definitions.latest_run(call.db, call.org, ident)
    step = control.step_of(run, await steps_of(call.db, run["id"]), call.path["step_id"])
    await control.decide(
        call.state.temporal,
        run,
        step,
        approved=approved,
        actor=call.principal.actor,
        comment=body.comment,
    )
    return DecisionResult(
        success=True,
        workflow_id=ident,
        run_id=run["id"],
        step_id=step["step_id"],
        decision="approved" if approved else "rejected",
    )


@router.post("/api/v1/workflows/{workflow_id}/steps/{step_id}/approve")
async def approve_step(call: Call, body: DecisionIn) -> DecisionResult:
    """Approve an approval step that waits (400 otherwise): it completes, and the steps after
    it run."""
    return await _decide(call, body, True)


@router.post("/api/v1/workflows/{workflow_id}/steps/{step_id}/reject")
async def reject_step(call: Call, body: DecisionIn) -> DecisionResult:
    """Reject an approval step that waits (400 otherwise): the steps after it are skipped, and
    the run fails once the others end."""
    return await _decide(call, body, False)


@router.get("/api/v1/workflows/{workflow_id}/runs")
async def list_runs(call: Call, query: ListQuery) -> Page[WorkflowRunOut]:
    """Every run of the workflow, newest first."""
    ident = _workflow_id(call)
    await definitions.WORKFLOWS.get(call.db, call.org, ident)
    rows, total = await fetch_page(
        call.db,
        table="executions",
        columns="id, status, execution_metadata, error_message, created_at, started_at, "
        "completed_at",
        where="organization_id = $1 AND execution_type = 'workflow' AND entity_id = $2",
        args=[call.org, ident],
        limit=query.limit,
        offset=query.start,
        order="created_at DESC, id DESC",
    )
    items = []
    for row in rows:
        steps = await steps_of(call.db, row["id"])
        items.append(
            WorkflowRunOut(
                run_id=row["id"],
                status=_workflow_status(row["status"]),
                execution_status=row["status"],
                inputs=(row["execution_metadata"] or {}).get("inputs") or {},
                current_step=_current(steps),
                steps=_step_runs(steps),
                error_message=row["error_message"],
                created_at=row["created_at"],
                started_at=row["started_at"],
                completed_at=row["completed_at"],
            )
        )
    return Page[WorkflowRunOut](items=items, total=total, limit=query.limit, offset=query.start)
