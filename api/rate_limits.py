"""The per-credential rate limit (requests per fixed one-minute window), shared by every API
process through Postgres without a write per request.

Each process reserves requests from the window's row in `rate_limit_counters` a batch at a time
(one `UPDATE ... count = count + batch`) and spends them from memory. The row counts what has
been reserved, so the processes together never admit more than the limit: a process admits only
requests it reserved, and a reservation that would pass the limit is granted only the rest.
Batches are at most a twentieth of the limit and shrink as the window fills (an eighth of what
is left, down to one), so near the limit every request reserves its own, and what a process
holds unspent when another is refused is small. A window the row shows as spent is refused
without a write. A limit under 40 reserves one request at a time: exactly the old behaviour.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

WINDOW_SECONDS = 60
# A batch is at most this share of the limit ...
MAX_BATCH_SHARE = 20
# ... and at most this share of what the window has left when it is reserved.
LEFT_SHARE = 8

_RESERVE = """
INSERT INTO rate_limit_counters (api_key_id, window_start, count) VALUES ($1, $2, $3)
ON CONFLICT (api_key_id, window_start) DO UPDATE SET count = rate_limit_counters.count + $3
RETURNING count
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # when the window ends, Unix seconds

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }

    def retry_after(self, now: float) -> int:
        return max(1, math.ceil(self.reset - now))


@dataclass
class _Bucket:
    """One credential's window, as this process sees it."""

    window: int
    granted: int = 0  # requests this process reserved in the window
    used: int = 0  # of those, admitted
    reserved: int = 0  # the row's count after this process's last reservation (all processes)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def admit(self, limit: int) -> Decision | None:
        if self.used >= self.granted:
            return None
        self.used += 1
        return self._decision(True, limit)

    def refuse(self, limit: int) -> Decision:
        return self._decision(False, limit)

    def _decision(self, allowed: bool, limit: int) -> Decision:
        remaining = max(0, limit - self.reserved) + self.granted - self.used
        return Decision(allowed, limit, remaining, self.window + WINDOW_SECONDS)


def batch_size(limit: int, reserved: int) -> int:
    """How many requests to reserve when `reserved` of `limit` are already taken."""
    return max(1, min(limit // MAX_BATCH_SHARE, (limit - reserved) // LEFT_SHARE))


class RateLimiter:
    """Counts requests per credential id (an API key's or a worker's)."""

    def __init__(self, pool: Callable[[], asyncpg.Pool[Any]]) -> None:
        self._pool = pool
        self._buckets: dict[uuid.UUID, _Bucket] = {}
        self._window = 0

    async def hit(self, credential: uuid.UUID, limit: int, now: float) -> Decision:
        """Count one request of `credential` at `now` (Unix seconds) against `limit` per minute."""
        window = int(now) // WINDOW_SECONDS * WINDOW_SECONDS
        if window != self._window:
            # Buckets of past windows are spent; forget them all once per window.
            self._window = window
            self._buckets = {k: b for k, b in self._buckets.items() if b.window >= window}
        bucket = self._buckets.get(credential)
        if bucket is None or bucket.window != window:
            bucket = self._buckets[credential] = _Bucket(window)
        decision = bucket.admit(limit)
        if decision is not None:
            return decision
        async with bucket.lock:
            # Another request may have reserved while this one waited.
            decision = bucket.admit(limit)
            if decision is not None:
                return decision
            if bucket.reserved >= limit:
                return bucket.refuse(limit)
            batch = batch_size(limit, bucket.reserved)
            count: int = await self._pool().fetchval(_RESERVE, credential, window, batch)
            bucket.granted += max(0, min(batch, limit - (count - batch)))
            bucket.reserved = count
            return bucket.admit(limit) or bucket.refuse(limit)
