"""`/api/v1/api-keys`: admins only; the secret is shown once; a revoked key stops at once."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from tests.conftest import Tenant, assert_error, client_for
from tests.resource_helpers import (
    assert_all_not_found,
    assert_validation,
    check_pagination,
    ordered_ids,
    rows_of,
)

KEY_FIELDS = {
    "id",
    "organization_id",
    "name",
    "prefix",
    "role",
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
