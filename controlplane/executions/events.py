"""An execution's events: appended in seq order under the execution's row lock (so rows commit
in seq order and a reader resuming after seq N can never miss a row that commits later), and
announced with NOTIFY to every API process that streams them."""

from __future__ import annotations

import uuid
from typing import Any

from controlplane.db import Conn

CHANNEL = "execution_events"


async def append_event(
    conn: Conn,
    execution_id: uuid.UUID,
    event_type: str,
    data: dict[str, Any],
    event_key: str | None = None,
) -> int | None:
    """Store one event; returns its seq, or None when `event_key` was stored before.
    Must run inside a transaction: the row lock on the execution orders the seqs."""
    if event_key is not None:
        existing = await conn.fetchval(
            "SELECT seq FROM execution_events WHERE execution_id = $1 AND event_key = $2",
            execution_id,
            event_key,
        )
        if existing is not None:
            return None
    seq: int = await conn.fetchval(
        "UPDATE executions SET last_event_seq = last_event_seq + 1 WHERE id = $1 "
        "RETURNING last_event_seq",
        execution_id,
    )
    await conn.execute(
        "INSERT INTO execution_events (execution_id, seq, event_type, data, event_key) "
        "VALUES ($1, $2, $3, $4, $5)",
        execution_id,
        seq,
        event_type,
        data,
        event_key,
    )
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(execution_id))
    return seq
