"""Worker queues (reference §3.7): CRUD under an environment, lists, and the worker command."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Tenant, assert_error, client_for
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

QUEUE_FIELDS = {
    "id",
    "organization_id",
    "environment_id",
    "name",
    "display_name",
    "description",
    "status",
    "max_workers",
    "heartbeat_interval",
    "tags",
    "settings",
    "ephemeral",
    "created_at",
    "updated_at",
    "created_by",
    "active_workers",
    "task_queue_name",
}
COMMAND_FIELDS = {
    "queue_id",
    "command",
    "command_parts",
    "can_register",
    "queue_status",
    "active_workers",
    "max_workers",
    "worker_key",
    "worker_key_id",
}


async def test_create_and_get(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "prod")
    queue = await create_queue(
        tenant.member,
        env["id"],
        "gpu-pool",
        display_name="GPU pool",
        description="big boxes",
        max_workers=4,
        heartbeat_interval=30,
        tags=["gpu"],
        settings={"enable_local_litellm_proxy": True, "local_proxy_timeout_seconds": 10},
    )
    assert set(queue) == QUEUE_FIELDS
    assert (queue["organization_id"], queue["environment_id"]) == (tenant.id, env["id"])
    assert (queue["name"], queue["display_name"], queue["description"]) == (
        "gpu-pool",
        "GPU pool",
        "big boxes",
    )
    assert (queue["max_workers"], queue["heartbeat_interval"]) == (4, 30)
    assert queue["tags"] == ["gpu"]
    assert queue["settings"] == {
        "enable_local_litellm_proxy": True,
        "local_proxy_timeout_seconds": 10,
    }
    assert (queue["status"], queue["ephemeral"], queue["active_workers"]) == ("active", False, 0)
    assert queue["task_queue_name"] == queue["id"]
    member_key = await db.fetchval(
        "SELECT id FROM api_keys WHERE organization_id = $1 AND role = 'member'", tenant.id
    )
    assert queue["created_by"] == f"api_key:{member_key}"

    r = await tenant.viewer.get(f"/api/v1/worker-queues/{queue['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == queue

    plain = await create_queue(tenant.member, env["id"], "plain")
    assert (plain["max_workers"], plain["heartbeat_interval"]) == (None, 60)
    assert (plain["tags"], plain["settings"], plain["display_name"]) == ([], {}, None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "two words"}, "name"),
        ({"name": "_under"}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "q", "max_workers": 0}, "max_workers"),
        ({"name": "q", "max_workers": 10**12}, "max_workers"),
        ({"name": "q", "max_workers": "many"}, "max_workers"),
        ({"name": "q", "heartbeat_interval": 0}, "heartbeat_interval"),
        ({"name": "q", "heartbeat_interval": 3601}, "heartbeat_interval"),
        ({"name": "q", "heartbeat_interval": None}, "heartbeat_interval"),
        ({"name": "q", "tags": "gpu"}, "tags"),
        ({"name": "q", "settings": [1]}, "settings"),
        ([{"name": "q"}], "body"),
    ],
)
async def test_create_rejects_bad_input(
    db: asyncpg.Pool[Any], tenant: Tenant, body: Any, field: str
) -> None:
    env = await create_environment(tenant.member, "e")
    r = await tenant.member.post(f"/api/v1/environments/{env['id']}/worker-queues", json=body)
    assert_validation(r, field)
    assert await rows_of(db, "worker_queues", tenant.id) == []


async def test_malformed_json_is_400(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "e")
    queue = await create_queue(tenant.member, env["id"], "q")
    before = await rows_of(db, "worker_queues", tenant.id)
    for method, path in [
        ("POST", f"/api/v1/environments/{env['id']}/worker-queues"),
        ("PATCH", f"/api/v1/worker-queues/{queue['id']}"),
    ]:
        r = await tenant.member.request(method, path, content=b"\xff\xfe")
        assert_error(r, 400, "BAD_REQUEST")
    assert await rows_of(db, "worker_queues", tenant.id) == before


async def test_name_is_unique_per_environment(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    east = await create_environment(tenant.member, "east")
    west = await create_environment(tenant.member, "west")
    await create_queue(tenant.member, east["id"], "default")
    other = await create_queue(tenant.member, east["id"], "other")
    # The same name in another environment is fine.
    await create_queue(tenant.member, west["id"], "default")
    before = await rows_of(db, "worker_queues", tenant.id)
    r = await tenant.member.post(
        f"/api/v1/environments/{east['id']}/worker-queues", json={"name": "default"}
    )
    assert_error(r, 409, "RESOURCE_CONFLICT")
    r = await tenant.member.patch(f"/api/v1/worker-queues/{other['id']}", json={"name": "default"})
    assert_error(r, 409, "RESOURCE_CONFLICT")
    assert await rows_of(db, "worker_queues", tenant.id) == before


async def test_ephemeral_queues_are_hidden_from_lists(tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "e")
    visible = await create_queue(tenant.member, env["id"], "visible")
    hidden = await create_queue(tenant.member, env["id"], "local-exec-42")
    assert hidden["ephemeral"] is True
    for path in ["/api/v1/worker-queues", f"/api/v1/environments/{env['id']}/worker-queues"]:
        body = (await tenant.viewer.get(path)).json()
        assert [item["id"] for item in body["items"]] == [visible["id"]]
        assert body["total"] == 1
    r = await tenant.viewer.get(f"/api/v1/worker-queues/{hidden['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["ephemeral"] is True
    r = await tenant.admin.get(f"/api/v1/worker-queues/{hidden['id']}/worker-command")
    assert r.status_code == 200, r.text
    # A worker deletes its ephemeral queue when its one execution is done.
    r = await tenant.member.delete(f"/api/v1/worker-queues/{hidden['id']}")
    assert r.json() == {"id": hidden["id"], "deleted": True}


async def test_renaming_follows_the_ephemeral_prefix(tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "e")
    queue = await create_queue(tenant.member, env["id"], "q")
    url = f"/api/v1/worker-queues/{queue['id']}"
    renamed = (await tenant.member.patch(url, json={"name": "local-exec-7"})).json()
    assert renamed["ephemeral"] is True
    assert (await tenant.viewer.get("/api/v1/worker-queues")).json()["total"] == 0
    renamed = (await tenant.member.patch(url, json={"name": "q2"})).json()
    assert renamed["ephemeral"] is False
    assert (await tenant.viewer.get("/api/v1/worker-queues")).json()["total"] == 1


async def test_lists_page_and_filter(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await create_environment(other_tenant.member, "e")
    await create_queue(other_tenant.member, theirs["id"], "q0")
    east = await create_environment(tenant.member, "east")
    west = await create_environment(tenant.member, "west")
    ids = []
    for n in range(3):
        ids.append((await create_queue(tenant.member, east["id"], f"q{n}"))["id"])
        ids.append((await create_queue(tenant.member, west["id"], f"q{n}"))["id"])
    await create_queue(tenant.member, east["id"], "local-exec-1")
    await tenant.member.patch(f"/api/v1/worker-queues/{ids[0]}", json={"status": "maintenance"})

    everything = await ordered_ids(
        db, "worker_queues", "organization_id = $1 AND NOT ephemeral", tenant.id
    )
    assert everything == ids
    await check_pagination(tenant.viewer, "/api/v1/worker-queues", everything)
    east_path = f"/api/v1/environments/{east['id']}/worker-queues"
    await check_pagination(tenant.viewer, east_path, ids[0::2])

    r = await tenant.viewer.get("/api/v1/worker-queues?status_filter=maintenance")
    assert [item["id"] for item in r.json()["items"]] == [ids[0]]
    r = await tenant.viewer.get(f"{east_path}?status_filter=active")
    assert [item["id"] for item in r.json()["items"]] == ids[2::2]
    r = await tenant.viewer.get(f"/api/v1/environments/{west['id']}/worker-queues?offset=9")
    assert (r.json()["items"], r.json()["total"]) == ([], 3)
    for path in ["/api/v1/worker-queues", east_path]:
        assert_validation(await tenant.viewer.get(f"{path}?status_filter=on"), "status_filter")


async def test_patch_changes_only_the_fields_sent(tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "e")
    queue = await create_queue(
        tenant.member,
        env["id"],
        "q",
        display_name="Q",
        description="d",
        max_workers=3,
        tags=["t"],
        settings={"s": 1},
    )
    url = f"/api/v1/worker-queues/{queue['id']}"
    r = await tenant.member.patch(url, json={"heartbeat_interval": 15})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["heartbeat_interval"] == 15
    assert patched["updated_at"] > queue["updated_at"]
    unchanged = {"heartbeat_interval", "updated_at"}
    assert {k: v for k, v in patched.items() if k not in unchanged} == {
        k: v for k, v in queue.items() if k not in unchanged
    }

    r = await tenant.member.patch(
        url,
        json={
            "status": "maintenance",
            "max_workers": None,
            "description": None,
            "tags": [],
            "settings": {"n": 2},
        },
    )
    assert r.status_code == 200, r.text
    patched = r.json()
    assert (patched["status"], patched["max_workers"], patched["description"]) == (
        "maintenance",
        None,
        None,
    )
    assert (patched["tags"], patched["settings"]) == ([], {"n": 2})
    assert (patched["name"], patched["display_name"], patched["heartbeat_interval"]) == (
        "q",
        "Q",
        15,
    )
    assert patched["environment_id"] == env["id"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": None},
        {"status": None},
        {"heartbeat_interval": None},
        {"tags": None},
        {"settings": None},
        {"status": "paused"},
        {"max_workers": 0},
        {"max_workers": 10**12},
        {"heartbeat_interval": 0},
        {"name": "bad name"},
    ],
)
async def test_patch_rejects_bad_input(
    db: asyncpg.Pool[Any], tenant: Tenant, body: dict[str, Any]
) -> None:
    env = await create_environment(tenant.member, "e")
    queue = await create_queue(tenant.member, env["id"], "q")
    before = await rows_of(db, "worker_queues", tenant.id)
    assert_validation(await tenant.member.patch(f"/api/v1/worker-queues/{queue['id']}", json=body))
    assert await rows_of(db, "worker_queues", tenant.id) == before


async def test_delete_removes_its_workers(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "e")
    doomed = await create_queue(tenant.member, env["id"], "doomed")
    kept = await create_queue(tenant.member, env["id"], "kept")
    for queue in (doomed, doomed, kept):
        await add_worker(db, tenant.id, queue["id"])
    r = await tenant.member.delete(f"/api/v1/worker-queues/{doomed['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": doomed["id"], "deleted": True}
    assert_error(
        await tenant.viewer.get(f"/api/v1/worker-queues/{doomed['id']}"), 404, "RESOURCE_NOT_FOUND"
    )
    workers = await rows_of(db, "workers", tenant.id)
    assert [str(row["worker_queue_id"]) for row in workers] == [kept["id"]]
    assert [str(row["id"]) for row in await rows_of(db, "worker_queues", tenant.id)] == [kept["id"]]
    assert (await tenant.viewer.get(f"/api/v1/environments/{env['id']}")).status_code == 200
    assert_error(
        await tenant.member.delete(f"/api/v1/worker-queues/{doomed['id']}"),
        404,
        "RESOURCE_NOT_FOUND",
    )


async def test_worker_command(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "e")
    queue = await create_queue(tenant.member, env["id"], "q", max_workers=2)
    url = f"/api/v1/worker-queues/{queue['id']}/worker-command"
    # It mints a worker key: admins only.
    for client in (tenant.viewer, tenant.member):
        assert_error(await client.get(url), 403, "AUTHORIZATION_ERROR")
    r = await tenant.admin.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    command = r.json()
    assert set(command) == COMMAND_FIELDS
    assert command["queue_id"] == queue["id"]
    assert queue["id"] in command["command"]
    assert command["command_parts"]["flags"] == {
        "--queue-id": queue["id"],
        "--api-key-file": "worker.key",
    }
    assert command["command_parts"]["env"]["CONTROLPLANE_URL"].startswith("http")
    assert (command["can_register"], command["queue_status"]) == (True, "active")
    assert (command["active_workers"], command["max_workers"]) == (0, 2)
    # The key is a worker key of this queue: it starts a worker there and reads nothing.
    key = client_for(tenant.app, command["worker_key"])
    started = await key.post(f"/api/v1/worker-queues/{queue['id']}/start", json={})
    assert started.status_code == 200, started.text
    assert_error(await key.get(f"/api/v1/worker-queues/{queue['id']}"), 403)
    stored = await db.fetchrow(
        "SELECT role, worker_queue_id FROM api_keys WHERE id = $1",
        uuid.UUID(command["worker_key_id"]),
    )
    assert stored is not None
    assert (stored["role"], str(stored["worker_queue_id"])) == ("worker", queue["id"])


async def test_can_register_honours_status_and_max_workers(
    db: asyncpg.Pool[Any], tenant: Tenant
) -> None:
    env = await create_environment(tenant.member, "e")
    queue = await create_queue(tenant.member, env["id"], "q", max_workers=2)
    queue_url = f"/api/v1/worker-queues/{queue['id']}"

    async def command() -> dict[str, Any]:
        r = await tenant.admin.get(f"{queue_url}/worker-command")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    # Stale (over 150 s), disconnected and offline workers do not count.
    await add_worker(db, tenant.id, queue["id"], age_seconds=151)
    await add_worker(db, tenant.id, queue["id"], status="busy", age_seconds=600)
    await add_worker(db, tenant.id, queue["id"], status="disconnected")
    await add_worker(db, tenant.id, queue["id"], status="offline")
    await add_worker(db, tenant.id, queue["id"], status="idle", age_seconds=140)
    body = await command()
    assert (body["active_workers"], body["can_register"]) == (1, True)
    assert (await tenant.viewer.get(queue_url)).json()["active_workers"] == 1

    await add_worker(db, tenant.id, queue["id"], status="busy")
    body = await command()
    assert (body["active_workers"], body["can_register"]) == (2, False)
    assert (await tenant.viewer.get(queue_url)).json()["active_workers"] == 2
    listed = (await tenant.viewer.get("/api/v1/worker-queues")).json()["items"]
    assert [item["active_workers"] for item in listed] == [2]

    await tenant.member.patch(queue_url, json={"max_workers": 3})
    assert (await command())["can_register"] is True
    for status in ("inactive", "maintenance"):
        await tenant.member.patch(queue_url, json={"status": status})
        body = await command()
        assert (body["can_register"], body["queue_status"]) == (False, status)


async def test_other_tenants_queue_is_not_found(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    env = await create_environment(other_tenant.member, "e")
    theirs = await create_queue(other_tenant.member, env["id"], "q")
    before = await rows_of(db, "worker_queues", other_tenant.id)
    base = "/api/v1/worker-queues"

    async def get(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"{base}/{ident}")

    async def patch(ident: str) -> httpx.Response:
        return await tenant.admin.patch(f"{base}/{ident}", json={"status": "inactive"})

    async def delete(ident: str) -> httpx.Response:
        return await tenant.admin.delete(f"{base}/{ident}")

    async def command(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"{base}/{ident}/worker-command")

    for request in (get, patch, delete, command):
        await assert_all_not_found(request, theirs["id"])
    assert await rows_of(db, "worker_queues", other_tenant.id) == before
    listed = (await tenant.admin.get(base)).json()
    assert (listed["items"], listed["total"]) == ([], 0)


async def test_viewer_cannot_write(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "e")
    queue = await create_queue(tenant.member, env["id"], "q")
    before = await rows_of(db, "worker_queues", tenant.id)
    url = f"/api/v1/worker-queues/{queue['id']}"
    for response in [
        await tenant.viewer.post(
            f"/api/v1/environments/{env['id']}/worker-queues", json={"name": "v"}
        ),
        await tenant.viewer.patch(url, json={"status": "inactive"}),
        await tenant.viewer.delete(url),
    ]:
        assert_error(response, 403, "AUTHORIZATION_ERROR")
    assert await rows_of(db, "worker_queues", tenant.id) == before
