"""Rows no request will read again: rate-limit windows older than five minutes (a window is one
minute; the mint budget's too) and Idempotency-Key records past their 24 hours."""

from __future__ import annotations

import time
from typing import Any

import asyncpg

COUNTER_WINDOWS_KEPT_SECONDS = 5 * 60
IDEMPOTENCY_RETENTION = "24 hours"


async def prune(db: asyncpg.Pool[Any]) -> int:
    """Delete them; returns how many rows went."""
    cutoff = int(time.time()) - COUNTER_WINDOWS_KEPT_SECONDS
    counters = await db.execute("DELETE FROM rate_limit_counters WHERE window_start < $1", cutoff)
    records = await db.execute(
        f"DELETE FROM idempotency_keys WHERE created_at < now() - interval "
        f"'{IDEMPOTENCY_RETENTION}'"
    )
    return sum(int(status.rsplit(" ", 1)[-1]) for status in (counters, records))
