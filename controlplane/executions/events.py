"""An execution's events: appended in seq order under the execution's row lock (so rows commit
in seq order and a reader resuming after seq N can never miss a row that commits later), and
announced with NOTIFY to every API process that streams them.

A team member's run streams on its own, and its team's stream carries the same events as
`member_*` events (reference §5.4), each naming the member and the member's run.

`EventHub` is the listening side: one connection that LISTENs on CHANNEL and wakes the waiters
of each execution it hears about."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from controlplane.db import CONNECT_TIMEOUT, Conn

CHANNEL = "execution_events"
# What a member's run shows on its team's stream, and as what.
MEMBER_EVENTS = {
    "message_chunk": "member_message_chunk",
    "tool_started": "member_tool_started",
    "tool_completed": "member_tool_completed",
    "thinking_start": "member_thinking_start",
    "thinking_delta": "member_thinking_delta",
    "thinking_complete": "member_thinking_complete",
}


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


async def record_worker_event(
    conn: Conn, execution: asyncpg.Record, event_type: str, data: dict[str, Any], key: str | None
) -> int | None:
    """A worker's event for `execution` (locked by the caller, in its transaction): stored once
    per key, the message preview kept, and a member run's event passed on to its team."""
    seq = await append_event(conn, execution["id"], event_type, data, key)
    if seq is None:
        return None
    is_message = event_type == "message" and data.get("content")
    if is_message:
        await conn.execute(
            "UPDATE executions SET last_message_at = now(), last_message_preview = $2 "
            "WHERE id = $1",
            execution["id"],
            str(data["content"])[:200],
        )
    team_run = execution["parent_execution_id"]
    member_event = MEMBER_EVENTS.get(event_type)
    if is_message and data.get("role") == "assistant":
        member_event = "member_message_complete"
    if team_run is not None and member_event is not None:
        member = {
            "member_id": str(execution["entity_id"]),
            "member_name": execution["entity_name"],
            "child_execution_id": str(execution["id"]),
        }
        await append_event(
            conn,
            team_run,
            member_event,
            {**data, **member},
            f"member:{execution['id']}:{key or seq}",
        )
    return seq


class EventHub:
    """One LISTEN connection per process (an API process, the system worker), waking whoever
    waits on the notified execution: its streams, a run awaiting its step."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection[Any] | None = None
        self._lock = asyncio.Lock()
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def _ensure_listening(self) -> None:
        if self.listening:
            return
        async with self._lock:
            if not self.listening:
                self._conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT)
                await self._conn.add_listener(CHANNEL, self._notified)
                self._conn.add_termination_listener(self._lost)

    async def relisten(self) -> bool:
        """Listen again after the connection was lost; whether it is listening now."""
        with contextlib.suppress(Exception):
            await self._ensure_listening()
        return self.listening

    def _lost(self, conn: object) -> None:
        """The LISTEN connection died (Postgres restarted): every waiter reads again, and
        polls until the hub listens again."""
        self._conn = None
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        for waiter in self._waiters.get(str(payload), ()):
            waiter.set()

    @contextlib.asynccontextmanager
    async def subscribe(self, execution_id: uuid.UUID) -> AsyncIterator[asyncio.Event]:
        await self.relisten()  # not listening (Postgres down): the waiter polls instead
        key = str(execution_id)
        waiter = asyncio.Event()
        self._waiters[key].add(waiter)
        try:
            yield waiter
        finally:
            self._waiters[key].discard(waiter)
            if not self._waiters[key]:
                del self._waiters[key]

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
