"""An API process keeps what it read about a key or worker token for AUTH_CACHE_SECONDS: one
revoked (disconnected) through another process, or the CLI, keeps working there until its entry
is that old, and is refused after; the process it was revoked through refuses it at once."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette

from api.app import create_app
from controlplane.settings import Settings
from controlplane.tenancy import create_key, revoke_key
from tests.conftest import as_worker, assert_error, client_for, make_tenant
from tests.execution_helpers import make_queue

# The window of the app that must refuse; short, so the test waits little.
WINDOW = 0.3


async def test_a_revoked_key_is_refused_once_its_entry_is_older_than_the_window(
    app: Starlette, settings: Settings, db: asyncpg.Pool[Any]
) -> None:
    quick = create_app(dataclasses.replace(settings, auth_cache_seconds=WINDOW))
    slow = create_app(dataclasses.replace(settings, auth_cache_seconds=3600))
    async with quick.router.lifespan_context(quick), slow.router.lifespan_context(slow):
        tenant = await make_tenant(app, db)
        key = await create_key(db, tenant.id, role="member", name="victim")
        here, on_quick, on_slow = (client_for(a, key.key) for a in (app, quick, slow))
        for client in (here, on_quick, on_slow):
            assert (await client.get("/api/v1/projects")).status_code == 200

        r = await tenant.admin.delete(f"/api/v1/api-keys/{key.id}")
        assert r.status_code == 200, r.text
        # Refused at once by the process it was revoked through ...
        assert_error(await here.get("/api/v1/projects"), 401, "AUTHENTICATION_ERROR")
        # ... kept by another while its entry is younger than that process's window ...
        assert (await on_slow.get("/api/v1/projects")).status_code == 200
        # ... and refused there once the entry is older.
        await asyncio.sleep(WINDOW)
        assert_error(await on_quick.get("/api/v1/projects"), 401, "AUTHENTICATION_ERROR")

        # A key revoked as the CLI does it (straight in the database) goes the same way.
        other = await create_key(db, tenant.id, role="viewer", name="other")
        client = client_for(quick, other.key)
        assert (await client.get("/api/v1/projects")).status_code == 200
        assert await revoke_key(db, tenant.id, other.id) is not None
        await asyncio.sleep(WINDOW)
        assert_error(await client.get("/api/v1/projects"), 401, "AUTHENTICATION_ERROR")


async def test_a_disconnected_worker_token_is_refused_once_its_entry_is_older_than_the_window(
    app: Starlette, settings: Settings, db: asyncpg.Pool[Any]
) -> None:
    quick = create_app(dataclasses.replace(settings, auth_cache_seconds=WINDOW))
    slow = create_app(dataclasses.replace(settings, auth_cache_seconds=3600))
    async with quick.router.lifespan_context(quick), slow.router.lifespan_context(slow):
        tenant = await make_tenant(app, db)
        queue = await make_queue(tenant, "cached")
        worker = await as_worker(tenant, queue["id"])
        token = worker.headers["authorization"].removeprefix("Bearer ")
        worker_id = await db.fetchval(
            "SELECT id FROM workers WHERE worker_queue_id = $1", uuid.UUID(queue["id"])
        )
        heartbeat = f"/api/v1/workers/{worker_id}/heartbeat"
        on_quick, on_slow = client_for(quick, token), client_for(slow, token)
        for client in (worker, on_quick, on_slow):
            assert (await client.post(heartbeat, json={})).status_code == 200

        r = await worker.post(f"/api/v1/workers/{worker_id}/disconnect", json={})
        assert r.status_code == 200, r.text
        assert_error(await worker.post(heartbeat, json={}), 401, "AUTHENTICATION_ERROR")
        # The other process still lets the token in; the heartbeat finds the worker gone.
        assert_error(await on_slow.post(heartbeat, json={}), 404, "RESOURCE_NOT_FOUND")
        await asyncio.sleep(WINDOW)
        assert_error(await on_quick.post(heartbeat, json={}), 401, "AUTHENTICATION_ERROR")


@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "soon"])
def test_the_window_is_a_finite_number_of_seconds(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTH_CACHE_SECONDS", "0.5")
    assert Settings.from_env().auth_cache_seconds == 0.5
    monkeypatch.setenv("AUTH_CACHE_SECONDS", raw)
    with pytest.raises(SystemExit, match="AUTH_CACHE_SECONDS must be a number of seconds"):
        Settings.from_env()
