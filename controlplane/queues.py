"""Worker queues and the workers on them, as the domain knows them: naming rules, when a worker
counts as live (reference §6: a heartbeat under 150 s old), and a queue row by id."""

from __future__ import annotations

import uuid

import asyncpg

from controlplane.db import Queryable
from controlplane.errors import not_found

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# Queues named like this are made for one local execution and hidden from lists, as in Kubiya.
EPHEMERAL_PREFIX = "local-exec"
# The column is a Postgres integer; a larger limit means nothing more than "unlimited" anyway.
MAX_WORKERS_LIMIT = 100_000
# A worker counts as active while its last heartbeat is younger than this (2 x 60 s + 30 s).
STALE_WORKER_SECONDS = 150


# Whether worker `w` is live.
LIVE_WORKER = (
    "w.status IN ('active', 'idle', 'busy') "
    f"AND w.last_heartbeat > now() - interval '{STALE_WORKER_SECONDS} seconds'"
)


def live_workers_sql(queue_filter: str, status: str | None = None) -> str:
    """A correlated count of live workers; `queue_filter` picks the queues."""
    status_clause = f" AND w.status = '{status}'" if status else ""
    return f"(SELECT count(*) FROM workers w WHERE {queue_filter} AND {LIVE_WORKER}{status_clause})"


QUEUE_COLUMNS = (
    "id, organization_id, environment_id, name, display_name, description, status, max_workers, "
    "heartbeat_interval, tags, settings, ephemeral, created_at, updated_at, created_by, "
    + live_workers_sql("w.worker_queue_id = worker_queues.id")
    + " AS active_workers"
)


async def queue_row(db: Queryable, org: str, queue_id: uuid.UUID) -> asyncpg.Record:
    """The organization's queue with its live worker count; not found otherwise."""
    row: asyncpg.Record | None = await db.fetchrow(
        f"SELECT {QUEUE_COLUMNS} FROM worker_queues WHERE id = $1 AND organization_id = $2",
        queue_id,
        org,
    )
    if row is None:
        raise not_found("Worker queue", queue_id)
    return row
