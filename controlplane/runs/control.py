"""What a user does to a run, each a signal to the run's workflow in the control plane's
namespace: decide an approval step, send a step a message, pause, resume, complete, cancel.

Each checks the read model first and refuses (400) what the run cannot take now; the workflow
is the source of truth, and ignores a signal that arrives too late (a decision for a step that
was already decided, a message for a step that ended)."""

from __future__ import annotations

from typing import Any

import asyncpg
from temporalio.service import RPCError

from controlplane.errors import Refused, not_found
from controlplane.executions import actions
from controlplane.runs.records import NOUNS
from controlplane.temporal import TemporalGateway
from workflows.contracts import (
    COMPLETE_RUN,
    DECIDE_STEP,
    MESSAGE_STEP,
    PAUSE_EXECUTION,
    RESUME_EXECUTION,
    TERMINAL_STATES,
    StepDecision,
    StepMessage,
)

LIVE_RUN = ("pending", "running", "waiting_for_input", "paused")


async def _signal(temporal: TemporalGateway, run: asyncpg.Record, name: str, *args: Any) -> str:
    handle = await actions.handle_of(temporal, run)
    try:
        await handle.signal(name, *args)
    except RPCError as error:
        temporal.count_error("signal")
        raise Refused(
            f"The run's workflow cannot take '{name}': {error.message}",
            details={"status": run["status"]},
        ) from None
    return handle.id


def require_live(run: asyncpg.Record, action: str) -> None:
    if run["status"] not in LIVE_RUN:
        raise Refused(
            f"Cannot {action}: the run is {run['status']}",
            details={"status": run["status"], "execution_id": str(run["id"])},
        )


def step_of(run: asyncpg.Record, steps: list[asyncpg.Record], step_id: str) -> asyncpg.Record:
    noun = NOUNS.get(run["execution_type"], "step").capitalize()
    for step in steps:
        if step["step_id"] == step_id:
            return step
    raise not_found(noun, step_id)


async def decide(
    temporal: TemporalGateway,
    run: asyncpg.Record,
    step: asyncpg.Record,
    *,
    approved: bool,
    actor: str,
    comment: str | None,
) -> str:
    """Approve or reject an approval step that waits for a decision."""
    verb = "approve" if approved else "reject"
    require_live(run, f"{verb} step '{step['step_id']}'")
    if step["kind"] != "approval":
        raise Refused(f"Step '{step['step_id']}' is not an approval step")
    if step["status"] != "waiting_for_approval":
        raise Refused(
            f"Step '{step['step_id']}' is {step['status']}, not waiting for approval",
            details={"status": step["status"]},
        )
    return await _signal(
        temporal, run, DECIDE_STEP, StepDecision(step["step_id"], approved, actor, comment)
    )


async def message(
    temporal: TemporalGateway,
    run: asyncpg.Record,
    step: asyncpg.Record,
    *,
    text: str,
    mark_done: bool,
    actor: str,
) -> str:
    """A message for a step whose execution waits for input; the run passes it on."""
    noun = NOUNS.get(run["execution_type"], "step")
    require_live(run, f"message {noun} {step['step_id']}")
    if step["status"] != "waiting_for_input" or step["child_execution_id"] is None:
        raise Refused(
            f"{noun.capitalize()} {step['step_id']} is {step['status']}: only a {noun} whose "
            "execution waits for input takes a message",
            details={"status": step["status"]},
        )
    return await _signal(
        temporal, run, MESSAGE_STEP, StepMessage(step["step_id"], text, mark_done, actor)
    )


async def pause(temporal: TemporalGateway, run: asyncpg.Record) -> str:
    if run["status"] not in ("pending", "running", "waiting_for_input"):
        raise Refused(
            f"Only a running run can be paused; this one is {run['status']}",
            details={"status": run["status"]},
        )
    return await _signal(temporal, run, PAUSE_EXECUTION)


async def resume(temporal: TemporalGateway, run: asyncpg.Record) -> str:
    if run["status"] != "paused":
        raise Refused(
            f"Only a paused run can be resumed; this one is {run['status']}",
            details={"status": run["status"]},
        )
    return await _signal(temporal, run, RESUME_EXECUTION)


async def complete(temporal: TemporalGateway, run: asyncpg.Record) -> str:
    """End the run completed: running steps are cancelled, steps not started skipped."""
    require_live(run, "complete the run")
    return await _signal(temporal, run, COMPLETE_RUN)


async def cancel(temporal: TemporalGateway, run: asyncpg.Record) -> str:
    """Cancel the run's workflow; it cancels its steps' executions and ends cancelled."""
    if run["status"] in TERMINAL_STATES:
        raise Refused(f"The run is {run['status']} already", details={"status": run["status"]})
    handle = await actions.handle_of(temporal, run)
    try:
        await handle.cancel()
    except RPCError as error:
        raise Refused(f"The run cannot be cancelled: {error.message}") from None
    return handle.id
