"""A run's records: the execution row of a plan execution or a workflow run, its steps' rows
(`execution_steps`), and every change the run's workflow reports.

A run is an execution of its own (type `plan` or `workflow`), so its status changes go through
the lifecycle (controlplane/executions/lifecycle.py): transitions, the `status`/`done`/`error`
stream events and the `execution.*` webhooks come with it. Each change of a run's status also
records a `workflow.state_changed` outbox event, in the same transaction.

The run's workflow numbers its records (`sequence`): a record lands once (its stream event is
keyed by the number), and neither the run's status nor a step's row is overwritten by an older
record than the one that last changed it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio.common import WorkflowIDReusePolicy

from controlplane import outbox
from controlplane.db import Conn, Queryable
from controlplane.errors import DomainError, Unavailable
from controlplane.executions.events import append_event
from controlplane.executions.launch import Caller
from controlplane.executions.lifecycle import COLUMNS, Report, report
from controlplane.settings import Settings
from controlplane.snapshot import QueueRow
from controlplane.temporal import TemporalGateway
from workflows.contracts import (
    FINAL_STEP_STATUSES,
    TERMINAL_STATES,
    RunBegin,
    RunCancel,
    RunFinish,
    RunInput,
    RunProgress,
    StepState,
    run_workflow_type,
    workflow_id_for,
)

RUN_TYPES = ("plan", "workflow")
NOUNS = {"plan": "task", "workflow": "step"}
STEP_COLUMNS = (
    "step_id, position, name, kind, entity_id, depends_on, status, child_execution_id, prompt, "
    "output, error_message, decided_by, started_at, completed_at, updated_at"
)
# A run no system worker takes up within this long times out (and is settled failed).
EXECUTION_TIMEOUT_DAYS = 30


class RunGone(DomainError):
    """The run's execution row was deleted while its workflow ran."""


@dataclass
class NewStep:
    id: str
    name: str
    kind: str  # agent | team | approval
    entity_id: uuid.UUID | None
    depends_on: list[str]


@dataclass
class NewRun:
    caller: Caller
    execution_type: str  # plan | workflow
    entity_id: uuid.UUID | None
    entity_name: str
    prompt: str
    queue: QueueRow
    steps: list[NewStep]
    metadata: dict[str, Any] = field(default_factory=dict)
    plan_json: dict[str, Any] | None = None
    trigger_source: str = "user"
    job_id: uuid.UUID | None = None  # the job that started it (controlplane/jobs/), if any


@dataclass(frozen=True)
class RunStarted:
    execution_id: uuid.UUID
    workflow_id: str


# --- starting ----------------------------------------------------------------------------------


async def record_run(conn: Conn, run: NewRun) -> RunStarted:
    """Write the run's execution, owner, first transition and steps (pending), in the caller's
    transaction."""
    execution_id = uuid.uuid4()
    workflow_id = workflow_id_for(str(execution_id), run.execution_type)
    org = run.caller.organization_id
    await conn.execute(
        "INSERT INTO executions (id, organization_id, execution_type, entity_id, entity_name, "
        "runner_name, user_id, prompt, execution_metadata, temporal_workflow_id, "
        "worker_queue_id, user_role, trigger_source, plan_json, job_id) VALUES ($1, $2, $3, $4, "
        "$5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        execution_id,
        org,
        run.execution_type,
        run.entity_id,
        run.entity_name,
        run.queue.name,
        run.caller.actor,
        run.prompt,
        {**run.metadata, "organization_id": org, "worker_queue_name": run.queue.name},
        workflow_id,
        run.queue.id,
        run.caller.role,
        run.trigger_source,
        run.plan_json,
        run.job_id,
    )
    await conn.execute(
        "INSERT INTO execution_participants (id, execution_id, organization_id, user_id, role) "
        "VALUES ($1, $2, $3, $4, 'owner')",
        uuid.uuid4(),
        execution_id,
        org,
        run.caller.actor,
    )
    await conn.execute(
        "INSERT INTO execution_transitions (execution_id, organization_id, to_state, reasoning) "
        "VALUES ($1, $2, 'pending', $3)",
        execution_id,
        org,
        f"{run.execution_type} run submitted",
    )
    await conn.executemany(
        "INSERT INTO execution_steps (execution_id, step_id, organization_id, position, name, "
        "kind, entity_id, depends_on) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [
            (
                execution_id,
                step.id,
                org,
                position,
                step.name,
                step.kind,
                step.entity_id,
                step.depends_on,
            )
            for position, step in enumerate(run.steps)
        ],
    )
    return RunStarted(execution_id, workflow_id)


