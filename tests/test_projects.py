"""`/api/v1/projects` (reference §3.8)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Tenant, assert_error
from tests.resource_helpers import (
    add_team,
    assert_all_not_found,
    assert_validation,
    check_pagination,
    ordered_ids,
    rows_of,
)

PROJECT_FIELDS = {
    "id",
    "organization_id",
    "name",
    "key",
    "description",
    "goals",
    "settings",
    "status",
    "visibility",
    "owner_id",
    "owner_email",
    "restrict_to_environment",
    "policy_ids",
    "default_model",
    "created_at",
    "updated_at",
    "archived_at",
    "agent_count",
    "team_count",
}


async def create(client: httpx.AsyncClient, name: str, key: str, **fields: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/projects", json={"name": name, "key": key, **fields})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_create_and_get(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    project = await create(
        tenant.member,
        "Payments",
        "pay-1",
        description="Money in, money out",
        goals="Ship v2",
        settings={"color": "green"},
        visibility="org",
        restrict_to_environment=True,
        policy_ids=["p1", "p2"],
        default_model="kubiya/claude-sonnet-4",
    )
    assert set(project) == PROJECT_FIELDS
    assert project["organization_id"] == tenant.id
    assert (project["name"], project["key"], project["description"]) == (
        "Payments",
        "PAY-1",
        "Money in, money out",
    )
    assert project["goals"] == "Ship v2"
    assert project["restrict_to_environment"] is True
    assert project["policy_ids"] == ["p1", "p2"]
    assert project["default_model"] == "kubiya/claude-sonnet-4"
    assert project["settings"] == {
        "color": "green",
        "goals": "Ship v2",
        "policy_ids": ["p1", "p2"],
        "default_model": "kubiya/claude-sonnet-4",
        "restrict_to_environment": True,
    }
    assert (project["status"], project["visibility"], project["archived_at"]) == (
        "active",
        "org",
        None,
    )
    assert (project["agent_count"], project["team_count"]) == (0, 0)
    member_key = await db.fetchval(
        "SELECT id FROM api_keys WHERE organization_id = $1 AND role = 'member'", tenant.id
    )
    assert project["owner_id"] == f"api_key:{member_key}"
    stored = await db.fetchrow(
        "SELECT settings FROM projects WHERE id = $1", uuid.UUID(project["id"])
    )
    assert stored is not None and stored["settings"] == project["settings"]

    r = await tenant.viewer.get(f"/api/v1/projects/{project['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == project


async def test_create_defaults(tenant: Tenant) -> None:
    project = await create(tenant.member, "Minimal", "min")
    assert project["description"] is None
    assert project["goals"] is None
    assert project["policy_ids"] == []
    assert project["default_model"] is None
    assert project["restrict_to_environment"] is False
    assert project["visibility"] == "private"


async def test_settings_keys_are_kept_when_the_top_level_field_is_absent(tenant: Tenant) -> None:
    project = await create(
        tenant.member, "Via settings", "vs", settings={"default_model": "m1", "goals": "g"}
    )
    assert (project["default_model"], project["goals"]) == ("m1", "g")
    # The top-level field wins when both are sent.
    project = await create(
        tenant.member, "Both", "both", settings={"default_model": "m1"}, default_model="m2"
    )
    assert project["default_model"] == "m2"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"key": "K"}, "name"),
        ({"name": "N"}, "key"),
        ({"name": "", "key": "K"}, "name"),
        ({"name": "N", "key": ""}, "key"),
        ({"name": "N", "key": "1abc"}, "key"),
        ({"name": "N", "key": "a b"}, "key"),
        ({"name": "N", "key": "K", "visibility": "public"}, "visibility"),
        ({"name": "N", "key": "K", "policy_ids": "p1"}, "policy_ids"),
        ({"name": "N", "key": "K", "restrict_to_environment": "maybe"}, "restrict_to_environment"),
        ({"name": "N", "key": "K", "settings": []}, "settings"),
        ({"name": "N", "key": "K", "goals": 3}, "goals"),
        ({"name": "N", "key": "K", "settings": {"policy_ids": "p1"}}, "policy_ids"),
        (["N"], "body"),
    ],
)
async def test_create_rejects_bad_input(
    db: asyncpg.Pool[Any], tenant: Tenant, body: Any, field: str
) -> None:
    assert_validation(await tenant.member.post("/api/v1/projects", json=body), field)
    assert await rows_of(db, "projects", tenant.id) == []


async def test_malformed_json_is_400(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    project = await create(tenant.member, "P", "P")
    before = await rows_of(db, "projects", tenant.id)
    for method, path in [
        ("POST", "/api/v1/projects"),
        ("PATCH", f"/api/v1/projects/{project['id']}"),
    ]:
        r = await tenant.member.request(method, path, content=b"{not json")
        assert_error(r, 400, "BAD_REQUEST")
    assert await rows_of(db, "projects", tenant.id) == before


async def test_name_and_key_are_unique_per_org(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    await create(tenant.member, "Alpha", "abc")
    before = await rows_of(db, "projects", tenant.id)
    for body in [{"name": "Other", "key": "ABC"}, {"name": "Alpha", "key": "NEW"}]:
        r = await tenant.member.post("/api/v1/projects", json=body)
        assert_error(r, 409, "RESOURCE_CONFLICT")
    assert await rows_of(db, "projects", tenant.id) == before
    # Another organization may use both.
    await create(other_tenant.member, "Alpha", "abc")


async def test_patch_conflicts_change_nothing(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    await create(tenant.member, "One", "ONE")
    two = await create(tenant.member, "Two", "TWO")
    before = await rows_of(db, "projects", tenant.id)
    for body in [{"name": "One"}, {"key": "one"}]:
        r = await tenant.member.patch(f"/api/v1/projects/{two['id']}", json=body)
        assert_error(r, 409, "RESOURCE_CONFLICT")
    assert await rows_of(db, "projects", tenant.id) == before


async def test_patch_changes_only_the_fields_sent(tenant: Tenant) -> None:
    project = await create(
        tenant.member,
        "Patchable",
        "PT",
        description="d",
        goals="g",
        settings={"color": "red"},
        policy_ids=["p"],
        default_model="m",
        restrict_to_environment=True,
    )
    url = f"/api/v1/projects/{project['id']}"

    r = await tenant.member.patch(url, json={"description": "new"})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["description"] == "new"
    assert patched["updated_at"] > project["updated_at"]
    unchanged = {"description", "updated_at"}
    assert {k: v for k, v in patched.items() if k not in unchanged} == {
        k: v for k, v in project.items() if k not in unchanged
    }

    r = await tenant.member.patch(url, json={"goals": "g2", "key": "pt2", "visibility": "org"})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert (patched["goals"], patched["key"], patched["visibility"]) == ("g2", "PT2", "org")
    assert patched["settings"] == {
        "color": "red",
        "goals": "g2",
        "policy_ids": ["p"],
        "default_model": "m",
        "restrict_to_environment": True,
    }

    # Replacing `settings` keeps the fields that live inside it unless they are sent too.
    r = await tenant.member.patch(url, json={"settings": {"size": 3}, "default_model": None})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["settings"] == {
        "size": 3,
        "goals": "g2",
        "policy_ids": ["p"],
        "default_model": None,
        "restrict_to_environment": True,
    }
    assert (patched["goals"], patched["policy_ids"], patched["default_model"]) == (
        "g2",
        ["p"],
        None,
    )
    assert patched["restrict_to_environment"] is True

    r = await tenant.member.patch(url, json={"settings": {"size": 4, "goals": "via settings"}})
    assert r.status_code == 200, r.text
    assert r.json()["goals"] == "via settings"
    assert r.json()["settings"]["size"] == 4
    assert r.json()["policy_ids"] == ["p"]

    r = await tenant.member.patch(url, json={"policy_ids": [], "restrict_to_environment": False})
    assert r.status_code == 200, r.text
    assert (r.json()["policy_ids"], r.json()["restrict_to_environment"]) == ([], False)

    r = await tenant.member.patch(url, json={"description": None, "goals": None})
    assert r.status_code == 200, r.text
    assert (r.json()["description"], r.json()["goals"]) == (None, None)
    assert r.json()["name"] == "Patchable"


async def test_concurrent_patches_of_different_settings_fields_both_stick(
    tenant: Tenant,
) -> None:
    project = await create(tenant.member, "Busy", "BUSY")
    url = f"/api/v1/projects/{project['id']}"
    for n in range(10):
        responses = await asyncio.gather(
            tenant.member.patch(url, json={"goals": f"g{n}"}),
            tenant.member.patch(url, json={"default_model": f"m{n}"}),
            tenant.member.patch(url, json={"policy_ids": [f"p{n}"]}),
        )
        assert [r.status_code for r in responses] == [200, 200, 200]
    final = (await tenant.viewer.get(url)).json()
    assert (final["goals"], final["default_model"], final["policy_ids"]) == ("g9", "m9", ["p9"])


@pytest.mark.parametrize(
    "body",
    [
        {"name": None},
        {"key": None},
        {"status": None},
        {"visibility": None},
        {"settings": None},
        {"policy_ids": None},
        {"restrict_to_environment": None},
        {"status": "paused"},
        {"key": "9x"},
        {"name": ""},
        {"policy_ids": [1, {}]},
        {"settings": {"restrict_to_environment": None}},
        {"settings": {"policy_ids": "p"}},
    ],
)
async def test_patch_rejects_bad_input(
    db: asyncpg.Pool[Any], tenant: Tenant, body: dict[str, Any]
) -> None:
    project = await create(tenant.member, "Keep", "KEEP")
    before = await rows_of(db, "projects", tenant.id)
    assert_validation(await tenant.member.patch(f"/api/v1/projects/{project['id']}", json=body))
    assert await rows_of(db, "projects", tenant.id) == before


async def test_archive_sets_archived_at(tenant: Tenant) -> None:
    project = await create(tenant.member, "Old", "OLD")
    url = f"/api/v1/projects/{project['id']}"
    archived = (await tenant.member.patch(url, json={"status": "archived"})).json()
    assert archived["status"] == "archived"
    assert archived["archived_at"] is not None
    assert archived["archived_at"] >= archived["created_at"]
    again = (await tenant.member.patch(url, json={"status": "archived"})).json()
    assert again["archived_at"] == archived["archived_at"]
    renamed = (await tenant.member.patch(url, json={"name": "Older"})).json()
    assert renamed["archived_at"] == archived["archived_at"]
    restored = (await tenant.member.patch(url, json={"status": "active"})).json()
    assert (restored["status"], restored["archived_at"]) == ("active", None)


async def test_list_pages_and_filters(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    ids = [(await create(tenant.member, f"P{n}", f"P{n}"))["id"] for n in range(4)]
    await tenant.member.patch(f"/api/v1/projects/{ids[1]}", json={"status": "archived"})
    await tenant.member.patch(f"/api/v1/projects/{ids[3]}", json={"status": "draft"})
    expected = await ordered_ids(db, "projects", "organization_id = $1", tenant.id)
    assert expected == ids
    await check_pagination(tenant.viewer, "/api/v1/projects", expected)

    for status, wanted in [
        ("active", [ids[0], ids[2]]),
        ("archived", [ids[1]]),
        ("draft", [ids[3]]),
    ]:
        r = await tenant.viewer.get(f"/api/v1/projects?status_filter={status}")
        assert r.status_code == 200, r.text
        assert [item["id"] for item in r.json()["items"]] == wanted
        assert r.json()["total"] == len(wanted)
    r = await tenant.viewer.get("/api/v1/projects?status_filter=archived&offset=5")
    assert (r.json()["items"], r.json()["total"]) == ([], 1)
    assert_validation(
        await tenant.viewer.get("/api/v1/projects?status_filter=paused"), "status_filter"
    )


async def test_list_shows_only_own_org(tenant: Tenant, other_tenant: Tenant) -> None:
    await create(other_tenant.member, "Theirs", "T")
    mine = await create(tenant.member, "Mine", "M")
    r = await tenant.viewer.get("/api/v1/projects")
    assert [item["id"] for item in r.json()["items"]] == [mine["id"]]
    assert r.json()["total"] == 1


async def test_default_project_is_created_once(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    # Concurrent first calls create one project between them.
    first, second, third = await asyncio.gather(
        *(tenant.viewer.get("/api/v1/projects/default") for _ in range(3))
    )
    later = await tenant.member.get("/api/v1/projects/default")
    for response in (first, second, third, later):
        assert response.status_code == 200, response.text
        assert response.json() == first.json()
    project = first.json()
    assert set(project) == PROJECT_FIELDS
    assert (project["name"], project["key"], project["organization_id"]) == (
        "Default",
        "DEFAULT",
        tenant.id,
    )
    rows = await rows_of(db, "projects", tenant.id)
    assert [str(row["id"]) for row in rows] == [project["id"]]
    theirs = (await other_tenant.viewer.get("/api/v1/projects/default")).json()
    assert theirs["id"] != project["id"]
    assert theirs["organization_id"] == other_tenant.id


async def test_default_project_when_its_name_or_key_is_taken(tenant: Tenant) -> None:
    named = await create(tenant.member, "Default", "MINE")
    r = await tenant.viewer.get("/api/v1/projects/default")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == named["id"]

    other = await create(tenant.member, "Something", "DEFAULT")
    r = await tenant.viewer.get("/api/v1/projects/default")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == other["id"]


async def test_delete_cascades_to_associations(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    project = await create(tenant.member, "Doomed", "DOOM")
    keep = await create(tenant.member, "Kept", "KEPT")

    async def member(column: str) -> uuid.UUID:
        """A real agent or team to add (memberships have foreign keys)."""
        name = f"member-{uuid.uuid4().hex[:8]}"
        if column == "team_id":
            return await add_team(db, tenant.id, name)
        agent_id = uuid.uuid4()
        await db.execute(
            "INSERT INTO agents (id, organization_id, name) VALUES ($1, $2, $3)",
            agent_id,
            tenant.id,
            name,
        )
        return agent_id

    for pid in (project["id"], keep["id"]):
        for table, column in [("project_agents", "agent_id"), ("project_teams", "team_id")]:
            await db.execute(
                f"INSERT INTO {table} (id, project_id, {column}) VALUES ($1, $2, $3)",
                uuid.uuid4(),
                uuid.UUID(pid),
                await member(column),
            )
    await db.execute(
        "INSERT INTO project_agents (id, project_id, agent_id) VALUES ($1, $2, $3)",
        uuid.uuid4(),
        uuid.UUID(project["id"]),
        await member("agent_id"),
    )
    counted = (await tenant.viewer.get(f"/api/v1/projects/{project['id']}")).json()
    assert (counted["agent_count"], counted["team_count"]) == (2, 1)

    r = await tenant.member.delete(f"/api/v1/projects/{project['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": project["id"], "deleted": True}
    assert_error(
        await tenant.viewer.get(f"/api/v1/projects/{project['id']}"), 404, "RESOURCE_NOT_FOUND"
    )
    for table in ("project_agents", "project_teams"):
        gone = await db.fetchval(
            f"SELECT count(*) FROM {table} WHERE project_id = $1", uuid.UUID(project["id"])
        )
        kept = await db.fetchval(
            f"SELECT count(*) FROM {table} WHERE project_id = $1", uuid.UUID(keep["id"])
        )
        assert (gone, kept) == (0, 1)
    assert_error(
        await tenant.member.delete(f"/api/v1/projects/{project['id']}"), 404, "RESOURCE_NOT_FOUND"
    )


async def test_other_tenants_project_is_not_found(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await create(other_tenant.member, "Secret", "SEC")
    before = await rows_of(db, "projects", other_tenant.id)

    async def get(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"/api/v1/projects/{ident}")

    async def patch(ident: str) -> httpx.Response:
        return await tenant.admin.patch(f"/api/v1/projects/{ident}", json={"name": "Mine now"})

    async def delete(ident: str) -> httpx.Response:
        return await tenant.admin.delete(f"/api/v1/projects/{ident}")

    for request in (get, patch, delete):
        await assert_all_not_found(request, theirs["id"])
    assert await rows_of(db, "projects", other_tenant.id) == before
    assert await rows_of(db, "projects", tenant.id) == []


async def test_viewer_cannot_write(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    project = await create(tenant.member, "Guarded", "G")
    before = await rows_of(db, "projects", tenant.id)
    url = f"/api/v1/projects/{project['id']}"
    for response in [
        await tenant.viewer.post("/api/v1/projects", json={"name": "V", "key": "V"}),
        await tenant.viewer.patch(url, json={"name": "V"}),
        await tenant.viewer.delete(url),
    ]:
        assert_error(response, 403, "AUTHORIZATION_ERROR")
    assert await rows_of(db, "projects", tenant.id) == before
