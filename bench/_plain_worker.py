"""A plain temporalio worker, the baseline of bench/execution_latency.py's (d): the one-activity
QueueProbeWorkflow on a task queue of the given namespace, nothing else.

    python bench/_plain_worker.py TEMPORAL_ADDRESS NAMESPACE TASK_QUEUE
"""

from __future__ import annotations

import asyncio
import sys

from temporalio.client import Client
from temporalio.worker import Worker

from activities.queue_probe import answer_probe
from workflows.queue_probe import QueueProbeWorkflow


async def serve(address: str, namespace: str, task_queue: str) -> None:
    client = await Client.connect(address, namespace=namespace)
    async with Worker(
        client, task_queue=task_queue, workflows=[QueueProbeWorkflow], activities=[answer_probe]
    ):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2], sys.argv[3]))
