"""User-defined workflows (reference §3.4): a definition (name, steps, configuration, team) and
its runs, each an execution of type `workflow` run by WorkflowInterpreterWorkflow
(workflows/runs.py) on the system worker.

A step is `{id, name?, type: agent|team|approval, agent_id|team_id, prompt, depends_on[]}`;
its prompt is a template over `{{inputs.NAME}}` and `{{steps.ID.output}}`. A definition is
checked whenever it is written (422 names every problem): step ids unique, dependencies that
are steps, no cycle, the agents and teams the organization's, and a template naming only steps
the step depends on (directly or through others: their outputs exist when it starts). A start
checks it again (an agent may have been deleted since) and that every input its templates name
is given.

The reference's status machine, now backed by the run: a workflow's status is its latest run's
(`pending` before any; a run waiting for input or approval is `running`). `start` while a run is
live is 400; `pause` only from running; `resume` only from paused; `cancel` and `complete` only
while a run is live. A run uses the definition as it was when it started.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from controlplane.crud import Table
from controlplane.db import Conn, Queryable, conflict_on_duplicate
from controlplane.errors import Invalid, Refused, not_found
from controlplane.executions.launch import Caller, find_active_queue
from controlplane.runs.graph import ancestors, graph_errors
from controlplane.runs.records import (
    NewRun,
    NewStep,
    RunStarted,
    record_run,
    start_run_workflow,
    steps_of,
)
from controlplane.settings import Settings
from controlplane.temporal import TemporalGateway
from workflows.contracts import TERMINAL_STATES, RunInput, RunStep
from workflows.templates import step_references

EXECUTION_TYPE = "workflow"
LIVE = ("pending", "running", "waiting_for_input", "paused")
# A workflow's status (reference §3.4) from its latest run's.
STATUS_SQL = (
    "CASE WHEN r.run_status IS NULL THEN 'pending' "
    "WHEN r.run_status IN ('pending', 'running', 'waiting_for_input') THEN 'running' "
    "ELSE r.run_status END"
)
LATEST_RUN = (
    "LEFT JOIN LATERAL (SELECT e.id AS run_id, e.status AS run_status, "
    "e.started_at AS run_started_at, e.completed_at AS run_completed_at, "
    "e.error_message AS run_error, e.execution_metadata AS run_metadata "
    "FROM executions e WHERE e.organization_id = w.organization_id "
    "AND e.execution_type = 'workflow' AND e.entity_id = w.id "
    "ORDER BY e.created_at DESC, e.id DESC LIMIT 1) r ON true"
)
COLUMNS = (
    "w.id, w.organization_id, w.name, w.description, w.steps, w.configuration, w.team_id, "
    "w.created_by, w.created_at, w.updated_at, r.run_id, r.run_status, r.run_started_at, "
    f"r.run_completed_at, r.run_error, r.run_metadata, {STATUS_SQL} AS status"
)
WORKFLOWS = Table(f"workflows w {LATEST_RUN}", "Workflow", COLUMNS, order="w.created_at, w.id")
WRITABLE = ("name", "description", "steps", "configuration", "team_id")


def duplicate_name(name: str) -> str:
    return f"A workflow named '{name}' already exists in your organization"


# --- checks ------------------------------------------------------------------------------------


async def _ids_of(db: Queryable, org: str, table: str, ids: set[uuid.UUID]) -> set[uuid.UUID]:
    if not ids:
        return set()
    rows = await db.fetch(
        f"SELECT id FROM {table} WHERE organization_id = $1 AND id = ANY($2)", org, list(ids)
    )
    return {row["id"] for row in rows}


async def definition_errors(
    db: Queryable, org: str, steps: list[dict[str, Any]], team_id: uuid.UUID | None
) -> list[str]:
    """Every problem with a definition's steps (each already shaped: see the route's model)."""
    errors = graph_errors([(s["id"], s.get("depends_on") or []) for s in steps])
    agents = {uuid.UUID(str(s["agent_id"])) for s in steps if s.get("agent_id")}
    teams = {uuid.UUID(str(s["team_id"])) for s in steps if s.get("team_id")}
    if team_id is not None:
        teams.add(team_id)
    found_agents = await _ids_of(db, org, "agents", agents)
    found_teams = await _ids_of(db, org, "teams", teams)
    if team_id is not None and team_id not in found_teams:
        errors.append(f"team_id: '{team_id}' is not a team of your organization")
    for step in steps:
        where = f"step '{step['id']}'"
        if step.get("agent_id") and uuid.UUID(str(step["agent_id"])) not in found_agents:
            errors.append(
                f"{where}: agent '{step['agent_id']}' is not an agent of your organization"
            )
        if step.get("team_id") and uuid.UUID(str(step["team_id"])) not in found_teams:
            errors.append(f"{where}: team '{step['team_id']}' is not a team of your organization")
    if any("cycle" in error or "not a step" in error for error in errors):
        return errors  # the templates' check needs a graph
    before = ancestors([(s["id"], s.get("depends_on") or []) for s in steps])
    for step in steps:
        refs = step_references(step.get("prompt") or "")
        for form in refs.malformed:
            errors.append(
                f"step '{step['id']}': template {form} is not {{{{inputs.NAME}}}} or "
                "{{steps.ID.output}}"
            )
        for named in refs.steps:
            if named not in before.get(step["id"], set()):
                errors.append(
                    f"step '{step['id']}': its prompt uses the output of step '{named}', "
                    "which it does not depend on"
                )
    return errors


async def check_definition(
    db: Queryable, org: str, steps: list[dict[str, Any]], team_id: uuid.UUID | None
) -> None:
    errors = await definition_errors(db, org, steps, team_id)
    if errors:
        raise Invalid(
            "The workflow's definition is not valid: " + "; ".join(errors[:5]),
            details={"errors": errors},
        )


def inputs_needed(steps: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for step in steps:
        names += step_references(step.get("prompt") or "").inputs
    return list(dict.fromkeys(names))


# --- writes ------------------------------------------------------------------------------------


def _team(values: dict[str, Any]) -> uuid.UUID | None:
    team = values.get("team_id")
    return uuid.UUID(str(team)) if team else None


async def create_workflow(
    db: asyncpg.Pool[Any], org: str, actor: str, values: dict[str, Any]
) -> asyncpg.Record:
    await check_definition(db, org, values["steps"], _team(values))
    ident = uuid.uuid4()
    with conflict_on_duplicate(duplicate_name(values["name"])):
        await db.execute(
            "INSERT INTO workflows (id, organization_id, name, description, steps, "
            "configuration, team_id, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            ident,
            org,
            values["name"],
            values.get("description"),
            values["steps"],
            values.get("configuration") or {},
            _team(values),
            actor,
        )
    return await WORKFLOWS.get(db, org, ident)


async def update_workflow(
    db: asyncpg.Pool[Any], org: str, ident: uuid.UUID, changes: dict[str, Any]
) -> asyncpg.Record:
    async def check(current: asyncpg.Record, changes: dict[str, Any]) -> None:
        if "steps" in changes or "team_id" in changes:
            steps = changes.get("steps", current["steps"])
            team = changes["team_id"] if "team_id" in changes else current["team_id"]
            await check_definition(conn, org, steps, uuid.UUID(str(team)) if team else None)

    async with db.acquire() as conn, conn.transaction():
        plain = Table("workflows", "Workflow", "id, steps, team_id")
        await plain.patch(
            conn,
            org,
            ident,
            changes,
            WRITABLE,
            duplicate=duplicate_name(str(changes.get("name"))),
            check=check,
        )
    return await WORKFLOWS.get(db, org, ident)


async def delete_workflow(db: asyncpg.Pool[Any], org: str, ident: uuid.UUID) -> None:
    """Delete a definition; its past runs stay as executions. One with a live run is refused."""
    async with db.acquire() as conn, conn.transaction():
        row = await _locked(conn, org, ident)
        if row["run_status"] in LIVE:
            raise Refused(
                "The workflow is running: cancel it first",
                details={"run_id": str(row["run_id"]), "status": row["run_status"]},
            )
        await conn.execute("DELETE FROM workflows WHERE id = $1", ident)


async def _locked(conn: Conn, org: str, ident: uuid.UUID) -> asyncpg.Record:
    locked = await conn.fetchval(
        "SELECT id FROM workflows WHERE id = $1 AND organization_id = $2 FOR UPDATE", ident, org
    )
    if locked is None:
        raise not_found("Workflow", ident)
    return await WORKFLOWS.get(conn, org, ident)


# --- runs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowStarted:
    run: RunStarted


async def start_workflow(
    db: asyncpg.Pool[Any],
    temporal: TemporalGateway,
    settings: Settings,
    caller: Caller,
    ident: uuid.UUID,
    *,
    inputs: dict[str, Any],
    worker_queue_id: uuid.UUID,
    trigger_source: str = "user",
    job_id: uuid.UUID | None = None,
    prompt: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> RunStarted:
    """Start a run of the workflow (400 while one is live). Its definition is checked again,
    and every input its templates name must be given. A job's run says so (`trigger_source`,
    `job_id`) and carries the job's rendered prompt and its own `metadata`."""
    org = caller.organization_id
    queue = await find_active_queue(db, org, worker_queue_id)
    async with db.acquire() as conn, conn.transaction():
        # The definition's row lock: two starts at once make one run, and a 400.
        row = await _locked(conn, org, ident)
        if row["run_status"] in LIVE:
            raise Refused(
                "Workflow is already running",
                details={"run_id": str(row["run_id"]), "status": row["run_status"]},
            )
        steps: list[dict[str, Any]] = row["steps"]
        if not steps:
            raise Invalid("The workflow has no steps to run")
        await check_definition(conn, org, steps, row["team_id"])
        missing = [name for name in inputs_needed(steps) if name not in inputs]
        if missing:
            raise Invalid(
                f"Inputs missing: {', '.join(missing)} (the steps' prompts use them)",
                details={"missing_inputs": missing},
            )
        run_steps = [
            RunStep(
                id=step["id"],
                kind=step["type"],
                name=step.get("name") or step["id"],
                entity_id=str(step.get("agent_id") or step.get("team_id") or "") or None,
                prompt=step.get("prompt") or "",
                depends_on=list(step.get("depends_on") or []),
            )
            for step in steps
        ]
        started = await record_run(
            conn,
            NewRun(
                caller=caller,
                execution_type=EXECUTION_TYPE,
                entity_id=ident,
                entity_name=row["name"],
                prompt=prompt or row["description"] or row["name"],
                queue=queue,
                steps=[
                    NewStep(
                        s.id,
                        s.name,
                        s.kind,
                        uuid.UUID(s.entity_id) if s.entity_id else None,
                        s.depends_on,
                    )
                    for s in run_steps
                ],
                metadata={**(metadata or {}), "workflow_id": str(ident), "inputs": inputs},
                trigger_source=trigger_source,
                job_id=job_id,
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
            steps=run_steps,
            title=row["name"],
            inputs=inputs,
        ),
    )
    return started


async def latest_run(db: Queryable, org: str, ident: uuid.UUID) -> asyncpg.Record:
    """The workflow's latest run (400 when it has none)."""
    row = await WORKFLOWS.get(db, org, ident)
    if row["run_id"] is None:
        raise Refused("The workflow has not run yet: start it first")
    run: asyncpg.Record | None = await db.fetchrow(
        "SELECT id, organization_id, execution_type, status, temporal_workflow_id "
        "FROM executions WHERE id = $1",
        row["run_id"],
    )
    if run is None:  # deleted between the reads
        raise not_found("Workflow run", row["run_id"])
    return run


async def run_steps(db: Queryable, run_id: uuid.UUID | None) -> list[asyncpg.Record]:
    return await steps_of(db, run_id) if run_id is not None else []


def ended(status: str | None) -> bool:
    return status in TERMINAL_STATES
