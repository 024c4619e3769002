"""What the housekeeping round prunes (controlplane/housekeeping.py), and what it keeps. The
rows are made as the API and the dispatcher make them, then aged in SQL: nothing here can wait
thirty days."""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg

from controlplane import outbox
from controlplane.housekeeping import COUNTER_WINDOWS_KEPT_SECONDS, prune
from tests.conftest import Tenant
from tests.webhook_helpers import PUBLIC_URL


async def announced(db: asyncpg.Pool[Any], org: str, days_ago: int, *, dispatched: bool) -> str:
    """An outbox event of the organization, `days_ago` old."""
    async with db.acquire() as conn:
        event_id = await outbox.record(conn, org, "error", {"message": "x"}, dispatched=dispatched)
    await db.execute(
        "UPDATE outbox_events SET created_at = now() - make_interval(days => $2) "
        "WHERE event_id = $1",
        event_id,
        days_ago,
    )
    return str(event_id)


async def delivery(db: asyncpg.Pool[Any], tenant: Tenant, event_id: str, status: str) -> None:
    """The event's delivery to a subscription of the tenant, as the dispatcher fans it out."""
    webhook = await tenant.admin.post(
        "/api/v1/webhooks", json={"url": PUBLIC_URL, "events": ["error"]}
    )
    assert webhook.status_code == 201, webhook.text
    await db.execute(
        "INSERT INTO webhook_deliveries (id, organization_id, webhook_id, event_id, status) "
        "VALUES ($1, $2, $3, $4, $5)",
        uuid.uuid4(),
        tenant.id,
        uuid.UUID(webhook.json()["id"]),
        uuid.UUID(event_id),
        status,
    )


async def kept(db: asyncpg.Pool[Any], event_ids: list[str]) -> set[str]:
    rows = await db.fetch(
        "SELECT event_id FROM outbox_events WHERE event_id = ANY($1::uuid[])",
        [uuid.UUID(e) for e in event_ids],
    )
    return {str(row["event_id"]) for row in rows}


async def test_events_past_the_retention_go_unless_still_being_delivered(
    tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    old_delivered = await announced(db, tenant.id, 31, dispatched=True)
    await delivery(db, tenant, old_delivered, "succeeded")
    old_retrying = await announced(db, tenant.id, 31, dispatched=True)
    await delivery(db, tenant, old_retrying, "pending")
    old_not_fanned_out = await announced(db, tenant.id, 31, dispatched=False)
    recent = await announced(db, tenant.id, 29, dispatched=True)
    everything = [old_delivered, old_retrying, old_not_fanned_out, recent]

    assert await prune(db, webhook_log_retention_days=30) >= 1
    assert await kept(db, everything) == {old_retrying, old_not_fanned_out, recent}
    # Its deliveries log went with it.
    assert (
        await db.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1",
            uuid.UUID(old_delivered),
        )
        == 0
    )


async def test_spent_rate_limit_windows_and_old_idempotency_records_go(
    tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    spent = int(time.time()) - COUNTER_WINDOWS_KEPT_SECONDS - 60
    key_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO rate_limit_counters (api_key_id, window_start, count) VALUES ($1, $2, 1)",
        key_id,
        spent,
    )
    await db.execute(
        "INSERT INTO idempotency_keys (organization_id, credential, idempotency_key, "
        "request_hash, created_at) VALUES ($1, 'key', 'k', 'h', now() - interval '25 hours')",
        tenant.id,
    )
    assert await prune(db) >= 2
    assert not await db.fetchval(
        "SELECT count(*) FROM rate_limit_counters WHERE api_key_id = $1", key_id
    )
    assert not await db.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE organization_id = $1", tenant.id
    )
