"""Executions whose workflow ended without telling us (terminated from the Temporal UI, timed
out, or its last report lost for good) would stay `running` in the read model forever. Every
API process looks, now and then, at executions that have been quiet for a while and whose
workflow is closed, and records how they ended."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from controlplane.executions.actions import workflow_client
from controlplane.executions.lifecycle import settle
from controlplane.temporal import TemporalGateway
from workflows.contracts import TERMINAL_STATES, workflow_id_for

log = logging.getLogger("controlplane.api.reconciler")

# Only executions quiet this long: a live workflow reports more often than this.
QUIET_SECONDS = 120
BATCH = 100

_ENDINGS: dict[WorkflowExecutionStatus, tuple[str, str]] = {
    WorkflowExecutionStatus.TERMINATED: (
        "failed",
        "The workflow was terminated outside the control plane",
    ),
    WorkflowExecutionStatus.TIMED_OUT: ("failed", "The workflow timed out"),
    WorkflowExecutionStatus.FAILED: ("failed", "The workflow failed"),
    WorkflowExecutionStatus.CANCELED: ("cancelled", "The workflow was cancelled"),
    WorkflowExecutionStatus.COMPLETED: ("completed", "The workflow completed"),
}


async def reconcile_executions(
    db: asyncpg.Pool[Any], temporal: TemporalGateway, quiet_seconds: int = QUIET_SECONDS
) -> int:
    """Record the ending of quiet executions whose workflow is closed; returns how many."""
    rows = await db.fetch(
        "SELECT id, organization_id, execution_type, temporal_workflow_id, "
        "start_payload IS NOT NULL AS awaiting_start FROM executions "
        "WHERE status <> ALL($1::text[]) "
        "AND updated_at < now() - make_interval(secs => $2) ORDER BY updated_at LIMIT $3",
        list(TERMINAL_STATES),
        quiet_seconds,
        BATCH,
    )
    if not rows:
        return 0
    settled = 0
    for row in rows:
        workflow_id = row["temporal_workflow_id"] or workflow_id_for(str(row["id"]))
        try:
            client = await workflow_client(temporal, row)
            description = await client.get_workflow_handle(workflow_id).describe()
            ending = _ENDINGS.get(description.status) if description.status else None
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                temporal.count_error("describe")
                continue
            if row["awaiting_start"]:
                continue  # not started yet: start_stalled (starting.py) starts it
            ending = ("failed", "The execution's workflow no longer exists")
        if ending is None:
            continue  # still running: just quiet (waiting for input, or a long tool)
        if await settle(db, row["id"], *ending):
            settled += 1
            log.warning(
                "execution settled from its workflow",
                extra={"execution_id": str(row["id"]), "status": ending[0]},
            )
    return settled
