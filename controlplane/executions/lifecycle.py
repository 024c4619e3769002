"""Every status change of an execution, in one place: the read model row, the transition, the
stream events that tell clients (`status`, then `done` or `error`), and the outbox row that
tells webhook subscribers. Whoever changes a status (a worker's report, the reconciler, a user
cancelling a workflow that will never report) comes through `apply_report`.

The workflow is the source of truth; reports may arrive late or twice. A report carries a
version (older ones are ignored by the caller) and an ended execution stays ended.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from controlplane import outbox
from controlplane.db import Conn, Queryable
from controlplane.executions.events import append_event
from workflows.contracts import TERMINAL_STATES

COLUMNS = (
    "id, organization_id, execution_type, entity_id, entity_name, prompt, system_prompt, status, "
    "response, error_message, usage, execution_metadata, runner_name, user_id, user_name, "
    "user_email, user_avatar, created_at, started_at, completed_at, updated_at, "
    "last_message_at, last_message_preview, temporal_workflow_id, worker_queue_id, "
    "parent_execution_id, trigger_source, user_role, job_id"
)


@dataclass
class Report:
    """A status change and what comes with it (a worker's report, or the control plane's)."""

    status: str | None = None
    response: str | None = None
    error_message: str | None = None
    usage: dict[str, Any] | None = None
    execution_metadata: dict[str, Any] | None = None
    reason: str | None = None
    mark_started: bool = False
    mark_completed: bool = False
    started_at: datetime | None = None
    completed_at: datetime | None = None
    version: int | None = None


async def load(
    db: Queryable,
    org: str,
    execution_id: uuid.UUID,
    *,
    queue_id: uuid.UUID | None = None,
    lock: bool = False,
) -> asyncpg.Record | None:
    """The execution of the organization (on `queue_id` when given: what a worker token may
    reach), optionally locked for update."""
    scope = " AND worker_queue_id = $3" if queue_id is not None else ""
    args: list[Any] = [execution_id, org] + ([queue_id] if queue_id is not None else [])
    row: asyncpg.Record | None = await db.fetchrow(
        f"SELECT {COLUMNS} FROM executions WHERE id = $1 AND organization_id = $2{scope}"
        + (" FOR UPDATE" if lock else ""),
        *args,
    )
    return row


async def report(conn: Conn, current: asyncpg.Record, change: Report) -> None:
    """Apply a report unless it is older than the last one applied. Run it in a transaction
    holding the execution's row lock (`load(..., lock=True)`)."""
    if change.version is not None:
        last = await conn.fetchval(
            "SELECT status_version FROM executions WHERE id = $1", current["id"]
        )
        if change.version <= last:
            return
    await apply_report(conn, current, change)


async def apply_report(conn: Conn, current: asyncpg.Record, change: Report) -> None:
    execution_id = current["id"]
    new_status = change.status or current["status"]
    if current["status"] in TERMINAL_STATES and new_status != current["status"]:
        return  # an execution that ended stays ended
    now = datetime.now(UTC)
    started = change.started_at or (now if change.mark_started else None)
    completed = change.completed_at or (now if change.mark_completed else None)
    await conn.execute(
        "UPDATE executions SET status = $2, response = coalesce($3, response), "
        "error_message = coalesce($4, error_message), usage = coalesce($5, usage), "
        "execution_metadata = execution_metadata || coalesce($6, '{}'::jsonb), "
        "started_at = coalesce(started_at, $7), completed_at = coalesce(completed_at, $8), "
        "status_version = greatest(status_version, coalesce($9, status_version)), "
        # A report is the workflow's (it runs), or ends the execution: no start is due.
        "start_payload = NULL, updated_at = now() WHERE id = $1",
        execution_id,
        new_status,
        change.response,
        change.error_message,
        change.usage,
        change.execution_metadata,
        started,
        completed,
        change.version,
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
        change.reason,
    )
    await append_event(
        conn, execution_id, "status", {"status": new_status, "execution_id": str(execution_id)}
    )
    await _announce(conn, current, new_status, change)
    if new_status == "completed":
        await append_event(
            conn,
            execution_id,
            "done",
            {
                "execution_id": str(execution_id),
                "status": new_status,
                "response": change.response,
                "usage": change.usage or {},
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
                "error": change.error_message or new_status,
                "error_type": "cancelled" if new_status == "cancelled" else "execution_failed",
            },
        )


# The statuses webhook subscribers hear about, and as what.
ANNOUNCED = {
    "running": "execution.started",
    "waiting_for_input": "execution.waiting_for_input",
    "completed": "execution.completed",
    "failed": "execution.failed",
    "cancelled": "execution.cancelled",
}


async def _announce(conn: Conn, current: asyncpg.Record, new_status: str, change: Report) -> None:
    event_type = ANNOUNCED.get(new_status)
    if event_type is None:
        return
    if new_status == "running" and current["started_at"] is not None:
        return  # started once; running again after input or a pause is not a new start
    data: dict[str, Any] = {
        "execution_id": str(current["id"]),
        "execution_type": current["execution_type"],
        "entity_id": str(current["entity_id"]) if current["entity_id"] else None,
        "entity_name": current["entity_name"],
        "status": new_status,
        "previous_status": current["status"],
    }
    if new_status == "completed":
        data["response"] = change.response
        data["usage"] = change.usage or {}
    if new_status in ("failed", "cancelled"):
        data["error_message"] = change.error_message
    await outbox.record(conn, current["organization_id"], event_type, data)


async def settle(db: asyncpg.Pool[Any], execution_id: Any, status: str, reason: str) -> int:
    """End a live execution from the control plane's side (its workflow ended without telling
    us, or could never start); 1 if it was live, 0 if it had ended already."""
    async with db.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(
            f"SELECT {COLUMNS} FROM executions WHERE id = $1 FOR UPDATE", execution_id
        )
        if current is None or current["status"] in TERMINAL_STATES:
            return 0  # another process, or the workflow's own report, got there first
        await apply_report(
            conn,
            current,
            Report(
                status=status,
                error_message=None if status == "completed" else reason,
                reason=reason,
                mark_completed=True,
            ),
        )
    return 1
