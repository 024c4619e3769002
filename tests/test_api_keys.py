"""`/api/v1/api-keys`: admins only; the secret is shown once; a revoked key stops at once."""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from api.app import create_app
from controlplane.settings import Settings
from tests.conftest import Tenant, assert_error, client_for, make_tenant
from tests.resource_helpers import (
    MISSING,
    assert_all_not_found,
    assert_validation,
    check_pagination,
    create_environment,
    create_queue,
    ordered_ids,
    rows_of,
)

KEY_FIELDS = {
    "id",
    "organization_id",
    "name",
    "prefix",
    "role",
    "worker_queue_id",
    "created_at",
    "created_by",
    "revoked_at",
}


async def test_create_shows_the_key_once_and_it_works(
    app: Starlette, db: asyncpg.Pool[Any], tenant: Tenant
) -> None:
    r = await tenant.admin.post("/api/v1/api-keys", json={"name": "ci", "role": "viewer"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == KEY_FIELDS | {"key"}
    assert created["organization_id"] == tenant.id
    assert (created["name"], created["role"], created["revoked_at"]) == ("ci", "viewer", None)
    assert created["key"].startswith("cpk_")
    assert created["prefix"] == created["key"][:12]
    admin_key_id = await db.fetchval(
        "SELECT id FROM api_keys WHERE organization_id = $1 AND role = 'admin'", tenant.id
    )
    assert created["created_by"] == f"api_key:{admin_key_id}"

    new_client = client_for(app, created["key"])
    assert (await new_client.get("/api/v1/projects")).status_code == 200
    assert_error(
        await new_client.post("/api/v1/projects", json={"name": "P", "key": "P"}),
        403,
        "AUTHORIZATION_ERROR",
    )

    r = await tenant.admin.get("/api/v1/api-keys")
    assert r.status_code == 200, r.text
    listed = {item["id"]: item for item in r.json()["items"]}
    assert set(listed[created["id"]]) == KEY_FIELDS
    assert created["key"] not in r.text
    stored = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1", listed[created["id"]]["id"])
    assert stored is not None
    assert stored["key_hash"] not in r.text
    assert created["key"] not in stored.values()


async def test_role_defaults_to_member(tenant: Tenant) -> None:
    r = await tenant.admin.post("/api/v1/api-keys", json={"name": "bot"})
    assert r.status_code == 201, r.text
    assert r.json()["role"] == "member"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": 5}, "name"),
        ({"name": "x", "role": "owner"}, "role"),
        ({"name": "x", "role": "worker"}, "body"),
        ({"name": "x", "role": "member", "worker_queue_id": MISSING}, "body"),
        ({"name": "x", "role": "worker", "worker_queue_id": "nope"}, "worker_queue_id"),
        ([], "body"),
    ],
)
async def test_create_rejects_bad_input(
    db: asyncpg.Pool[Any], tenant: Tenant, body: Any, field: str
) -> None:
    before = await rows_of(db, "api_keys", tenant.id)
    assert_validation(await tenant.admin.post("/api/v1/api-keys", json=body), field)
    assert await rows_of(db, "api_keys", tenant.id) == before


