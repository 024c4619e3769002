"""A one-activity workflow that proves a queue has a worker polling it: `controlplane worker`
answers it, and tests and operators use it to check a queue end to end."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.queue_probe import answer_probe

QUEUE_PROBE_WORKFLOW = "QueueProbeWorkflow"


@workflow.defn(name=QUEUE_PROBE_WORKFLOW)
class QueueProbeWorkflow:
    @workflow.run
    async def run(self, note: str) -> str:
        return await workflow.execute_activity(
            answer_probe, note, start_to_close_timeout=timedelta(seconds=30)
        )
