"""The system worker's activities: each calls a use case of the domain. They run in the control
plane (database access, the vault key), never on a customer's worker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from temporalio import activity

from controlplane.executions.reconcile import reconcile_executions
from controlplane.housekeeping import prune
from controlplane.settings import Settings
from controlplane.temporal import TemporalGateway
from controlplane.vault import Vault, vault_from_key
from controlplane.webhooks import delivery, dispatch
from controlplane.workers import mark_stale
from workflows.contracts import (
    ANNOUNCE_STALE_WORKERS,
    ATTEMPT_WEBHOOK_DELIVERY,
    DISPATCH_WEBHOOK_EVENTS,
    GIVE_UP_WEBHOOK_DELIVERY,
    PRUNE_COUNTERS,
    RECONCILE_EXECUTIONS,
    WebhookAttempt,
    WebhookAttemptOutcome,
    WebhookDeliveryInput,
    WebhookDispatch,
    WebhookGiveUp,
)

# How often a waiting dispatch round looks at the outbox without a notice, and heartbeats.
DISPATCH_POLL_SECONDS = 2.0
HEARTBEAT_EVERY_SECONDS = 1.0


@contextlib.asynccontextmanager
async def heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the body runs, so a worker that dies mid-attempt is noticed within the
    activity's heartbeat timeout and the attempt runs again elsewhere."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY_SECONDS)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class SystemActivities:
    def __init__(
        self, db: asyncpg.Pool[Any], temporal: TemporalGateway, settings: Settings | None = None
    ) -> None:
        self.db = db
        self.temporal = temporal
        self.settings = settings or temporal.settings
        self.vault: Vault | None = (
            vault_from_key(self.settings.secret_key) if self.settings.secret_key else None
        )

    @activity.defn(name=PRUNE_COUNTERS)
    async def prune_counters(self) -> int:
        return await prune(self.db)

    @activity.defn(name=RECONCILE_EXECUTIONS)
    async def reconcile_executions(self) -> int:
        return await reconcile_executions(self.db, self.temporal)

    @activity.defn(name=ANNOUNCE_STALE_WORKERS)
    async def announce_stale_workers(self) -> int:
        return await mark_stale(self.db)

    @activity.defn(name=DISPATCH_WEBHOOK_EVENTS)
    async def dispatch_webhook_events(self, request: WebhookDispatch) -> int:
        """Wait for outbox events (up to `wait_seconds`, or until the worker shuts down), fan
        them out and start their delivery workflows; returns how many were started."""
        client = await self.temporal.system_client()
        task_queue = activity.info().task_queue
        policy = WebhookDeliveryInput(
            delivery_id="",
            first_retry_seconds=self.settings.webhook_first_retry_seconds,
            window_seconds=self.settings.webhook_retry_window_seconds,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.wait_seconds
        async with dispatch.outbox_notices(self.db) as notice:
            while True:
                notice.clear()
                events = await dispatch.fan_out(self.db)
                started = await dispatch.schedule(self.db, client, task_queue, policy)
                remaining = deadline - loop.time()
                if events or started or remaining <= 0 or activity.is_worker_shutdown():
                    return started
                activity.heartbeat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        notice.wait(), min(DISPATCH_POLL_SECONDS, max(remaining, 0.01))
                    )

    @activity.defn(name=ATTEMPT_WEBHOOK_DELIVERY)
    async def attempt_webhook_delivery(self, request: WebhookAttempt) -> WebhookAttemptOutcome:
        async with heartbeating():
            outcome = await delivery.attempt(
                self.db,
                self.vault,
                uuid.UUID(request.delivery_id),
                allow_private=self.settings.webhook_allow_private,
                next_retry_seconds=request.next_retry_seconds,
            )
        return WebhookAttemptOutcome(outcome.outcome, outcome.status_code, outcome.error)

    @activity.defn(name=GIVE_UP_WEBHOOK_DELIVERY)
    async def give_up_webhook_delivery(self, request: WebhookGiveUp) -> bool:
        return await delivery.give_up(
            self.db, uuid.UUID(request.delivery_id), request.window_seconds
        )
