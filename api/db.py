"""The asyncpg pool, the schema migrations at start-up, and small query helpers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from api.errors import ApiError
from api.migrations import Outcome, migrate
from controlplane.settings import MIGRATIONS_DIR


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool[Any]:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection
    )
    assert pool is not None
    return pool


async def apply_schema(
    conn: asyncpg.Connection[Any], migrations_dir: Path = MIGRATIONS_DIR
) -> Outcome:
    """Bring the database to this release's schema: the migrations it has not recorded, then
    the repeatable steps (api/migrations.py). Any process may call it at start-up."""
    return await migrate(conn, migrations_dir)


async def apply_schema_at(dsn: str) -> Outcome:
    conn = await asyncpg.connect(dsn)
    try:
        return await apply_schema(conn)
    finally:
        await conn.close()


@contextlib.contextmanager
def conflict_on_duplicate(message: str) -> Iterator[None]:
    """A unique-constraint violation becomes 409 RESOURCE_CONFLICT, not a 500."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise ApiError(409, message, details={"constraint": exc.constraint_name}) from None


def patch_assignments(
    changes: dict[str, Any], allowed: Sequence[str], first_param: int
) -> tuple[str, list[Any]]:
    """`col = $n` pairs for an UPDATE from the fields a PATCH body set, plus updated_at."""
    parts, values = [], []
    for column in allowed:
        if column in changes:
            values.append(changes[column])
            parts.append(f"{column} = ${first_param + len(values) - 1}")
    parts.append("updated_at = now()")
    return ", ".join(parts), values


# A connection, checked out of the pool or not, and anything that runs queries.
Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
Queryable: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any] | asyncpg.Pool[Any]"