async def test_malformed_json_is_400(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    before = await rows_of(db, "api_keys", tenant.id)
    r = await tenant.admin.post(
        "/api/v1/api-keys", content=b'{"name": ', headers={"Content-Type": "application/json"}
    )
    assert_error(r, 400, "BAD_REQUEST")
    assert await rows_of(db, "api_keys", tenant.id) == before


@pytest.mark.parametrize("role", ["member", "viewer"])
async def test_only_admins_manage_keys(db: asyncpg.Pool[Any], tenant: Tenant, role: str) -> None:
    client: httpx.AsyncClient = getattr(tenant, role)
    before = await rows_of(db, "api_keys", tenant.id)
    target = str(before[0]["id"])
    for response in [
        await client.post("/api/v1/api-keys", json={"name": "sneaky", "role": "admin"}),
        await client.get("/api/v1/api-keys"),
        await client.delete(f"/api/v1/api-keys/{target}"),
    ]:
        assert_error(response, 403, "AUTHORIZATION_ERROR")
    assert await rows_of(db, "api_keys", tenant.id) == before


async def test_anonymous_is_401(anonymous: httpx.AsyncClient) -> None:
    assert_error(await anonymous.get("/api/v1/api-keys"), 401, "AUTHENTICATION_ERROR")
    assert_error(
        await anonymous.post("/api/v1/api-keys", json={"name": "x"}), 401, "AUTHENTICATION_ERROR"
    )


async def test_list_pages_in_creation_order(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    for n in range(3):
        r = await tenant.admin.post("/api/v1/api-keys", json={"name": f"k{n}"})
        assert r.status_code == 201, r.text
    expected = await ordered_ids(db, "api_keys", "organization_id = $1", tenant.id)
    assert len(expected) == 6  # the fixture's three and these three
    await check_pagination(tenant.admin, "/api/v1/api-keys", expected)


async def test_list_shows_only_own_org(tenant: Tenant, other_tenant: Tenant) -> None:
    r = await tenant.admin.get("/api/v1/api-keys")
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 3
    assert {item["organization_id"] for item in r.json()["items"]} == {tenant.id}


async def test_revoke_stops_the_key_at_once(
    app: Starlette, db: asyncpg.Pool[Any], tenant: Tenant
) -> None:
    created = (await tenant.admin.post("/api/v1/api-keys", json={"name": "temp"})).json()
    victim = client_for(app, created["key"])
    assert (await victim.get("/api/v1/projects")).status_code == 200

    r = await tenant.admin.delete(f"/api/v1/api-keys/{created['id']}")
    assert r.status_code == 200, r.text
    revoked = r.json()
    assert revoked["id"] == created["id"]
    assert revoked["deleted"] is True
    assert revoked["revoked_at"] is not None
    assert_error(await victim.get("/api/v1/projects"), 401, "AUTHENTICATION_ERROR")

    listed = (await tenant.admin.get("/api/v1/api-keys")).json()["items"]
    assert [item["revoked_at"] for item in listed if item["id"] == created["id"]] == [
        revoked["revoked_at"]
    ]
    # Revoking again keeps the first time.
    again = await tenant.admin.delete(f"/api/v1/api-keys/{created['id']}")
    assert again.status_code == 200, again.text
    assert again.json()["revoked_at"] == revoked["revoked_at"]
    # The other keys are untouched.
    assert (await tenant.member.get("/api/v1/projects")).status_code == 200


async def test_revoking_own_key_locks_out_the_caller(tenant: Tenant, db: asyncpg.Pool[Any]) -> None:
    own = await db.fetchval(
        "SELECT id FROM api_keys WHERE organization_id = $1 AND role = 'admin'", tenant.id
    )
    assert (await tenant.admin.delete(f"/api/v1/api-keys/{own}")).status_code == 200
    assert_error(await tenant.admin.get("/api/v1/api-keys"), 401, "AUTHENTICATION_ERROR")


async def test_other_orgs_key_is_not_found(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await rows_of(db, "api_keys", other_tenant.id)

    async def revoke(key_id: str) -> httpx.Response:
        return await tenant.admin.delete(f"/api/v1/api-keys/{key_id}")

    await assert_all_not_found(revoke, str(theirs[0]["id"]))
    assert await rows_of(db, "api_keys", other_tenant.id) == theirs
    assert (await other_tenant.viewer.get("/api/v1/projects")).status_code == 200


async def test_worker_keys_are_bound_to_a_queue_of_the_organization(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    env = await create_environment(tenant.member, "e")
    queue = await create_queue(tenant.member, env["id"], "q")
    theirs = await create_queue(
        other_tenant.member, (await create_environment(other_tenant.member, "e"))["id"], "q"
    )
    before = await rows_of(db, "api_keys", tenant.id)
    for queue_id in (theirs["id"], MISSING):
        missing = await tenant.admin.post(
            "/api/v1/api-keys", json={"name": "w", "role": "worker", "worker_queue_id": queue_id}
        )
        assert_error(missing, 404, "RESOURCE_NOT_FOUND")
    assert await rows_of(db, "api_keys", tenant.id) == before
    made = await tenant.admin.post(
        "/api/v1/api-keys", json={"name": "w", "role": "worker", "worker_queue_id": queue["id"]}
    )
    assert made.status_code == 201, made.text
    assert (made.json()["role"], made.json()["worker_queue_id"]) == ("worker", queue["id"])
    # A worker key reads and writes nothing; it may only start workers on its queue.
    worker_key = client_for(tenant.app, made.json()["key"])
    for response in [
        await worker_key.get("/api/v1/projects"),
        await worker_key.get("/api/v1/api-keys"),
        await worker_key.post("/api/v1/api-keys", json={"name": "x", "role": "admin"}),
        await worker_key.get(f"/api/v1/worker-queues/{queue['id']}/worker-command"),
    ]:
        assert_error(response, 403, "AUTHORIZATION_ERROR")


async def test_a_repeated_create_does_not_show_the_key_again(tenant: Tenant) -> None:
    """Responses that carry a credential are not stored for Idempotency-Key replays, and a
    replay belongs to the key that made the first request only."""
    headers = {"Idempotency-Key": "make-one-key"}
    body = {"name": "once", "role": "viewer"}
    first = await tenant.admin.post("/api/v1/api-keys", json=body, headers=headers)
    assert first.status_code == 201 and first.headers["cache-control"] == "no-store"
    again = await tenant.admin.post("/api/v1/api-keys", json=body, headers=headers)
    error = assert_error(again, 409, "RESOURCE_CONFLICT")
    assert first.json()["key"] not in again.text
    assert error["details"]["first_status"] == 201
    listed = (await tenant.admin.get("/api/v1/api-keys")).json()["items"]
    assert [item["name"] for item in listed].count("once") == 1


async def test_idempotent_replays_belong_to_the_credential_that_asked(tenant: Tenant) -> None:
    headers = {"Idempotency-Key": "shared-key"}
    body = {"name": "Replay", "key": "RPL"}
    first = await tenant.member.post("/api/v1/projects", json=body, headers=headers)
    assert first.status_code == 201, first.text
    replay = await tenant.member.post("/api/v1/projects", json=body, headers=headers)
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.json() == first.json()
    # The same header from another key of the organization is a new request: a viewer is
    # refused by its role, not served the member's response.
    assert_error(
        await tenant.viewer.post("/api/v1/projects", json=body, headers=headers),
        403,
        "AUTHORIZATION_ERROR",
    )
    # An admin's request with that header is its own (and conflicts on the name).
    assert_error(
        await tenant.admin.post("/api/v1/projects", json=body, headers=headers),
        409,
        "RESOURCE_CONFLICT",
    )


async def test_minting_worker_credentials_is_rate_limited(
    settings: Settings, db: asyncpg.Pool[Any]
) -> None:
    tight = dataclasses.replace(settings, credential_mint_limit_per_minute=2)
    app = create_app(tight)
    async with app.router.lifespan_context(app):
        tenant = await make_tenant(app, db)
        env = await create_environment(tenant.member, "e")
        queue = await create_queue(tenant.member, env["id"], "q")
        body = {"name": "w", "role": "worker", "worker_queue_id": queue["id"]}
        made = [await tenant.admin.post("/api/v1/api-keys", json=body) for _ in range(2)]
        assert [r.status_code for r in made] == [201, 201]
        before = await rows_of(db, "api_keys", tenant.id)
        for response in [
            await tenant.admin.post("/api/v1/api-keys", json=body),
            await tenant.admin.get(f"/api/v1/worker-queues/{queue['id']}/worker-command"),
            await tenant.admin.post(f"/api/v1/worker-queues/{queue['id']}/start", json={}),
        ]:
            error = assert_error(response, 429, "RATE_LIMIT_EXCEEDED")
            assert int(response.headers["retry-after"]) >= 1
            assert error["details"]["limit"] == 2
        assert await rows_of(db, "api_keys", tenant.id) == before
        assert await rows_of(db, "workers", tenant.id) == []
        # Other keys are not worker credentials: not counted.
        viewer = await tenant.admin.post("/api/v1/api-keys", json={"name": "v", "role": "viewer"})
        assert viewer.status_code == 201