async def start_run_workflow(
    db: asyncpg.Pool[Any],
    temporal: TemporalGateway,
    settings: Settings,
    started: RunStarted,
    execution_type: str,
    run_input: RunInput,
) -> None:
    """Start the run's workflow on the system worker's task queue; a run whose workflow cannot
    start leaves no row behind."""
    try:
        client = await temporal.system_client()
        await client.start_workflow(
            run_workflow_type(execution_type),
            run_input,
            id=started.workflow_id,
            task_queue=settings.system_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            execution_timeout=timedelta(days=EXECUTION_TIMEOUT_DAYS),
        )
    except Exception as error:
        await db.execute("DELETE FROM executions WHERE id = $1", started.execution_id)
        temporal.count_error("start_workflow")
        if isinstance(error, DomainError):
            raise
        raise Unavailable(f"Could not start the run on Temporal: {error}") from None


# --- reading -----------------------------------------------------------------------------------


async def load_run(
    db: Queryable, org: str, execution_id: uuid.UUID, execution_type: str
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await db.fetchrow(
        f"SELECT {COLUMNS}, plan_json FROM executions WHERE id = $1 AND organization_id = $2 "
        "AND execution_type = $3",
        execution_id,
        org,
        execution_type,
    )
    return row


async def steps_of(db: Queryable, execution_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            f"SELECT {STEP_COLUMNS} FROM execution_steps WHERE execution_id = $1 ORDER BY position",
            execution_id,
        )
    )


@dataclass(frozen=True)
class Counts:
    total: int
    completed: int
    failed: int  # failed, rejected or cancelled
    skipped: int

    @property
    def progress_percentage(self) -> float:
        done = self.completed + self.failed + self.skipped
        return round(100.0 * done / self.total, 1) if self.total else 100.0


def counts(steps: list[asyncpg.Record] | list[dict[str, Any]]) -> Counts:
    statuses = [step["status"] for step in steps]
    return Counts(
        total=len(statuses),
        completed=statuses.count("completed"),
        failed=sum(statuses.count(s) for s in ("failed", "rejected", "cancelled")),
        skipped=statuses.count("skipped"),
    )


# --- what the run's workflow records (the system worker's activities call these) ---------------


async def _locked_run(conn: Conn, execution_id: str) -> asyncpg.Record:
    current: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM executions WHERE id = $1 FOR UPDATE", uuid.UUID(execution_id)
    )
    if current is None:
        raise RunGone(f"Run {execution_id} no longer exists")
    return current


async def change_status(conn: Conn, current: asyncpg.Record, change: Report) -> None:
    """A run's status change through the lifecycle (unless older than the last applied), and a
    `workflow.state_changed` event for webhook subscribers when the status did change."""
    await report(conn, current, change)
    status = await conn.fetchval("SELECT status FROM executions WHERE id = $1", current["id"])
    if status == current["status"]:
        return
    metadata = current["execution_metadata"] or {}
    await outbox.record(
        conn,
        current["organization_id"],
        "workflow.state_changed",
        {
            "execution_id": str(current["id"]),
            "execution_type": current["execution_type"],
            "entity_id": str(current["entity_id"]) if current["entity_id"] else None,
            "entity_name": current["entity_name"],
            "workflow_id": metadata.get("workflow_id"),
            "status": status,
            "previous_status": current["status"],
            "reason": change.reason,
            "error_message": change.error_message,
        },
    )


async def begin(db: asyncpg.Pool[Any], start: RunBegin) -> None:
    async with db.acquire() as conn, conn.transaction():
        current = await _locked_run(conn, start.execution_id)
        await change_status(
            conn,
            current,
            Report(status="running", mark_started=True, reason="run started"),
        )


async def _step_event(
    conn: Conn, run: asyncpg.Record, step_id: str, key: str, extra: dict[str, Any]
) -> None:
    """The `task_status` / `step_status` event of a step's change, with the run's progress."""
    noun = NOUNS.get(run["execution_type"], "step")
    steps = await steps_of(conn, run["id"])
    tally = counts(steps)
    row = next((s for s in steps if s["step_id"] == step_id), None)
    ident: Any = int(step_id) if noun == "task" and step_id.lstrip("-").isdigit() else step_id
    await append_event(
        conn,
        run["id"],
        f"{noun}_status",
        {
            f"{noun}_id": ident,
            "name": row["name"] if row else None,
            "status": row["status"] if row else None,
            "execution_id": str(row["child_execution_id"])
            if row and row["child_execution_id"]
            else None,
            "output": row["output"] if row else None,
            "error": row["error_message"] if row else None,
            "completed": tally.completed,
            "failed": tally.failed,
            "skipped": tally.skipped,
            "total": tally.total,
            "progress_percentage": tally.progress_percentage,
            **extra,
        },
        key,
    )


