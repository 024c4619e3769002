"""`GET /workers` (Temporal's view of each queue: pollers and backlog), `GET /workers/{name}`,
and the 0.3 environment-based `POST /workers/register` and `POST /workers/heartbeat`."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
from starlette.applications import Starlette
from temporalio.worker import Worker

from activities.queue_probe import answer_probe
from api.app import create_app
from controlplane.services import free_port
from controlplane.settings import Settings
from tests.conftest import (
    Tenant,
    assert_error,
    client_for,
    make_tenant,
    temporal_for,
    worker_key_for,
)
from tests.resource_helpers import (
    assert_validation,
    create_environment,
    create_queue,
    rows_of,
)
from workflows.queue_probe import QueueProbeWorkflow

INFO_FIELDS = {
    "task_queue",
    "queue_id",
    "queue_name",
    "environment_name",
    "organization_id",
    "runner_name",
    "workers",
    "worker_count",
    "approximate_backlog_count",
    "registered_workers",
}


def env_name() -> str:
    return f"env-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def polling_worker(
    temporal_address: str, tenant: Tenant, queue_id: str, identity: str
) -> AsyncIterator[None]:
    """A real Temporal worker polling the queue's task queue in the tenant's namespace, as
    `controlplane worker` does."""
    client = await temporal_for(temporal_address, tenant)
    async with Worker(
        client,
        task_queue=queue_id,
        workflows=[QueueProbeWorkflow],
        activities=[answer_probe],
        identity=identity,
    ):
        yield


async def listed(client: httpx.AsyncClient, params: str = "") -> dict[str, Any]:
    response = await client.get(f"/api/v1/workers{params}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"items", "total", "limit", "offset"}
    return body


async def test_list_shows_the_pollers_temporal_sees(
    tenant: Tenant, other_tenant: Tenant, temporal_address: str
) -> None:
    env = await create_environment(tenant.member, env_name())
    served = await create_queue(tenant.member, env["id"], "served")
    idle = await create_queue(tenant.member, env["id"], "idle")
    await create_queue(tenant.member, env["id"], "local-exec-1")  # ephemeral: not listed
    started = await tenant.admin.post(f"/api/v1/worker-queues/{served['id']}/start", json={})
    assert started.status_code == 200, started.text

    identity = f"listing-test-{uuid.uuid4().hex[:6]}"
    async with polling_worker(temporal_address, tenant, served["id"], identity):
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            body = await listed(tenant.viewer)
            by_id = {item["queue_id"]: item for item in body["items"]}
            if by_id[served["id"]]["worker_count"] >= 1:
                break
            assert asyncio.get_running_loop().time() < deadline, body
            await asyncio.sleep(0.1)

    assert body["total"] == 2 and (body["limit"], body["offset"]) == (50, 0)
    assert [item["queue_id"] for item in body["items"]] == [served["id"], idle["id"]]
    info = by_id[served["id"]]
    assert set(info) == INFO_FIELDS
    assert info["task_queue"] == served["id"]
    assert (info["queue_name"], info["runner_name"]) == ("served", "served")
    assert info["environment_name"] == env["name"]
    assert info["organization_id"] == tenant.id
    assert info["registered_workers"] == 1
    assert isinstance(info["approximate_backlog_count"], int)
    assert info["approximate_backlog_count"] >= 0
    assert info["worker_count"] == len(info["workers"])
    poller = info["workers"][0]
    assert set(poller) == {"identity", "last_access_time", "rate_per_second"}
    assert poller["identity"] == identity
    assert poller["last_access_time"] is not None
    assert isinstance(poller["rate_per_second"], float)
    quiet = by_id[idle["id"]]
    assert (quiet["worker_count"], quiet["workers"], quiet["registered_workers"]) == (0, [], 0)

    second = await listed(tenant.viewer, "?limit=1&skip=1")
    assert [item["queue_id"] for item in second["items"]] == [idle["id"]]
    assert (second["total"], second["limit"], second["offset"]) == (2, 1, 1)
    assert_validation(await tenant.viewer.get("/api/v1/workers?limit=0"), "limit")

    theirs = await listed(other_tenant.viewer)
    assert (theirs["items"], theirs["total"]) == ([], 0)


async def test_one_queue_by_name_or_id(tenant: Tenant, other_tenant: Tenant) -> None:
    first_env = await create_environment(tenant.member, env_name())
    queue = await create_queue(tenant.member, first_env["id"], "runner-a")

    by_name = await tenant.viewer.get("/api/v1/workers/runner-a")
    assert by_name.status_code == 200, by_name.text
    assert set(by_name.json()) == INFO_FIELDS
    assert by_name.json()["queue_id"] == queue["id"]
    assert by_name.json()["worker_count"] == 0
    by_id = await tenant.viewer.get(f"/api/v1/workers/{queue['id']}")
    assert by_id.status_code == 200, by_id.text
    assert by_id.json()["runner_name"] == "runner-a"

    assert_error(await tenant.viewer.get("/api/v1/workers/no-such-runner"), 404)
    assert_error(await other_tenant.viewer.get("/api/v1/workers/runner-a"), 404)
    assert_error(await other_tenant.viewer.get(f"/api/v1/workers/{queue['id']}"), 404)

    second_env = await create_environment(tenant.member, env_name())
    twin = await create_queue(tenant.member, second_env["id"], "runner-a")
    error = assert_error(await tenant.viewer.get("/api/v1/workers/runner-a"), 409)
    assert error["details"]["matches"] == [
        {"queue_id": queue["id"], "environment_name": first_env["name"]},
        {"queue_id": twin["id"], "environment_name": second_env["name"]},
    ]
    # The id still names exactly one.
    again = await tenant.viewer.get(f"/api/v1/workers/{twin['id']}")
    assert again.status_code == 200 and again.json()["environment_name"] == second_env["name"]


@asynccontextmanager
async def app_with(settings: Settings) -> AsyncIterator[Starlette]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


async def _queue_on(app: Starlette) -> Tenant:
    tenant = await make_tenant(app, app.state.cp.pool)
    env = await create_environment(tenant.member, env_name())
    await create_queue(tenant.member, env["id"], "q")
    return tenant


async def test_unreachable_temporal_answers_503(settings: Settings) -> None:
    unreachable = dataclasses.replace(settings, temporal_address=f"127.0.0.1:{free_port()}")
    async with app_with(unreachable) as app:
        tenant = await _queue_on(app)
        listing = await tenant.viewer.get("/api/v1/workers")
        one = await tenant.viewer.get("/api/v1/workers/q")
        metrics = (await client_for(app).get("/metrics")).text
    assert_error(listing, 503, "SERVICE_UNAVAILABLE")
    assert_error(one, 503, "SERVICE_UNAVAILABLE")
    assert 'controlplane_temporal_client_errors_total{operation="connect"}' in metrics


async def test_a_namespace_temporal_refuses_answers_503_and_is_counted(settings: Settings) -> None:
    # Temporal answers, but refuses to register the organization's namespace.
    refused = dataclasses.replace(
        settings, temporal_namespace_prefix="refused-", temporal_retention_days=0
    )
    async with app_with(refused) as app:
        tenant = await _queue_on(app)
        listing = await tenant.viewer.get("/api/v1/workers")
        metrics = (await client_for(app).get("/metrics")).text
    error = assert_error(listing, 503, "SERVICE_UNAVAILABLE")
    assert error["message"].startswith("Could not register Temporal namespace")
    counted = re.search(
        r'controlplane_temporal_client_errors_total\{operation="register_namespace"\} (\S+)',
        metrics,
    )
    assert counted is not None and float(counted.group(1)) >= 1


async def register(client: httpx.AsyncClient, environment: str, **fields: Any) -> httpx.Response:
    return await client.post(
        "/api/v1/workers/register", json={"environment_name": environment, **fields}
    )


async def test_legacy_register_creates_the_environment_and_default_queue(
    tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    name = env_name()
    first = await register(tenant.admin, name, hostname="box-1", worker_metadata={"v": "0.3"})
    assert first.status_code == 200, first.text
    config = first.json()
    assert config["worker_token"].startswith("worker_")
    assert config["environment_name"] == name
    assert config["organization_id"] == tenant.id
    assert config["temporal_namespace"] == f"org-{tenant.id}" and config["temporal_host"]
    assert config["temporal_api_key"].count(".") == 2  # a JWT
    assert config["control_plane_url"]
    assert config["queue_name"] == "default"
    assert config["task_queue_name"] == config["queue_id"]

    envs = (await tenant.viewer.get("/api/v1/environments?limit=1000")).json()["items"]
    env = next(e for e in envs if e["name"] == name)
    assert env["status"] == "ready"
    queues = (await tenant.viewer.get(f"/api/v1/environments/{env['id']}/worker-queues")).json()
    assert [(q["id"], q["name"]) for q in queues["items"]] == [(config["queue_id"], "default")]
    workers = (
        await tenant.viewer.get(f"/api/v1/worker-queues/{config['queue_id']}/workers")
    ).json()["items"]
    assert [(w["worker_id"], w["hostname"]) for w in workers] == [(config["worker_id"], "box-1")]
    assert workers[0]["worker_metadata"] == {"v": "0.3"}

    # A second registration reuses the environment and its queue.
    # A worker key of the environment's default queue registers there too.
    key = client_for(tenant.app, await worker_key_for(tenant, config["queue_id"]))
    second = await register(key, name)
    assert second.status_code == 200, second.text
    assert second.json()["task_queue_name"] == config["task_queue_name"]
    assert second.json()["worker_id"] != config["worker_id"]
    count = "SELECT count(*) FROM environments WHERE organization_id = $1 AND name = $2"
    assert await db.fetchval(count, tenant.id, name) == 1
    listing = (await tenant.viewer.get("/api/v1/workers")).json()
    mine = [item for item in listing["items"] if item["environment_name"] == name]
    assert [(item["runner_name"], item["registered_workers"]) for item in mine] == [("default", 2)]

    # An existing environment gets its default queue next to the queues it has.
    existing = await create_environment(tenant.member, env_name())
    await create_queue(tenant.member, existing["id"], "other")
    joined = await register(tenant.admin, existing["name"])
    assert joined.status_code == 200, joined.text
    queues = (
        await tenant.viewer.get(f"/api/v1/environments/{existing['id']}/worker-queues")
    ).json()
    assert sorted(q["name"] for q in queues["items"]) == ["default", "other"]


async def test_legacy_register_refusals(tenant: Tenant, db: asyncpg.Pool[Any]) -> None:
    inactive = await create_environment(tenant.member, env_name())
    patched = await tenant.member.patch(
        f"/api/v1/environments/{inactive['id']}", json={"status": "inactive"}
    )
    assert patched.status_code == 200, patched.text
    before = {t: await rows_of(db, t, tenant.id) for t in ("environments", "worker_queues")}

    error = assert_error(await register(tenant.admin, inactive["name"]), 400, "BAD_REQUEST")
    assert error["details"] == {"status": "inactive"}
    assert_validation(
        await tenant.admin.post("/api/v1/workers/register", json={}), "environment_name"
    )
    assert_validation(await register(tenant.admin, "not a name!"), "environment_name")
    assert_validation(await register(tenant.admin, "ok", worker_metadata=[1]), "worker_metadata")
    assert_validation(await register(tenant.admin, "ok", hostname=7), "hostname")
    for client in (tenant.viewer, tenant.member):
        assert_error(await register(client, env_name()), 403, "AUTHORIZATION_ERROR")
    # A worker key of another queue creates nothing: not the environment, not its queue.
    elsewhere = await create_queue(tenant.member, inactive["id"], "elsewhere")
    key = client_for(tenant.app, await worker_key_for(tenant, elsewhere["id"]))
    assert_error(await register(key, env_name()), 403, "AUTHORIZATION_ERROR")
    before["worker_queues"] = await rows_of(db, "worker_queues", tenant.id)

    after = {t: await rows_of(db, t, tenant.id) for t in ("environments", "worker_queues")}
    assert after == before
    assert await rows_of(db, "workers", tenant.id) == []


async def test_legacy_heartbeat(app: Starlette, tenant: Tenant, other_tenant: Tenant) -> None:
    name = env_name()
    config = (await register(tenant.admin, name)).json()
    other = (await register(tenant.admin, name)).json()
    worker = client_for(app, config["worker_token"])

    beat = await worker.post(
        "/api/v1/workers/heartbeat",
        json={
            "worker_id": config["worker_id"],
            "environment_name": name,
            "status": "busy",
            "tasks_processed": 2,
            "current_task_id": "t-9",
            "worker_metadata": {"note": "legacy"},
        },
    )
    assert beat.status_code == 200, beat.text
    assert beat.json()["worker_id"] == config["worker_id"]
    assert beat.json()["status"] == "busy"
    assert beat.json()["heartbeat_interval"] == 60
    by_key = await tenant.admin.post(
        "/api/v1/workers/heartbeat", json={"worker_id": config["worker_id"], "status": "idle"}
    )
    assert_error(by_key, 403, "AUTHORIZATION_ERROR")
    idle = await worker.post(
        "/api/v1/workers/heartbeat", json={"worker_id": config["worker_id"], "status": "idle"}
    )
    assert idle.status_code == 200, idle.text
    workers = (
        await tenant.viewer.get(f"/api/v1/worker-queues/{config['queue_id']}/workers")
    ).json()["items"]
    mine = next(w for w in workers if w["worker_id"] == config["worker_id"])
    assert (mine["status"], mine["tasks_processed"]) == ("idle", 0)
    assert mine["worker_metadata"]["note"] == "legacy"

    # Another worker's id, another environment, another tenant's worker: not found.
    stranger = client_for(
        tenant.app, (await register(other_tenant.admin, env_name())).json()["worker_token"]
    )
    for client, body in [
        (worker, {"worker_id": other["worker_id"]}),
        (worker, {"worker_id": config["worker_id"], "environment_name": env_name()}),
        (stranger, {"worker_id": config["worker_id"]}),
        (worker, {"worker_id": str(uuid.uuid4())}),
    ]:
        assert_error(await client.post("/api/v1/workers/heartbeat", json=body), 404)
    assert_validation(await worker.post("/api/v1/workers/heartbeat", json={}), "worker_id")
    assert_validation(
        await worker.post("/api/v1/workers/heartbeat", json={"worker_id": "nope"}), "worker_id"
    )
    assert_validation(
        await worker.post(
            "/api/v1/workers/heartbeat", json={"worker_id": config["worker_id"], "status": "x"}
        ),
        "status",
    )
    viewer = await tenant.viewer.post(
        "/api/v1/workers/heartbeat", json={"worker_id": config["worker_id"]}
    )
    assert_error(viewer, 403, "AUTHORIZATION_ERROR")
