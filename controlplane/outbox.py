"""The outbox: events for webhook subscribers, recorded in the transaction of the change they
announce. The webhook dispatcher reads them later (controlplane/webhooks/dispatch.py); a change
that rolls back announces nothing, and a crash between the change and the delivery loses nothing.

Payload, as subscribers receive it: `{id, type, timestamp, organization_id, data}`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from controlplane.db import Queryable

EventType = Literal[
    "execution.started",
    "execution.waiting_for_input",
    "execution.completed",
    "execution.failed",
    "execution.cancelled",
    "workflow.state_changed",
    "worker.status_changed",
    "policy.violation",
    "error",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
# What `POST /webhooks/{id}/test` sends to that one subscription; never fanned out.
TEST_EVENT_TYPE = "webhook.test"


async def record(
    conn: Queryable,
    organization_id: str,
    event_type: str,
    data: dict[str, Any],
    *,
    dispatched: bool = False,
) -> uuid.UUID:
    """Add an event to the outbox, in the caller's transaction; returns its id. `dispatched`:
    the caller delivers it itself (a test event), so the dispatcher leaves it alone."""
    if event_type not in EVENT_TYPES and not (dispatched and event_type == TEST_EVENT_TYPE):
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
        "INSERT INTO outbox_events (event_id, organization_id, event_type, payload, "
        "dispatched_at) VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)",
        event_id,
        organization_id,
        event_type,
        payload,
        dispatched,
    )
    return event_id
