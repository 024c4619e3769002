"""Execution events as server-sent events: every API process LISTENs for the NOTIFY that follows
each append (controlplane/executions/events.py, its EventHub) and serves a stream that resumes
from Last-Event-ID with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

import asyncpg

from api.errors import backend_down
from controlplane.executions.events import EventHub

log = logging.getLogger("controlplane.api.events")

KEEPALIVE_SECONDS = 15.0
# How often a stream reads again while Postgres or its notifications are away.
OUTAGE_POLL_SECONDS = 1.0
TERMINAL_EVENTS = ("done", "error")
# Kubiya nests these under `data`; the others are flat.
NESTED_EVENTS = {"message_chunk", "tool_started", "tool_completed", "policy_violation"}


def sse(event_type: str, data: dict[str, Any], event_id: int | None = None) -> str:
    lines = [] if event_id is None else [f"id: {event_id}"]
    lines += [f"event: {event_type}", f"data: {json.dumps(data, default=str)}", "", ""]
    return "\n".join(lines)


def wire_payload(row: asyncpg.Record) -> dict[str, Any]:
    timestamp = row["created_at"].isoformat()
    if row["event_type"] in NESTED_EVENTS:
        return {"data": row["data"], "timestamp": timestamp}
    return {**row["data"], "timestamp": timestamp}


async def stream_events(
    pool: asyncpg.Pool[Any],
    hub: EventHub,
    execution: asyncpg.Record,
    last_event_id: int | None,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
) -> AsyncGenerator[str, None]:
    execution_id = execution["id"]
    yield sse(
        "connected",
        {
            "execution_id": str(execution_id),
            "organization_id": execution["organization_id"],
            "status": execution["status"],
            "connected_at": datetime.now(UTC).isoformat(),
        },
    )
    after = last_event_id or 0
    degraded = False
    quiet = Quiet(keepalive_seconds)
    async with hub.subscribe(execution_id) as woken:
        first = True
        while True:
            woken.clear()  # cleared before reading, so a commit after the read still wakes us
            try:
                rows = await pool.fetch(
                    "SELECT seq, event_type, data, created_at FROM execution_events "
                    "WHERE execution_id = $1 AND seq > $2 ORDER BY seq LIMIT 500",
                    execution_id,
                    after,
                )
            except Exception as error:
                backend = backend_down(error)
                if backend is None:
                    raise
                # Postgres is down: the stream stays open, says so once, and reads again.
                if not degraded:
                    degraded = True
                    reason = f"{backend} is unavailable"
                    yield sse("degraded", {"mode": "reconnecting", "reason": reason})
                await asyncio.sleep(OUTAGE_POLL_SECONDS)
                if quiet.due():
                    yield ": keepalive\n\n"
                continue
            if degraded:
                degraded = False
                yield sse("recovered", {"execution_id": str(execution_id)})
            finished = False
            for row in rows:
                after = row["seq"]
                quiet.reset()
                yield sse(row["event_type"], wire_payload(row), event_id=row["seq"])
                finished = finished or row["event_type"] in TERMINAL_EVENTS
            if first and last_event_id is None:
                messages = sum(1 for row in rows if row["event_type"] == "message")
                yield sse(
                    "history_complete",
                    {
                        "execution_id": str(execution_id),
                        "message_count": messages,
                        "is_truncated": len(rows) == 500,
                        "has_more": len(rows) == 500,
                    },
                )
            first = False
            if finished:
                return
            if len(rows) == 500:
                continue
            # Without the hub (its connection was lost) the stream polls until it listens again.
            wait = keepalive_seconds if await hub.relisten() else OUTAGE_POLL_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout=wait)
            if quiet.due():
                yield ": keepalive\n\n"


class Quiet:
    """Whether a stream has been silent for a keepalive's interval."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.reset()

    def reset(self) -> None:
        self.since = time.monotonic()

    def due(self) -> bool:
        if time.monotonic() - self.since < self.seconds:
            return False
        self.reset()
        return True
