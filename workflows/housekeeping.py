"""HousekeepingWorkflow: one round of the control plane's upkeep, started every minute by a
Temporal Schedule (`controlplane-housekeeping`) on the system worker. Each step is an activity
that calls the domain: prune counters, idempotency records and old outbox events no one reads again,
make the workflow starts of executions still due (controlplane/executions/starting.py) and
settle executions whose workflow ended without telling us (controlplane/executions/reconcile.py),
and mark workers whose heartbeats stopped as offline, announcing each (`worker.status_changed`,
status `stale`) to webhook subscribers (controlplane/workers.py).

A round is short and idempotent: a round the system worker dies in is retried by Temporal, and
the Schedule skips a round while the previous one still runs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.contracts import (
    ANNOUNCE_STALE_WORKERS,
    HOUSEKEEPING_WORKFLOW,
    PRUNE_COUNTERS,
    RECONCILE_EXECUTIONS,
    HousekeepingResult,
)

STEP: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=2),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=5),
}


@workflow.defn(name=HOUSEKEEPING_WORKFLOW)
class HousekeepingWorkflow:
    @workflow.run
    async def run(self) -> HousekeepingResult:
        pruned: int = await workflow.execute_activity(PRUNE_COUNTERS, result_type=int, **STEP)
        settled: int = await workflow.execute_activity(
            RECONCILE_EXECUTIONS, result_type=int, **STEP
        )
        stale = 0
        # Rounds recorded before this step existed replay without it.
        if workflow.patched("announce-stale-workers"):
            stale = await workflow.execute_activity(ANNOUNCE_STALE_WORKERS, result_type=int, **STEP)
        return HousekeepingResult(pruned=pruned, settled=settled, stale_workers=stale)
