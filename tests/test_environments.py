"""`/api/v1/environments` (reference §3.9)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Tenant, assert_error
from tests.resource_helpers import (
    add_worker,
    assert_all_not_found,
    assert_validation,
    check_pagination,
    create_environment,
    create_queue,
    ordered_ids,
    rows_of,
)

ENVIRONMENT_FIELDS = {
    "id",
    "organization_id",
    "name",
    "display_name",
    "description",
    "tags",
    "settings",
    "status",
    "created_at",
    "updated_at",
    "created_by",
    "worker_token",
    "provisioning_workflow_id",
    "provisioned_at",
    "error_message",
    "temporal_namespace_id",
    "active_workers",
    "idle_workers",
    "busy_workers",
    "execution_environment",
}
EXECUTION_ENVIRONMENT = {
    "env_vars": {"LOG_LEVEL": "debug"},
    "secrets": ["GITHUB_TOKEN"],
    "integration_ids": ["slack-1"],
    "mcp_servers": {
        "files": {"type": "sse", "url": "http://files.local/sse"},
        "search": {"type": "http", "url": "http://search.local/mcp", "headers": {"X": "1"}},
    },
}


async def test_create_and_get(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(
        tenant.member,
        "prod",
        display_name="Production",
        description="the real one",
        tags=["eu", "critical"],
        settings={"region": "eu-west-1"},
        execution_environment=EXECUTION_ENVIRONMENT,
    )
    assert set(env) == ENVIRONMENT_FIELDS
    assert env["organization_id"] == tenant.id
    assert (env["name"], env["display_name"], env["description"]) == (
        "prod",
        "Production",
        "the real one",
    )
    assert (env["tags"], env["settings"]) == (["eu", "critical"], {"region": "eu-west-1"})
    assert env["status"] == "ready"
    assert env["provisioned_at"] is not None
    assert env["provisioning_workflow_id"] is None
    assert env["error_message"] is None
    uuid.UUID(env["worker_token"])
    assert (env["active_workers"], env["idle_workers"], env["busy_workers"]) == (0, 0, 0)
    member_key = await db.fetchval(
        "SELECT id FROM api_keys WHERE organization_id = $1 AND role = 'member'", tenant.id
    )
    assert env["created_by"] == f"api_key:{member_key}"
    stored = env["execution_environment"]
    assert stored["env_vars"] == EXECUTION_ENVIRONMENT["env_vars"]
    assert stored["secrets"] == ["GITHUB_TOKEN"]
    assert stored["integration_ids"] == ["slack-1"]
    assert stored["mcp_servers"]["files"]["url"] == "http://files.local/sse"
    assert stored["mcp_servers"]["search"]["url"] == "http://search.local/mcp"

    r = await tenant.viewer.get(f"/api/v1/environments/{env['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == env
    other = await create_environment(tenant.member, "staging")
    assert other["worker_token"] != env["worker_token"]
    assert (other["tags"], other["settings"], other["display_name"]) == ([], {}, None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "-dash-first"}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "ok", "tags": "eu"}, "tags"),
        ({"name": "ok", "tags": [1]}, "tags.0"),
        ({"name": "ok", "settings": []}, "settings"),
        ({"name": "ok", "execution_environment": {"env_vars": {"A": 1}}}, None),
        ({"name": "ok", "execution_environment": {"mcp_servers": {"m": {"type": "ftp"}}}}, None),
        # A command to run on the worker comes only from an admin's mcp_server skill.
        (
            {"name": "ok", "execution_environment": {"mcp_servers": {"m": {"command": "sh"}}}},
            "execution_environment.mcp_servers",
        ),
        (
            {"name": "ok", "execution_environment": {"mcp_servers": {"m": {"type": "stdio"}}}},
            "execution_environment.mcp_servers",
        ),
        ({"name": "ok", "execution_environment": []}, "execution_environment"),
        ("prod", "body"),
    ],
)
async def test_create_rejects_bad_input(
    db: asyncpg.Pool[Any], tenant: Tenant, body: Any, field: str | None
) -> None:
    r = await tenant.member.post("/api/v1/environments", json=body)
    if field is None:
        assert_validation(r)
    else:
        assert_validation(r, field)
    assert await rows_of(db, "environments", tenant.id) == []


async def test_malformed_json_is_400(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "e")
    before = await rows_of(db, "environments", tenant.id)
    for method, path in [
        ("POST", "/api/v1/environments"),
        ("PATCH", f"/api/v1/environments/{env['id']}"),
    ]:
        r = await tenant.member.request(method, path, content=b'{"name": "x",}')
        assert_error(r, 400, "BAD_REQUEST")
    assert await rows_of(db, "environments", tenant.id) == before


async def test_name_is_unique_per_org(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    await create_environment(tenant.member, "prod")
    staging = await create_environment(tenant.member, "staging")
    before = await rows_of(db, "environments", tenant.id)
    assert_error(
        await tenant.member.post("/api/v1/environments", json={"name": "prod"}),
        409,
        "RESOURCE_CONFLICT",
    )
    assert_error(
        await tenant.member.patch(f"/api/v1/environments/{staging['id']}", json={"name": "prod"}),
        409,
        "RESOURCE_CONFLICT",
    )
    assert await rows_of(db, "environments", tenant.id) == before
    await create_environment(other_tenant.member, "prod")


async def test_patch_changes_only_the_fields_sent(tenant: Tenant) -> None:
    env = await create_environment(
        tenant.member,
        "dev",
        display_name="Dev",
        description="d",
        tags=["a"],
        settings={"k": "v"},
        execution_environment={"env_vars": {"A": "1"}},
    )
    url = f"/api/v1/environments/{env['id']}"
    r = await tenant.member.patch(url, json={"description": "changed"})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["updated_at"] > env["updated_at"]
    unchanged = {"description", "updated_at"}
    assert {k: v for k, v in patched.items() if k not in unchanged} == {
        k: v for k, v in env.items() if k not in unchanged
    }
    assert patched["description"] == "changed"

    r = await tenant.member.patch(
        url,
        json={
            "name": "dev2",
            "tags": ["b", "c"],
            "settings": {"other": 1},
            "status": "inactive",
            "execution_environment": {"secrets": ["S"]},
            "display_name": None,
        },
    )
    assert r.status_code == 200, r.text
    patched = r.json()
    assert (patched["name"], patched["tags"], patched["settings"]) == (
        "dev2",
        ["b", "c"],
        {"other": 1},
    )
    assert (patched["status"], patched["display_name"]) == ("inactive", None)
    assert patched["execution_environment"]["secrets"] == ["S"]
    assert patched["execution_environment"]["env_vars"] == {}
    assert patched["description"] == "changed"
    assert patched["worker_token"] == env["worker_token"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": None},
        {"tags": None},
        {"settings": None},
        {"status": None},
        {"execution_environment": None},
        {"status": "deleted"},
        {"name": "bad name"},
        {"tags": {"a": 1}},
        {"execution_environment": {"secrets": "S"}},
    ],
)
async def test_patch_rejects_bad_input(
    db: asyncpg.Pool[Any], tenant: Tenant, body: dict[str, Any]
) -> None:
    env = await create_environment(tenant.member, "keep")
    before = await rows_of(db, "environments", tenant.id)
    assert_validation(await tenant.member.patch(f"/api/v1/environments/{env['id']}", json=body))
    assert await rows_of(db, "environments", tenant.id) == before


async def test_list_pages_and_filters(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    await create_environment(other_tenant.member, "theirs")
    ids = [(await create_environment(tenant.member, f"env-{n}"))["id"] for n in range(4)]
    await tenant.member.patch(f"/api/v1/environments/{ids[2]}", json={"status": "inactive"})
    expected = await ordered_ids(db, "environments", "organization_id = $1", tenant.id)
    assert expected == ids
    await check_pagination(tenant.viewer, "/api/v1/environments", expected)

    r = await tenant.viewer.get("/api/v1/environments?status_filter=inactive")
    assert [item["id"] for item in r.json()["items"]] == [ids[2]]
    r = await tenant.viewer.get("/api/v1/environments?status_filter=ready&limit=2&skip=2")
    assert [item["id"] for item in r.json()["items"]] == [ids[3]]
    assert (r.json()["total"], r.json()["offset"]) == (3, 2)
    r = await tenant.viewer.get("/api/v1/environments?status_filter=error")
    assert (r.json()["items"], r.json()["total"]) == ([], 0)
    assert_validation(
        await tenant.viewer.get("/api/v1/environments?status_filter=gone"), "status_filter"
    )


async def test_worker_counts_honour_staleness(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "busy-env")
    q1 = await create_queue(tenant.member, env["id"], "q1")
    q2 = await create_queue(tenant.member, env["id"], "q2")
    await add_worker(db, tenant.id, q1["id"], status="active")
    await add_worker(db, tenant.id, q1["id"], status="idle", age_seconds=100)
    await add_worker(db, tenant.id, q2["id"], status="busy", age_seconds=140)
    await add_worker(db, tenant.id, q2["id"], status="busy", age_seconds=160)  # stale
    await add_worker(db, tenant.id, q2["id"], status="active", age_seconds=3600)  # stale
    await add_worker(db, tenant.id, q2["id"], status="disconnected")
    await add_worker(db, tenant.id, q2["id"], status="offline")
    other_env = await create_environment(tenant.member, "quiet-env")
    other_queue = await create_queue(tenant.member, other_env["id"], "q1")
    await add_worker(db, tenant.id, other_queue["id"])

    got = (await tenant.viewer.get(f"/api/v1/environments/{env['id']}")).json()
    assert (got["active_workers"], got["idle_workers"], got["busy_workers"]) == (3, 1, 1)
    listed = (await tenant.viewer.get("/api/v1/environments")).json()["items"]
    counts = {item["name"]: item["active_workers"] for item in listed}
    assert counts == {"busy-env": 3, "quiet-env": 1}
    patched = (
        await tenant.member.patch(f"/api/v1/environments/{env['id']}", json={"description": "x"})
    ).json()
    assert patched["active_workers"] == 3


async def test_delete_cascades_to_queues_and_workers(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "doomed")
    keep = await create_environment(tenant.member, "kept")
    queues = [await create_queue(tenant.member, env["id"], f"q{n}") for n in range(2)]
    queues.append(await create_queue(tenant.member, env["id"], "local-exec-1"))
    kept_queue = await create_queue(tenant.member, keep["id"], "q0")
    for queue in [*queues, kept_queue]:
        await add_worker(db, tenant.id, queue["id"])

    r = await tenant.member.delete(f"/api/v1/environments/{env['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": env["id"], "deleted": True}
    assert_error(
        await tenant.viewer.get(f"/api/v1/environments/{env['id']}"), 404, "RESOURCE_NOT_FOUND"
    )
    for queue in queues:
        assert_error(
            await tenant.viewer.get(f"/api/v1/worker-queues/{queue['id']}"),
            404,
            "RESOURCE_NOT_FOUND",
        )
    remaining_queues = await rows_of(db, "worker_queues", tenant.id)
    assert [str(row["id"]) for row in remaining_queues] == [kept_queue["id"]]
    remaining_workers = await rows_of(db, "workers", tenant.id)
    assert [str(row["worker_queue_id"]) for row in remaining_workers] == [kept_queue["id"]]
    assert_error(
        await tenant.member.delete(f"/api/v1/environments/{env['id']}"),
        404,
        "RESOURCE_NOT_FOUND",
    )


async def test_worker_command(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "cmd")
    url = f"/api/v1/environments/{env['id']}/worker-command"
    r = await tenant.viewer.get(url)
    assert r.status_code == 200, r.text
    empty = r.json()
    assert set(empty) == {
        "worker_token",
        "environment_name",
        "command",
        "command_parts",
        "namespace_status",
        "can_register",
        "provisioning_workflow_id",
        "queues",
    }
    assert (empty["worker_token"], empty["environment_name"]) == (env["worker_token"], "cmd")
    assert (empty["command"], empty["command_parts"], empty["queues"]) == (None, {}, [])
    assert empty["can_register"] is False
    assert empty["namespace_status"] == "ready"

    paused = await create_queue(tenant.member, env["id"], "paused")
    await tenant.member.patch(f"/api/v1/worker-queues/{paused['id']}", json={"status": "inactive"})
    live = await create_queue(tenant.member, env["id"], "live", max_workers=1)
    await create_queue(tenant.member, env["id"], "local-exec-abc")
    body = (await tenant.viewer.get(url)).json()
    assert [q["queue_id"] for q in body["queues"]] == [paused["id"], live["id"]]
    assert [q["can_register"] for q in body["queues"]] == [False, True]
    assert body["command"] == body["queues"][1]["command"]
    assert live["id"] in body["command"]
    assert body["command_parts"] == body["queues"][1]["command_parts"]
    assert body["can_register"] is True

    # The only active queue is full: nobody can register.
    await add_worker(db, tenant.id, live["id"])
    body = (await tenant.viewer.get(url)).json()
    assert body["queues"][1]["active_workers"] == 1
    assert body["can_register"] is False

    await tenant.member.patch(f"/api/v1/worker-queues/{live['id']}", json={"max_workers": None})
    assert (await tenant.viewer.get(url)).json()["can_register"] is True
    await tenant.member.patch(f"/api/v1/environments/{env['id']}", json={"status": "inactive"})
    assert (await tenant.viewer.get(url)).json()["can_register"] is False


async def test_other_tenants_environment_is_not_found(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await create_environment(other_tenant.member, "secret")
    await create_queue(other_tenant.member, theirs["id"], "q")
    before = (
        await rows_of(db, "environments", other_tenant.id),
        await rows_of(db, "worker_queues", other_tenant.id),
    )
    base = "/api/v1/environments"

    async def get(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"{base}/{ident}")

    async def patch(ident: str) -> httpx.Response:
        return await tenant.admin.patch(f"{base}/{ident}", json={"description": "mine"})

    async def delete(ident: str) -> httpx.Response:
        return await tenant.admin.delete(f"{base}/{ident}")

    async def command(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"{base}/{ident}/worker-command")

    async def list_queues(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"{base}/{ident}/worker-queues")

    async def create_queue_in(ident: str) -> httpx.Response:
        return await tenant.admin.post(f"{base}/{ident}/worker-queues", json={"name": "mine"})

    for request in (get, patch, delete, command, list_queues, create_queue_in):
        await assert_all_not_found(request, theirs["id"])
    after = (
        await rows_of(db, "environments", other_tenant.id),
        await rows_of(db, "worker_queues", other_tenant.id),
    )
    assert after == before
    assert await rows_of(db, "worker_queues", tenant.id) == []
    assert await rows_of(db, "environments", tenant.id) == []


async def test_viewer_cannot_write(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "guarded")
    before = await rows_of(db, "environments", tenant.id)
    url = f"/api/v1/environments/{env['id']}"
    for response in [
        await tenant.viewer.post("/api/v1/environments", json={"name": "v"}),
        await tenant.viewer.patch(url, json={"name": "v"}),
        await tenant.viewer.delete(url),
    ]:
        assert_error(response, 403, "AUTHORIZATION_ERROR")
    assert await rows_of(db, "environments", tenant.id) == before