async def _update_step(
    conn: Conn, run_id: uuid.UUID, step_id: str, step: StepState, sequence: int
) -> bool:
    """Write a step's state unless a newer record did; True when written."""
    child = uuid.UUID(step.execution_id) if step.execution_id else None
    written = await conn.fetchval(
        "UPDATE execution_steps SET status = $3, child_execution_id = coalesce($4, "
        "child_execution_id), output = $5, error_message = $6, prompt = coalesce($7, prompt), "
        "decided_by = coalesce($8, decided_by), "
        "started_at = CASE WHEN $3 IN ('pending', 'skipped') THEN started_at "
        "ELSE coalesce(started_at, now()) END, "
        "completed_at = CASE WHEN $3 = ANY($9::text[]) THEN coalesce(completed_at, now()) END, "
        "sequence = $10, updated_at = now() "
        "WHERE execution_id = $1 AND step_id = $2 AND sequence < $10 RETURNING 1",
        run_id,
        step_id,
        step.status,
        child,
        step.output,
        step.error,
        step.prompt,
        step.decided_by,
        list(FINAL_STEP_STATUSES),
        sequence,
    )
    return written is not None


async def record_progress(db: asyncpg.Pool[Any], progress: RunProgress) -> None:
    """A step's new state (if any) and the run's status, in one transaction under the run's
    lock. A run that has ended takes no more records."""
    async with db.acquire() as conn, conn.transaction():
        current = await _locked_run(conn, progress.execution_id)
        if current["status"] in TERMINAL_STATES:
            return
        step_id, step = progress.step_id, progress.step
        if (
            step_id is not None
            and step is not None
            and await _update_step(conn, current["id"], step_id, step, progress.sequence)
        ):
            await _step_event(conn, current, step_id, f"progress:{progress.sequence}", {})
        await change_status(
            conn,
            current,
            Report(status=progress.run_status, reason=progress.reason, version=progress.sequence),
        )


async def stop_steps(conn: Conn, run: asyncpg.Record, cancel: RunCancel) -> None:
    """Record the run's unfinished steps as stopped: those that ran cancelled, those that never
    started skipped (the caller cancels their executions)."""
    rows = await conn.fetch(
        "UPDATE execution_steps SET status = CASE WHEN status = 'pending' THEN 'skipped' "
        "ELSE 'cancelled' END, error_message = $2, completed_at = now(), sequence = $3, "
        "updated_at = now() WHERE execution_id = $1 AND status <> ALL($4::text[]) "
        "AND sequence < $3 RETURNING step_id",
        run["id"],
        cancel.reason,
        cancel.sequence,
        list(FINAL_STEP_STATUSES),
    )
    for row in rows:
        await _step_event(conn, run, row["step_id"], f"stop:{row['step_id']}", {})


async def finish(db: asyncpg.Pool[Any], outcome: RunFinish) -> None:
    """Record how the run ended: its response (what the last steps produced), the usage of
    every step's execution, and why it failed. A run deleted meanwhile records nothing."""
    async with db.acquire() as conn, conn.transaction():
        try:
            current = await _locked_run(conn, outcome.execution_id)
        except RunGone:
            return
        steps = await steps_of(conn, current["id"])
        children = await conn.fetch(
            "SELECT delegation_key, usage FROM executions WHERE parent_execution_id = $1",
            current["id"],
        )
        await change_status(
            conn,
            current,
            Report(
                status=outcome.status,
                response=_response(steps),
                error_message=outcome.error,
                usage=_usage(children),
                reason=outcome.reason,
                mark_completed=True,
                version=outcome.sequence,
            ),
        )


def _response(steps: list[asyncpg.Record]) -> str | None:
    """What the run produced: the outputs of its completed last steps (those nothing depends
    on), each under its name when there are several."""
    needed = {dependency for step in steps for dependency in step["depends_on"]}
    last = [
        step
        for step in steps
        if step["step_id"] not in needed and step["status"] == "completed" and step["output"]
    ]
    if not last:
        return None
    if len(last) == 1:
        return str(last[0]["output"])
    return "\n\n".join(f"## {step['name']}\n\n{step['output']}" for step in last)


def _usage(children: list[asyncpg.Record]) -> dict[str, Any]:
    """Tokens and dollars of the run: every step's execution, in total and per step."""
    per_step: dict[str, dict[str, Any]] = {}
    for child in children:
        usage = child["usage"] or {}
        per_step[str(child["delegation_key"])] = {
            "input_tokens": int(usage.get("input_tokens", 0)),
            "output_tokens": int(usage.get("output_tokens", 0)),
            "cost_usd": float(usage.get("cost_usd", 0.0)),
        }
    return {
        "input_tokens": sum(s["input_tokens"] for s in per_step.values()),
        "output_tokens": sum(s["output_tokens"] for s in per_step.values()),
        "cost_usd": round(sum(s["cost_usd"] for s in per_step.values()), 8),
        "steps": per_step,
    }
