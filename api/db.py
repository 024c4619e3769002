"""The one-time schema application at start-up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg

from controlplane.settings import SCHEMA_PATH

# Any process may apply the schema at start-up; the advisory lock serialises concurrent starts.
_SCHEMA_LOCK_ID = 7_233_001


async def apply_schema(conn: asyncpg.Connection[Any], schema_path: Path = SCHEMA_PATH) -> None:
    sql = await asyncio.to_thread(schema_path.read_text)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_ID)
        await conn.execute(sql)


async def apply_schema_at(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()
