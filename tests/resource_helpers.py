"""Small helpers shared by the resource tests: table snapshots that prove nothing was written,
validation-error checks, a pagination check, and direct inserts of worker and team rows."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx

from tests.conftest import assert_error

MISSING = "00000000-0000-4000-8000-000000000000"
NOT_A_UUID = "not-a-uuid"


async def rows_of(db: asyncpg.Pool[Any], table: str, org: str) -> list[dict[str, Any]]:
    """Every row and column an organization has in `table`, in id order: two equal snapshots
    mean nothing was inserted, updated or deleted."""
    records = await db.fetch(f"SELECT * FROM {table} WHERE organization_id = $1 ORDER BY id", org)
    return [dict(record) for record in records]


async def ordered_ids(db: asyncpg.Pool[Any], table: str, where: str, *args: Any) -> list[str]:
    """Ids in the order every list promises: oldest first, ties by id."""
    records = await db.fetch(f"SELECT id FROM {table} WHERE {where} ORDER BY created_at, id", *args)
    return [str(record["id"]) for record in records]


def assert_validation(response: httpx.Response, *fields: str) -> list[dict[str, Any]]:
    """A 422 VALIDATION_ERROR whose `validation_errors` name each of `fields`."""
    error = assert_error(response, 422, "VALIDATION_ERROR")
    errors: list[dict[str, Any]] = error["details"]["validation_errors"]
    assert errors, error
    for item in errors:
        assert {"field", "message", "type"} <= set(item), item
        assert item["message"] and item["type"], item
    named = {item["field"] for item in errors}
    for field in fields:
        assert field in named, (field, errors)
    return errors


def assert_not_found(response: httpx.Response, ident: str) -> str:
    """A 404 RESOURCE_NOT_FOUND naming `ident`; returns the message with the id blanked, so a
    test can check that another tenant's id answers exactly like a missing one."""
    error = assert_error(response, 404, "RESOURCE_NOT_FOUND")
    message: str = error["message"]
    assert ident in message, error
    assert error["details"] is None, error
    return message.replace(ident, "<id>")


async def assert_all_not_found(
    request: Callable[[str], Awaitable[httpx.Response]],
    other_tenants_id: str,
    *,
    extra: tuple[str, ...] = (),
) -> None:
    """`request(id)` answers the same 404 for another tenant's id, a missing id and a non-UUID."""
    messages = {
        assert_not_found(await request(ident), ident)
        for ident in (other_tenants_id, MISSING, NOT_A_UUID, *extra)
    }
    assert len(messages) == 1, messages


async def check_pagination(client: httpx.AsyncClient, path: str, expected: list[str]) -> None:
    """`path` (which may carry a query) lists exactly `expected` in that order, and honours
    limit, offset, skip and their bounds. Needs at least three rows."""
    assert len(expected) >= 3
    sep = "&" if "?" in path else "?"

    async def page(params: str) -> dict[str, Any]:
        r = await client.get(f"{path}{sep}{params}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert set(body) == {"items", "total", "limit", "offset"}
        return body

    body = await page("limit=1000")
    assert [item["id"] for item in body["items"]] == expected
    assert (body["total"], body["limit"], body["offset"]) == (len(expected), 1000, 0)
    r = await client.get(path)
    assert r.status_code == 200, r.text
    assert (r.json()["limit"], r.json()["offset"]) == (50, 0)
    body = await page("limit=2&offset=1")
    assert [item["id"] for item in body["items"]] == expected[1:3]
    assert (body["total"], body["limit"], body["offset"]) == (len(expected), 2, 1)
    body = await page("limit=2&skip=1")
    assert [item["id"] for item in body["items"]] == expected[1:3]
    assert body["offset"] == 1
    body = await page(f"offset={len(expected) + 5}")
    assert body["items"] == []
    assert (body["total"], body["offset"]) == (len(expected), len(expected) + 5)
    for bad, field in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("offset=-1", "offset"),
        ("skip=-1", "skip"),
    ]:
        assert_validation(await client.get(f"{path}{sep}{bad}"), field)


async def add_worker(
    db: asyncpg.Pool[Any],
    org: str,
    queue_id: str,
    *,
    status: str = "active",
    age_seconds: int = 0,
) -> uuid.UUID:
    """A row in `workers` as the worker protocol would leave it, heartbeat `age_seconds` ago."""
    worker_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO workers (id, organization_id, worker_queue_id, status, last_heartbeat) "
        "VALUES ($1, $2, $3, $4, now() - make_interval(secs => $5))",
        worker_id,
        org,
        uuid.UUID(queue_id),
        status,
        float(age_seconds),
    )
    return worker_id


async def create_environment(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/environments", json={"name": name, **fields})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def create_queue(
    client: httpx.AsyncClient, environment_id: str, name: str, **fields: Any
) -> dict[str, Any]:
    r = await client.post(
        f"/api/v1/environments/{environment_id}/worker-queues", json={"name": name, **fields}
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def add_team(db: asyncpg.Pool[Any], org: str, name: str, **columns: Any) -> uuid.UUID:
    """A row in `teams` (which has no routes yet), with any other columns given."""
    team_id = uuid.uuid4()
    values = {"id": team_id, "organization_id": org, "name": name, **columns}
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await db.execute(
        f"INSERT INTO teams ({', '.join(values)}) VALUES ({placeholders})", *values.values()
    )
    return team_id
