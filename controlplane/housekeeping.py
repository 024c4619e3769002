"""Rows no request will read again: rate-limit windows older than five minutes (a window is one
minute; the mint budget's too), Idempotency-Key records past their 24 hours, and outbox events
older than the webhook log's retention whose deliveries have all ended (with them go their
deliveries and attempts, the deliveries log)."""

from __future__ import annotations

import time
from typing import Any

import asyncpg

COUNTER_WINDOWS_KEPT_SECONDS = 5 * 60
IDEMPOTENCY_RETENTION = "24 hours"
# A round deletes at most this many events (a first round after a long time stays short).
EVENTS_PER_ROUND = 5000


async def prune(db: asyncpg.Pool[Any], webhook_log_retention_days: int = 30) -> int:
    """Delete them; returns how many rows went (the outbox's events, not their cascade)."""
    cutoff = int(time.time()) - COUNTER_WINDOWS_KEPT_SECONDS
    counters = await db.execute("DELETE FROM rate_limit_counters WHERE window_start < $1", cutoff)
    records = await db.execute(
        f"DELETE FROM idempotency_keys WHERE created_at < now() - interval "
        f"'{IDEMPOTENCY_RETENTION}'"
    )
    # An event not fanned out yet, or with a delivery still being retried, is kept whatever
    # its age (the dispatcher or a delivery workflow still needs it).
    events = await db.execute(
        "DELETE FROM outbox_events WHERE id IN (SELECT e.id FROM outbox_events e "
        "WHERE e.created_at < now() - make_interval(days => $1) AND e.dispatched_at IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d "
        "WHERE d.event_id = e.event_id AND d.status = 'pending') LIMIT $2)",
        webhook_log_retention_days,
        EVENTS_PER_ROUND,
    )
    return sum(int(status.rsplit(" ", 1)[-1]) for status in (counters, records, events))
