"""From the outbox to deliveries: each pending event becomes one delivery per active
subscription of its organization that wants its type (and existed when it happened), in one
transaction with marking the event dispatched; then a delivery workflow is started for every
delivery that has none yet.

Both steps are idempotent, so a dispatcher that dies anywhere loses nothing: deliveries are
unique per (subscription, event), an event is marked only with its deliveries, and a delivery is
marked scheduled only after its workflow exists (a workflow id per delivery, never reused, so
starting it twice starts it once).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from workflows.contracts import (
    WEBHOOK_DELIVERY_WORKFLOW,
    WebhookDeliveryInput,
    webhook_delivery_id,
)

NOTIFY_CHANNEL = "outbox_events"
BATCH = 200


async def fan_out(db: asyncpg.Pool[Any], limit: int = BATCH) -> int:
    """Turn up to `limit` pending outbox events into deliveries; returns how many events."""
    async with db.acquire() as conn, conn.transaction():
        # SKIP LOCKED: two dispatchers (a second system worker) share the work, never block.
        ids = [
            row["id"]
            for row in await conn.fetch(
                "SELECT id FROM outbox_events WHERE dispatched_at IS NULL ORDER BY id LIMIT $1 "
                "FOR UPDATE SKIP LOCKED",
                limit,
            )
        ]
        if not ids:
            return 0
        await conn.execute(
            "INSERT INTO webhook_deliveries (id, organization_id, webhook_id, event_id) "
            "SELECT gen_random_uuid(), e.organization_id, w.id, e.event_id "
            "FROM outbox_events e JOIN webhooks w ON w.organization_id = e.organization_id "
            "AND w.status = 'active' AND w.created_at <= e.created_at "
            "AND (e.event_type = ANY(w.events) OR '*' = ANY(w.events)) "
            "WHERE e.id = ANY($1::bigint[]) ORDER BY e.id "
            "ON CONFLICT (webhook_id, event_id) DO NOTHING",
            ids,
        )
        await conn.execute(
            "UPDATE outbox_events SET dispatched_at = now() WHERE id = ANY($1::bigint[])", ids
        )
    return len(ids)


async def schedule(
    db: asyncpg.Pool[Any],
    client: Client,
    task_queue: str,
    policy: WebhookDeliveryInput,
    limit: int = BATCH,
) -> int:
    """Start the delivery workflow of every delivery that has none yet (`policy` gives the
    retry schedule; its delivery id is replaced); returns how many were started."""
    rows = await db.fetch(
        "SELECT id FROM webhook_deliveries WHERE scheduled_at IS NULL AND status = 'pending' "
        "ORDER BY created_at, id LIMIT $1",
        limit,
    )
    started: list[uuid.UUID] = []
    for row in rows:
        delivery_id = str(row["id"])
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await client.start_workflow(
                WEBHOOK_DELIVERY_WORKFLOW,
                WebhookDeliveryInput(
                    delivery_id=delivery_id,
                    first_retry_seconds=policy.first_retry_seconds,
                    max_retry_seconds=policy.max_retry_seconds,
                    window_seconds=policy.window_seconds,
                ),
                id=webhook_delivery_id(delivery_id),
                task_queue=task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        started.append(row["id"])
    if started:
        await db.execute(
            "UPDATE webhook_deliveries SET scheduled_at = now() WHERE id = ANY($1::uuid[])",
            started,
        )
    return len(started)


@contextlib.asynccontextmanager
async def outbox_notices(db: asyncpg.Pool[Any]) -> AsyncIterator[asyncio.Event]:
    """An event set whenever a transaction that added outbox rows commits (the trigger of
    migration 0012 NOTIFYs); the caller clears it before each look at the outbox."""
    notice = asyncio.Event()

    def notified(*_: object) -> None:
        notice.set()

    async with db.acquire() as conn:
        await conn.add_listener(NOTIFY_CHANNEL, notified)
        try:
            yield notice
        finally:
            # A broken connection is reset when released, listeners and all.
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await conn.remove_listener(NOTIFY_CHANNEL, notified)
