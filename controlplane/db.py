"""Postgres access shared by every part of the control plane: the asyncpg pool (with JSON
codecs), the connection types, and the small helpers every resource uses."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from controlplane.errors import Conflict

# orjson decodes JSON as json.loads does, about five times faster, except integers beyond 64 bits
# (it makes floats of them) and lone surrogates (it refuses them): text with a run of 19 digits
# or more, or that orjson refuses, is decoded by json.loads.
_LONG_NUMBER = re.compile(r"\d{19}")


def decode_json(text: str) -> Any:
    if _LONG_NUMBER.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=decode_json, schema="pg_catalog"
        )


# Seconds to connect: while Postgres is down a request fails fast (503) instead of hanging.
CONNECT_TIMEOUT = 5


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """What a connection goes back to the pool with, instead of asyncpg's reset query (a round
    trip per release, about a fifth of a small request's cost). Nothing here leaves session
    state on a pooled connection: no SET, LISTEN (the EventHub has its own connection),
    session advisory lock (the migrations' is on their own connection) or cursor outside a
    transaction. asyncpg still rolls back a transaction left open."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool[Any]:
    """A pool that outlives a Postgres restart: a connection found dead is dropped when it is
    used and a new one made on the next acquire."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        timeout=CONNECT_TIMEOUT,
    )
    assert pool is not None
    return pool


@contextlib.contextmanager
def conflict_on_duplicate(message: str) -> Iterator[None]:
    """A unique-constraint violation becomes a Conflict naming the constraint."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(message, details={"constraint": exc.constraint_name}) from None


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


def sql_uuid(text: str) -> str:
    """SQL for the uuid that the text expression `text` names, as Python's `uuid.UUID` reads
    it (optional `urn:`/`uuid:` and braces, hyphens anywhere, any case), else NULL; so a query
    can take ids from a JSON list without failing on one that is not a uuid."""
    bare = f"replace(btrim(replace(replace({text}, 'urn:', ''), 'uuid:', ''), '{{}}'), '-', '')"
    return f"(CASE WHEN {bare} ~ '^[0-9A-Fa-f]{{32}}$' THEN {bare}::uuid END)"


def sql_array(jsonb: str) -> str:
    """SQL for the jsonb expression `jsonb` when it is an array, else an empty array (so
    `jsonb_array_elements` never fails on a stored value of another shape)."""
    return f"(CASE WHEN jsonb_typeof({jsonb}) = 'array' THEN {jsonb} ELSE '[]'::jsonb END)"
