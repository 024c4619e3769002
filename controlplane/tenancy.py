"""Organizations and API keys: the functions that both the CLI and the routes use."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

# What an API key row may hold: people's roles, and `worker` (a key bound to one worker queue).
KeyRole = Literal["viewer", "member", "admin", "worker"]
KEY_PREFIX = "cpk_"
ORG_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a plain SHA-256 is as good as a slow hash here
    # and keeps the per-request lookup cheap.
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    id: uuid.UUID
    organization_id: str
    name: str
    prefix: str
    role: KeyRole
    created_at: datetime
    key: str  # shown once, never stored
    worker_queue_id: uuid.UUID | None = None


class OrgExists(Exception):
    pass


class UnknownOrg(Exception):
    pass


class UnknownQueue(Exception):
    """A worker key names a queue the organization does not have."""


async def create_org(
    conn: asyncpg.Connection[Any] | asyncpg.Pool[Any],
    slug: str,
    *,
    name: str | None = None,
    rate_limit_per_minute: int = 100,
) -> None:
    if not ORG_SLUG.match(slug):
        raise ValueError(f"organization id must be a slug (a-z, 0-9, '-'), got {slug!r}")
    if rate_limit_per_minute < 1:
        raise ValueError("rate limit must be at least 1 request per minute")
    inserted = await conn.fetchval(
        "INSERT INTO organizations (id, name, rate_limit_per_minute) VALUES ($1, $2, $3) "
        "ON CONFLICT (id) DO NOTHING RETURNING id",
        slug,
        name or slug,
        rate_limit_per_minute,
    )
    if inserted is None:
        raise OrgExists(slug)


async def set_rate_limit(
    conn: asyncpg.Connection[Any] | asyncpg.Pool[Any], slug: str, per_minute: int
) -> None:
    if per_minute < 1:
        raise ValueError("rate limit must be at least 1 request per minute")
    updated = await conn.fetchval(
        "UPDATE organizations SET rate_limit_per_minute = $2 WHERE id = $1 RETURNING id",
        slug,
        per_minute,
    )
    if updated is None:
        raise UnknownOrg(slug)


async def list_orgs(conn: asyncpg.Connection[Any] | asyncpg.Pool[Any]) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, name, rate_limit_per_minute, created_at FROM organizations ORDER BY id"
    )


async def create_key(
    conn: asyncpg.Connection[Any] | asyncpg.Pool[Any],
    organization_id: str,
    *,
    role: KeyRole,
    name: str,
    created_by: str | None = None,
    worker_queue_id: uuid.UUID | None = None,
) -> NewKey:
    """A new key; a `worker` key needs the queue it may start workers on (of the same
    organization), and only a worker key may name one."""
    if (role == "worker") != (worker_queue_id is not None):
        raise ValueError("a worker key needs a worker queue, and only a worker key takes one")
    if worker_queue_id is not None:
        owned = await conn.fetchval(
            "SELECT 1 FROM worker_queues WHERE id = $1 AND organization_id = $2",
            worker_queue_id,
            organization_id,
        )
        if owned is None:
            raise UnknownQueue(str(worker_queue_id))
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    prefix = key[:12]
    key_id = uuid.uuid4()
    try:
        created_at = await conn.fetchval(
            "INSERT INTO api_keys (id, organization_id, name, prefix, key_hash, role, created_by, "
            "worker_queue_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING created_at",
            key_id,
            organization_id,
            name,
            prefix,
            hash_key(key),
            role,
            created_by,
            worker_queue_id,
        )
    except asyncpg.ForeignKeyViolationError:
        raise UnknownOrg(organization_id) from None
    return NewKey(key_id, organization_id, name, prefix, role, created_at, key, worker_queue_id)


KEY_COLUMNS = (
    "id, organization_id, name, prefix, role, worker_queue_id, created_at, created_by, revoked_at"
)

# Minting is counted per organization in the rate-limit table, under a key id of its own.
_MINT_NAMESPACE = uuid.UUID("6f1c2b7e-3f4a-4c55-9a1e-2d6c8b0e7a10")
MINT_WINDOW_SECONDS = 60


async def take_mint_budget(
    conn: asyncpg.Connection[Any] | asyncpg.Pool[Any], organization_id: str, per_minute: int
) -> int | None:
    """Count one credential minted (worker key or worker token) for the organization; returns
    the seconds to wait when this minute's budget is spent, else None."""
    now = time.time()
    window = int(now) // MINT_WINDOW_SECONDS * MINT_WINDOW_SECONDS
    count: int = await conn.fetchval(
        "INSERT INTO rate_limit_counters (api_key_id, window_start, count) VALUES ($1, $2, 1) "
        "ON CONFLICT (api_key_id, window_start) "
        "DO UPDATE SET count = rate_limit_counters.count + 1 RETURNING count",
        uuid.uuid5(_MINT_NAMESPACE, organization_id),
        window,
    )
    if count <= per_minute:
        return None
    return max(1, int(window + MINT_WINDOW_SECONDS - now + 0.999))


async def revoke_key(
    conn: asyncpg.Connection[Any] | asyncpg.Pool[Any], organization_id: str, key_id: uuid.UUID
) -> asyncpg.Record | None:
    """Revoking twice keeps the first revocation time."""
    return await conn.fetchrow(
        f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "
        f"WHERE id = $1 AND organization_id = $2 RETURNING {KEY_COLUMNS}",
        key_id,
        organization_id,
    )
