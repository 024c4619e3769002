"""What a worker reports about an execution, applied in one place: a status change (through the
lifecycle), a stream event (through the events), the conversation so far (the session).

A worker may send several in one request (`apply_reports`): they are applied in order, in one
transaction under the execution's row lock, so a batch lands whole or not at all. Each kind is
idempotent, so a batch sent again (a retried activity) changes nothing: events are stored once
per key, status reports older than the last applied are ignored, the session is replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from controlplane.db import Conn
from controlplane.executions.events import record_worker_event
from controlplane.executions.lifecycle import Report, load, report


@dataclass
class EventIn:
    event_type: str
    data: dict[str, Any]
    event_key: str | None = None


@dataclass
class SessionIn:
    session_id: str
    messages: list[dict[str, Any]]
    user_id: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass
class WorkerReport:
    """One report: exactly one of its fields is set."""

    status: Report | None = None
    event: EventIn | None = None
    session: SessionIn | None = None


async def save_session(conn: Conn, execution: asyncpg.Record, session: SessionIn) -> None:
    await conn.execute(
        "INSERT INTO sessions (execution_id, session_id, organization_id, user_id, messages, "
        "metadata) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (execution_id) DO UPDATE SET "
        "session_id = excluded.session_id, messages = excluded.messages, "
        "metadata = excluded.metadata, updated_at = now()",
        execution["id"],
        session.session_id,
        execution["organization_id"],
        session.user_id,
        session.messages,
        session.metadata or {},
    )


async def apply_reports(
    conn: Conn, execution: asyncpg.Record, reports: list[WorkerReport]
) -> list[int | None]:
    """Apply `reports` in order to `execution` (locked by the caller, in its transaction);
    returns each event's seq (None for the other kinds, and for an event stored before)."""
    seqs: list[int | None] = []
    for item in reports:
        seq = None
        if item.status is not None:
            await report(conn, execution, item.status)
            # Later reports of the batch see the execution as this one left it.
            reloaded = await load(conn, execution["organization_id"], execution["id"])
            assert reloaded is not None
            execution = reloaded
        elif item.event is not None:
            event = item.event
            seq = await record_worker_event(
                conn, execution, event.event_type, dict(event.data), event.event_key
            )
        elif item.session is not None:
            await save_session(conn, execution, item.session)
        seqs.append(seq)
    return seqs
