"""A one-activity workflow that proves a queue has a worker polling it: `controlplane worker`
answers it, and tests and operators use it to check a queue end to end."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from workflows.contracts import ANSWER_PROBE, QUEUE_PROBE_WORKFLOW


@workflow.defn(name=QUEUE_PROBE_WORKFLOW)
class QueueProbeWorkflow:
    @workflow.run
    async def run(self, note: str) -> str:
        result: str = await workflow.execute_activity(
            ANSWER_PROBE, note, start_to_close_timeout=timedelta(seconds=30)
        )
        return result
