"""Starting a recorded execution's workflow.

`start_execution` writes the execution's row together with its workflow's input
(`start_payload`: the Temporal payload the client sends, templates unrendered, so no secret),
and starts the workflow only after that commit: the row exists before its workflow can report,
and no workflow runs without a row. Who waits for the start:

- a caller that is itself durable (an activity of the system worker: a job, a plan's task, a
  workflow's step) waits for it, and Temporal retries the activity if it fails;
- `POST .../execute` does not: it answers once the row is committed, and the API process starts
  the workflow right after, in the background (`BackgroundStarts`). So an execute costs what the
  row costs, not what Temporal's start costs too (docs/PERFORMANCE.md), and an execute accepted
  while Temporal is out of reach starts when Temporal is back instead of failing.

The stored payload is cleared by the workflow's first report (lifecycle.apply_report). A start
still due after STALLED_SECONDS (the API process died, or Temporal stayed out of reach) is made
by the system worker's housekeeping round (`start_stalled`), and anything done to the execution
before its workflow runs (a message, a cancel, a delete) starts it first (`ensure_started`).
Temporal refusing a start for good (not merely being out of reach) fails the execution, with
Temporal's reason, through the lifecycle: a transition, a `status` event and its webhook.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue, WorkflowIDReusePolicy
from temporalio.converter import DataConverter
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from controlplane.errors import Unavailable
from controlplane.executions.lifecycle import settle
from controlplane.temporal import TemporalGateway
from workflows.contracts import (
    AGENT_EXECUTION_WORKFLOW,
    TEAM_EXECUTION_WORKFLOW,
    workflow_id_for,
)

log = logging.getLogger("controlplane.api.starts")

# How long the API process retries a start Temporal could not take, before leaving it to the
# housekeeping round; and how old a start still due must be before that round makes it (the
# API process is still trying until then).
START_RETRY_SECONDS = 20.0
STALLED_SECONDS = 30
BATCH = 100
WORKFLOW_TYPES = {"agent": AGENT_EXECUTION_WORKFLOW, "team": TEAM_EXECUTION_WORKFLOW}
# Temporal out of reach, or busy for now: a later start may succeed.
TRANSIENT_STATUSES = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.ABORTED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.INTERNAL,
    RPCStatusCode.UNKNOWN,
}


@dataclass(frozen=True)
class PendingStart:
    """A recorded execution's workflow, to start: `argument` is its input, encoded."""

    organization_id: str
    execution_id: uuid.UUID
    workflow_type: str
    workflow_id: str
    task_queue: str
    argument: RawValue


async def encode_input(workflow_input: Any) -> RawValue:
    """The payload the client would send for `workflow_input` (stored in `start_payload`, and
    sent as it is: the input is encoded once)."""
    (payload,) = await DataConverter.default.encode([workflow_input])
    return RawValue(payload)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, RPCError):
        return error.status in TRANSIENT_STATUSES
    return isinstance(error, Unavailable | OSError | TimeoutError)


