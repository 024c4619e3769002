"""`controlplane system-worker`: the control plane's own Temporal worker.

It polls `SYSTEM_TASK_QUEUE` (default `controlplane-system`) in the control plane's namespace
(`TEMPORAL_NAMESPACE`), with the same database, vault key and signing key as the API. At start
it makes sure the housekeeping Schedule exists (every minute, skipped while a round runs), so
the upkeep the API processes used to do each on their own now happens once, visibly, in the
Temporal UI; and that the webhook dispatcher runs (workflows/webhooks.py). It also runs task
planning (PlanGenerationWorkflow), whose model calls need ANTHROPIC_API_KEY (or
ANTHROPIC_API_KEY_FILE) and, for another endpoint, ANTHROPIC_BASE_URL; and the runs of plans and
user-defined workflows (PlanOrchestratorWorkflow, WorkflowInterpreterWorkflow), whose steps are
executions of the organizations' own workers; and the scheduled runs of cron jobs
(JobRunWorkflow, started by each job's Schedule `job-{id}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from controlplane.db import create_pool
from controlplane.settings import Settings
from controlplane.system.activities import SystemActivities
from controlplane.temporal import TemporalGateway
from controlplane.temporal_auth import CONTROL_PLANE_PERMISSIONS, load_signing_key, mint
from controlplane.vault import vault_from_key
from workflows.contracts import (
    HOUSEKEEPING_WORKFLOW,
    WEBHOOK_DISPATCHER_WORKFLOW,
    WebhookDispatcherState,
    webhook_dispatcher_id,
)
from workflows.housekeeping import HousekeepingWorkflow
from workflows.jobs import JobRunWorkflow
from workflows.plan_generation import PlanGenerationWorkflow
from workflows.runs import PlanOrchestratorWorkflow, WorkflowInterpreterWorkflow
from workflows.webhooks import WebhookDeliveryWorkflow, WebhookDispatcherWorkflow

log = logging.getLogger("controlplane.system")
HOUSEKEEPING_SCHEDULE = "controlplane-housekeeping"
HOUSEKEEPING_EVERY = timedelta(minutes=1)
# Let a running activity finish on SIGTERM before it is cancelled (and retried elsewhere).
DRAIN = timedelta(seconds=20)
# A run's step holds an activity slot while it awaits its execution (an asyncio wait on a
# shared LISTEN connection, cheap): room for many at once.
MAX_CONCURRENT_ACTIVITIES = 1000


def system_workflows() -> list[type[Any]]:
    return [
        HousekeepingWorkflow,
        WebhookDispatcherWorkflow,
        WebhookDeliveryWorkflow,
        PlanGenerationWorkflow,
        PlanOrchestratorWorkflow,
        WorkflowInterpreterWorkflow,
        JobRunWorkflow,
    ]


def model_key_from_env() -> str | None:
    """The planner's model key: ANTHROPIC_API_KEY, or the file ANTHROPIC_API_KEY_FILE names.
    (ANTHROPIC_BASE_URL, if set, is read by the anthropic client itself.)"""
    key = os.environ.get("ANTHROPIC_API_KEY", "").strip()
    path = os.environ.get("ANTHROPIC_API_KEY_FILE", "").strip()
    if not key and path:
        try:
            with open(path, encoding="utf-8") as handle:
                key = handle.read().strip()
        except OSError as exc:
            raise SystemExit(f"cannot read ANTHROPIC_API_KEY_FILE {path}: {exc.strerror}") from None
    return key or None


async def ensure_housekeeping_schedule(client: Client, task_queue: str) -> None:
    """The Schedule that starts a housekeeping round every minute, created once."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            HOUSEKEEPING_WORKFLOW, id="controlplane-housekeeping-round", task_queue=task_queue
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=HOUSEKEEPING_EVERY)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(HOUSEKEEPING_SCHEDULE, schedule)


async def ensure_webhook_dispatcher(client: Client, task_queue: str) -> None:
    """The dispatcher of this task queue, started unless it runs (it runs for good, so a new
    system worker finds it and picks up its rounds)."""
    await client.start_workflow(
        WEBHOOK_DISPATCHER_WORKFLOW,
        WebhookDispatcherState(),
        id=webhook_dispatcher_id(task_queue),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def connect(settings: Settings) -> tuple[Any, TemporalGateway]:
    """The pool and a Temporal gateway carrying the control plane's own JWT."""
    pool = await create_pool(settings.database_url, min_size=1, max_size=settings.db_pool_max)
    gateway = TemporalGateway(settings)
    vault = vault_from_key(settings.secret_key) if settings.secret_key else None
    async with pool.acquire() as conn:
        key = await load_signing_key(conn, vault)
    gateway.token_source = lambda: mint(
        key,
        subject="controlplane-system-worker",
        permissions=CONTROL_PLANE_PERMISSIONS,
        ttl_seconds=settings.temporal_token_ttl_seconds,
        issuer=settings.public_url,
    )
    return pool, gateway


async def run(settings: Settings, stop: asyncio.Event) -> None:
    pool, gateway = await connect(settings)
    try:
        client = await gateway.system_client()
        await ensure_housekeeping_schedule(client, settings.system_task_queue)
        await ensure_webhook_dispatcher(client, settings.system_task_queue)
        model_key = model_key_from_env()
        activities = SystemActivities(pool, gateway, settings, model_key)
        worker = Worker(
            client,
            task_queue=settings.system_task_queue,
            workflows=system_workflows(),
            activities=activities.activities(),
            graceful_shutdown_timeout=DRAIN,
            max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        )
        log.info(
            "system worker started",
            extra={
                "task_queue": settings.system_task_queue,
                "namespace": client.namespace,
                "planner_model_key": "set" if model_key else "missing",
            },
        )
        try:
            async with worker:
                await stop.wait()
        finally:
            await activities.close()
    finally:
        await pool.close()


def main() -> int:
    """Run until SIGTERM or SIGINT."""

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(Settings.from_env(), stop)

    asyncio.run(serve())
    return 0
