"""A worker's life as webhook subscribers hear of it (`worker.status_changed`): registered when it
starts on a queue, disconnected when it says goodbye, stale when housekeeping finds its
heartbeats stopped (it is then marked `offline`; a heartbeat brings it back). Each is announced
in the transaction of the change, like every outbox event."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import asyncpg

from controlplane import outbox
from controlplane.db import Conn
from controlplane.errors import not_found
from controlplane.queues import STALE_WORKER_SECONDS

Change = Literal["registered", "disconnected", "stale"]
# How many stale workers one housekeeping round takes; the next round takes the rest.
STALE_BATCH = 500
_DESCRIBED = (
    "w.id, w.organization_id, w.worker_queue_id, w.runner_name, w.hostname, w.status, "
    "w.last_heartbeat, q.name AS queue_name, e.name AS environment_name"
)
_JOINED = (
    "workers w JOIN worker_queues q ON q.id = w.worker_queue_id "
    "JOIN environments e ON e.id = q.environment_id"
)


async def announce(
    conn: Conn,
    worker: asyncpg.Record,
    change: Change,
    *,
    previous_status: str | None = None,
    reason: str | None = None,
) -> None:
    """Record `worker.status_changed` for a worker row described by `_DESCRIBED`."""
    data: dict[str, Any] = {
        "worker_id": str(worker["id"]),
        "status": change,
        "previous_status": previous_status,
        "worker_queue_id": str(worker["worker_queue_id"]),
        "queue_name": worker["queue_name"],
        "environment_name": worker["environment_name"],
        "runner_name": worker["runner_name"],
        "hostname": worker["hostname"],
        "last_heartbeat": worker["last_heartbeat"].isoformat(),
    }
    if reason is not None:
        data["reason"] = reason
    await outbox.record(conn, worker["organization_id"], "worker.status_changed", data)


async def describe(conn: Conn, worker_id: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_DESCRIBED} FROM {_JOINED} WHERE w.id = $1", worker_id
    )
    if row is None:
        raise not_found("Worker", worker_id)
    return row


async def announce_registered(conn: Conn, worker_id: uuid.UUID) -> None:
    """In the transaction that inserted the worker."""
    await announce(conn, await describe(conn, worker_id), "registered")


async def mark_disconnected(
    conn: Conn, org: str, worker_id: uuid.UUID, record: dict[str, Any]
) -> None:
    """Mark the worker gone (its token stops working) and say so, once: a second disconnect
    changes nothing and announces nothing. Run it in a transaction."""
    current = await conn.fetchrow(
        f"SELECT {_DESCRIBED} FROM {_JOINED} WHERE w.id = $1 AND w.organization_id = $2 "
        "FOR UPDATE OF w",
        worker_id,
        org,
    )
    if current is None:
        raise not_found("Worker", worker_id)
    await conn.execute(
        "UPDATE workers SET status = 'disconnected', updated_at = now(), "
        "worker_metadata = worker_metadata || $2::jsonb || "
        "jsonb_build_object('disconnect_time', now()) WHERE id = $1",
        worker_id,
        record,
    )
    if current["status"] != "disconnected":
        await announce(
            conn,
            current,
            "disconnected",
            previous_status=current["status"],
            reason=record.get("disconnect_reason"),
        )


async def mark_stale(db: asyncpg.Pool[Any]) -> int:
    """Workers that stopped heartbeating without disconnecting (killed, cut off) become
    `offline`, each announced as stale; returns how many."""
    async with db.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            f"SELECT {_DESCRIBED} FROM {_JOINED} WHERE w.status IN ('active', 'idle', 'busy') "
            f"AND w.last_heartbeat < now() - interval '{STALE_WORKER_SECONDS} seconds' "
            "ORDER BY w.last_heartbeat LIMIT $1 FOR UPDATE OF w SKIP LOCKED",
            STALE_BATCH,
        )
        if not rows:
            return 0
        await conn.execute(
            "UPDATE workers SET status = 'offline', updated_at = now() WHERE id = ANY($1::uuid[])",
            [row["id"] for row in rows],
        )
        for row in rows:
            await announce(
                conn,
                row,
                "stale",
                previous_status=row["status"],
                reason=f"no heartbeat for more than {STALE_WORKER_SECONDS} s",
            )
    return len(rows)