async def start(temporal: TemporalGateway, pending: PendingStart) -> bool:
    """Start the workflow in the organization's namespace; False if it had started already
    (its id is the execution's, so a start made twice runs one workflow)."""
    client = await temporal.client(pending.organization_id)
    try:
        await client.start_workflow(
            pending.workflow_type,
            pending.argument,
            id=pending.workflow_id,
            task_queue=pending.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        return False
    return True


async def refuse(db: asyncpg.Pool[Any], execution_id: uuid.UUID, error: BaseException) -> None:
    """Temporal refused the start for good: the execution fails, saying why."""
    reason = f"Temporal refused to start the execution's workflow: {error}"
    await settle(db, execution_id, "failed", reason)
    log.warning("execution's start refused", extra={"execution_id": str(execution_id)})


class BackgroundStarts:
    """The starts the API process makes after answering an execute. On shutdown it waits a
    moment for them; any left are made by the housekeeping round."""

    def __init__(
        self,
        db: Callable[[], asyncpg.Pool[Any]],
        temporal: TemporalGateway,
        retry_seconds: float = START_RETRY_SECONDS,
    ) -> None:
        self.db = db  # the pool, once the process has one
        self.temporal = temporal
        self.retry_seconds = retry_seconds
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, pending: PendingStart) -> None:
        task = asyncio.create_task(self._start(pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, pending: PendingStart) -> None:
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.retry_seconds, 0.05
        while True:
            try:
                await start(self.temporal, pending)
                return
            except Exception as error:
                self.temporal.count_error("start_workflow")
                if not is_transient(error):
                    await self._refuse(pending, error)
                    return
                if loop.time() > deadline:
                    self._left(pending, error)
                    return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def _refuse(self, pending: PendingStart, error: BaseException) -> None:
        try:
            await refuse(self.db(), pending.execution_id, error)
        except Exception as unrecorded:  # Postgres away too: the round records it later
            self._left(pending, unrecorded)

    @staticmethod
    def _left(pending: PendingStart, error: BaseException) -> None:
        log.warning(
            "execution's start left to the housekeeping round",
            extra={"execution_id": str(pending.execution_id), "error": str(error)},
        )

    async def drain(self, seconds: float) -> None:
        """Wait up to `seconds` for the starts being made; cancel what is left."""
        if not self._tasks:
            return
        _, unfinished = await asyncio.wait(set(self._tasks), timeout=seconds)
        for task in unfinished:
            task.cancel()


def _stored(row: asyncpg.Record) -> PendingStart:
    payload = Payload.FromString(row["start_payload"])
    return PendingStart(
        organization_id=row["organization_id"],
        execution_id=row["id"],
        workflow_type=WORKFLOW_TYPES[row["execution_type"]],
        workflow_id=row["temporal_workflow_id"] or workflow_id_for(str(row["id"])),
        task_queue=str(row["worker_queue_id"]),
        argument=RawValue(payload),
    )


STORED_COLUMNS = (
    "id, organization_id, execution_type, status, temporal_workflow_id, worker_queue_id, "
    "start_payload"
)


async def _start_stored(db: asyncpg.Pool[Any], temporal: TemporalGateway, row: Any) -> bool:
    """Start a stored start (raises what Temporal raises but a refusal for good, which fails
    the execution); True once nothing is due any more."""
    if row["status"] == "pending" and row["worker_queue_id"] is None:
        reason = "Its worker queue was deleted before the execution's workflow started"
        await settle(db, row["id"], "failed", reason)
    elif row["status"] == "pending":
        try:
            await start(temporal, _stored(row))
        except Exception as error:
            if is_transient(error):
                raise
            await refuse(db, row["id"], error)
            return True
    await db.execute(
        "UPDATE executions SET start_payload = NULL WHERE id = $1 AND start_payload IS NOT NULL",
        row["id"],
    )
    return True


async def ensure_started(db: asyncpg.Pool[Any], temporal: TemporalGateway, row: Any) -> bool:
    """Start the execution's workflow if its start is still due; False if none was due."""
    stored = await db.fetchrow(
        f"SELECT {STORED_COLUMNS} FROM executions WHERE id = $1 AND start_payload IS NOT NULL",
        row["id"],
    )
    if stored is None:
        return False
    return await _start_stored(db, temporal, stored)


async def start_stalled(
    db: asyncpg.Pool[Any], temporal: TemporalGateway, stalled_seconds: int = STALLED_SECONDS
) -> int:
    """Make the starts still due after `stalled_seconds` (the housekeeping round); returns how
    many were settled. A start Temporal cannot take now is tried again next round."""
    rows = await db.fetch(
        f"SELECT {STORED_COLUMNS} FROM executions WHERE start_payload IS NOT NULL "
        "AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
        stalled_seconds,
        BATCH,
    )
    done = 0
    for row in rows:
        try:
            await _start_stored(db, temporal, row)
        except Exception as error:
            temporal.count_error("start_workflow")
            log.warning(
                "stalled start not made",
                extra={"execution_id": str(row["id"]), "error": str(error)},
            )
            continue
        done += 1
    return done
