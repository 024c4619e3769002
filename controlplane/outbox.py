"""The outbox: events for webhook subscribers, recorded in the transaction of the change they
announce. A delivery process reads them later; a change that rolls back announces nothing, and
a crash between the change and the delivery loses nothing.

Payload, as subscribers receive it: `{id, type, timestamp, organization_id, data}`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from controlplane.db import Conn

EVENT_TYPES = (
    "execution.started",
    "execution.waiting_for_input",
    "execution.completed",
    "execution.failed",
    "execution.cancelled",
    "workflow.state_changed",
    "worker.status_changed",
    "policy.violation",
    "error",
)


async def record(
    conn: Conn, organization_id: str, event_type: str, data: dict[str, Any]
) -> uuid.UUID:
    """Add an event to the outbox, in the caller's transaction; returns its id."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown outbox event type {event_type!r}")
    event_id = uuid.uuid4()
    payload = {
        "id": str(event_id),
        "type": event_type,
        "timestamp": datetime.now(UTC).isoformat(),
        "organization_id": organization_id,
        "data": data,
    }
    await conn.execute(
        "INSERT INTO outbox_events (event_id, organization_id, event_type, payload) "
        "VALUES ($1, $2, $3, $4)",
        event_id,
        organization_id,
        event_type,
        payload,
    )
    return event_id
