"""A run's agent and team steps, as the system worker's activities drive them: each step is an
execution of the organization, started through `start_execution` (the run's child, keyed by the
step's id), awaited by watching its status, sent the user's messages, cancelled with the run.

Awaiting: the run's workflow lives in the control plane's namespace and the step's in the
organization's, so no child workflow can carry the result back. `watch_step` waits, woken by
the NOTIFY every status change sends (controlplane/executions/events.py), and reads the status
again at least every POLL_SECONDS in case a notification was missed. It calls `beat` every
BEAT_SECONDS, so a dead system worker is noticed and the wait moves to another.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any, cast

import asyncpg

from controlplane.errors import Conflict, DomainError, Unavailable
from controlplane.executions import actions
from controlplane.executions.events import EventHub
from controlplane.executions.launch import (
    Caller,
    LaunchRequest,
    Services,
    TriggerSource,
    start_execution,
)
from controlplane.executions.lifecycle import COLUMNS, load
from controlplane.runs.records import RunGone, record_progress, stop_steps
from controlplane.temporal import TemporalGateway
from workflows.contracts import (
    TERMINAL_STATES,
    RunCancel,
    StepLaunched,
    StepMessageDelivery,
    StepObservation,
    StepStart,
    StepWatch,
)

BEAT_SECONDS = 2.0
POLL_SECONDS = 15.0


class StepRefused(DomainError):
    """The step cannot run (or take the message) as asked; no retry changes that."""


# --- starting ----------------------------------------------------------------------------------


async def start_step(db: asyncpg.Pool[Any], services: Services, start: StepStart) -> StepLaunched:
    """Start the step's execution on the run's worker queue, as the run's owner, and record the
    step running with it. Started before (a retried activity): the same execution."""
    run = await db.fetchrow(
        f"SELECT {COLUMNS} FROM executions WHERE id = $1 AND organization_id = $2",
        uuid.UUID(start.run_execution_id),
        start.organization_id,
    )
    if run is None:
        raise RunGone(f"Run {start.run_execution_id} no longer exists")
    if run["status"] in TERMINAL_STATES:
        raise StepRefused(f"The run is {run['status']}")
    entity = uuid.UUID(start.entity_id)
    request = LaunchRequest(
        caller=Caller(
            start.organization_id, run["user_id"] or "system", run["user_role"] or "member"
        ),
        prompt=start.prompt,
        worker_queue_id=uuid.UUID(start.worker_queue_id),
        agent_id=entity if start.kind == "agent" else None,
        team_id=entity if start.kind == "team" else None,
        user_name=run["user_name"],
        user_email=run["user_email"],
        user_avatar=run["user_avatar"],
        execution_metadata={
            f"{run['execution_type']}_execution_id": str(run["id"]),
            "step_id": start.step_id,
        },
        trigger_source=cast(TriggerSource, run["trigger_source"]),
        parent_execution_id=run["id"],
        delegation_key=start.step_id,
    )
    try:
        launched = await start_execution(db, services, request)
    except Unavailable:
        raise  # Temporal or the database: the activity is retried
    except DomainError as error:
        raise StepRefused(error.message) from None
    if start.progress is not None and start.progress.step is not None:
        start.progress.step.execution_id = str(launched.execution_id)
        await record_progress(db, start.progress)
    return StepLaunched(str(launched.execution_id), launched.workflow_id)


# --- awaiting ----------------------------------------------------------------------------------


def phase_of(status: str) -> str:
    if status in TERMINAL_STATES:
        return "ended"
    return "waiting" if status == "waiting_for_input" else "live"


async def _observe(db: asyncpg.Pool[Any], watch: StepWatch) -> StepObservation:
    row = await db.fetchrow(
        "SELECT status, response, error_message, (SELECT count(*) FROM execution_transitions t "
        "WHERE t.execution_id = e.id) AS transitions FROM executions e WHERE id = $1",
        uuid.UUID(watch.execution_id),
    )
    if row is None:
        return StepObservation(
            watch.execution_id,
            "failed",
            "ended",
            0,
            True,
            error_message="The step's execution was deleted",
        )
    phase = phase_of(row["status"])
    changed = phase != watch.seen_phase or (
        phase == "waiting" and row["transitions"] != watch.seen_transitions
    )
    return StepObservation(
        watch.execution_id,
        row["status"],
        phase,
        int(row["transitions"]),
        changed,
        response=row["response"],
        error_message=row["error_message"],
    )


async def watch_step(
    db: asyncpg.Pool[Any], hub: EventHub, watch: StepWatch, beat: Callable[[], None]
) -> StepObservation:
    """The step's execution once it is seen in another phase than `watch.seen_phase` (live,
    waiting for input, ended), or waiting for input again after an answer; unchanged
    (`changed` false) after `watch.max_wait_seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + watch.max_wait_seconds
    async with hub.subscribe(uuid.UUID(watch.execution_id)) as woken:
        while True:
            woken.clear()  # before reading, so a change committed after the read wakes us
            seen = await _observe(db, watch)
            if seen.changed:
                return seen
            read_at = loop.time()
            while not woken.is_set() and loop.time() - read_at < POLL_SECONDS:
                if loop.time() >= deadline:
                    return seen
                beat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout=BEAT_SECONDS)


# --- messages and cancellation -----------------------------------------------------------------


async def deliver_message(
    db: asyncpg.Pool[Any], temporal: TemporalGateway, delivery: StepMessageDelivery
) -> None:
    """A user's message for a step, passed on to its execution (and its conversation marked
    done after the answer, when asked)."""
    row = await load(db, delivery.organization_id, uuid.UUID(delivery.execution_id))
    if row is None or row["status"] in TERMINAL_STATES:
        raise StepRefused("The step's execution has ended")
    message = delivery.message
    try:
        await actions.send_message(db, temporal, row, message.message, message.actor or "system")
        if message.mark_done:
            await actions.mark_done(db, temporal, row)
    except Conflict as error:
        raise StepRefused(error.message) from None


async def cancel_steps(db: asyncpg.Pool[Any], temporal: TemporalGateway, cancel: RunCancel) -> None:
    """Cancel the run's live step executions and record its unfinished steps stopped."""
    run_id = uuid.UUID(cancel.execution_id)
    children = await db.fetch(
        f"SELECT {COLUMNS} FROM executions WHERE parent_execution_id = $1 "
        "AND status <> ALL($2::text[])",
        run_id,
        list(TERMINAL_STATES),
    )
    for child in children:
        with contextlib.suppress(Conflict):  # it ended meanwhile, or never started
            await actions.cancel(db, temporal, child)
    async with db.acquire() as conn, conn.transaction():
        run = await conn.fetchrow(
            f"SELECT {COLUMNS} FROM executions WHERE id = $1 FOR UPDATE", run_id
        )
        if run is None:
            return
        await stop_steps(conn, run, cancel)
