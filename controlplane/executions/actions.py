"""What a user may do to a running execution, each a signal (or a cancel) to its workflow in
the organization's namespace: send a message, pause, resume, mark done, cancel, delete.

Each checks the status the read model shows first (the workflow is the source of truth, so a
signal it refuses is a conflict too). An execution answered a moment ago may not have its
workflow yet (controlplane/executions/starting.py): it is started first."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import asyncpg
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from controlplane.errors import Conflict
from controlplane.executions.events import append_event
from controlplane.executions.starting import ensure_started
from controlplane.temporal import TemporalGateway
from workflows.contracts import (
    ADD_MESSAGE,
    MARK_AS_DONE,
    PAUSE_EXECUTION,
    RESUME_EXECUTION,
    TERMINAL_STATES,
    ChatMessage,
    workflow_id_for,
)

LIVE = ("pending", "running", "waiting_for_input", "paused")
# Executions whose workflow the control plane runs itself, on the system worker in its own
# namespace (not the organization's), and the signals each takes: a plan generation none (only
# cancel and delete), a plan execution or a workflow run pause and resume (its steps take
# messages and decisions through controlplane/runs/control.py).
SYSTEM_SIGNALS: dict[str, tuple[str, ...]] = {
    "plan_generation": (),
    "plan": (PAUSE_EXECUTION, RESUME_EXECUTION),
    "workflow": (PAUSE_EXECUTION, RESUME_EXECUTION),
}
SYSTEM_EXECUTION_TYPES = tuple(SYSTEM_SIGNALS)


async def workflow_client(temporal: TemporalGateway, row: asyncpg.Record) -> Client:
    """The client of the namespace the execution's workflow lives in."""
    if row["execution_type"] in SYSTEM_EXECUTION_TYPES:
        return await temporal.system_client()
    return await temporal.client(row["organization_id"])


async def handle_of(temporal: TemporalGateway, row: asyncpg.Record) -> WorkflowHandle[Any, Any]:
    client = await workflow_client(temporal, row)
    return client.get_workflow_handle(
        row["temporal_workflow_id"] or workflow_id_for(str(row["id"]))
    )


async def on_workflow(
    db: Any,
    temporal: TemporalGateway,
    row: asyncpg.Record,
    act: Callable[[WorkflowHandle[Any, Any]], Awaitable[Any]],
) -> str:
    """Do `act` to the execution's workflow, starting it first if its start is still due (Temporal
    does not know the workflow yet); returns the workflow id."""
    handle = await handle_of(temporal, row)
    try:
        await act(handle)
    except RPCError as error:
        unknown = error.status == RPCStatusCode.NOT_FOUND and row["status"] == "pending"
        if not unknown or not await ensure_started(db, temporal, row):
            raise
        await act(handle)
    return handle.id


def require_status(row: asyncpg.Record, allowed: tuple[str, ...], action: str) -> None:
    if row["status"] not in allowed:
        raise Conflict(
            f"Cannot {action} an execution that is {row['status']}",
            details={"status": row["status"], "allowed_from": list(allowed)},
        )


async def signal(
    db: Any, temporal: TemporalGateway, row: asyncpg.Record, name: str, *args: Any
) -> str:
    """Send a signal; returns the workflow id."""
    kind = row["execution_type"]
    if kind in SYSTEM_SIGNALS and name not in SYSTEM_SIGNALS[kind]:
        takes = ", ".join(SYSTEM_SIGNALS[kind]) or "no signal"
        raise Conflict(
            f"A {kind} execution takes no '{name}' ({takes}; cancel or delete it)",
            details={"execution_type": kind},
        )
    try:
        return await on_workflow(db, temporal, row, lambda handle: handle.signal(name, *args))
    except RPCError as error:
        temporal.count_error("signal")
        raise Conflict(
            f"The execution's workflow cannot take '{name}': {error.message}",
            details={"status": row["status"]},
        ) from None


async def send_message(
    db: Any, temporal: TemporalGateway, row: asyncpg.Record, text: str, actor: str
) -> ChatMessage:
    """A follow-up user message (signal `add_message`), also streamed as a `message` event."""
    require_status(row, LIVE, "message")
    now = datetime.now(UTC)
    message = ChatMessage(
        role="user",
        content=text,
        timestamp=now.isoformat(),
        message_id=f"{row['id']}_{int(now.timestamp() * 1_000_000)}",
        user_id=actor,
    )
    await signal(db, temporal, row, ADD_MESSAGE, message)
    async with db.acquire() as conn, conn.transaction():
        await append_event(
            conn, row["id"], "message", asdict(message), f"message:{message.message_id}"
        )
    return message


async def pause(db: Any, temporal: TemporalGateway, row: asyncpg.Record) -> str:
    require_status(row, ("running", "waiting_for_input"), "pause")
    return await signal(db, temporal, row, PAUSE_EXECUTION)


async def resume(db: Any, temporal: TemporalGateway, row: asyncpg.Record) -> str:
    require_status(row, ("paused",), "resume")
    return await signal(db, temporal, row, RESUME_EXECUTION)


async def mark_done(db: Any, temporal: TemporalGateway, row: asyncpg.Record) -> str:
    require_status(row, LIVE, "mark done")
    return await signal(db, temporal, row, MARK_AS_DONE)


async def cancel(db: Any, temporal: TemporalGateway, row: asyncpg.Record) -> str:
    """Cancel the workflow (a team's members, its child workflows, are cancelled with it); the
    execution ends `cancelled` when the workflow reports it."""
    require_status(row, LIVE, "cancel")
    try:
        return await on_workflow(db, temporal, row, lambda handle: handle.cancel())
    except RPCError as error:
        raise Conflict(
            f"The workflow cannot be cancelled: {error.message}",
            details={"status": row["status"]},
        ) from None


async def delete(db: Any, temporal: TemporalGateway, row: asyncpg.Record) -> None:
    """Delete an execution's records; a live workflow is terminated first."""
    if row["status"] not in TERMINAL_STATES:
        # A start still due is made first, so no workflow is left to run without its row.
        with contextlib.suppress(RPCError):  # already closed
            await on_workflow(
                db, temporal, row, lambda handle: handle.terminate(reason="execution deleted")
            )
    await db.execute(
        "DELETE FROM executions WHERE id = $1 AND organization_id = $2",
        row["id"],
        row["organization_id"],
    )
