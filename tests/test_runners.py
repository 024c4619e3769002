"""`/api/v1/runners` and `/runners/{name}/health`: the hosts workers run on, from a real
`controlplane worker --runner-name` process and from heartbeats of every age; and the
`worker.status_changed` events of a worker's life."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

import asyncpg

from controlplane.devtools.fake_anthropic import FakeAnthropicServer
from controlplane.workers import mark_stale
from tests.conftest import Tenant, as_worker, assert_error, client_for, worker_key_for
from tests.execution_helpers import make_queue, start_worker_process
from tests.resource_helpers import assert_validation, rows_of


async def runners(tenant: Tenant) -> dict[str, dict[str, Any]]:
    response = await tenant.viewer.get("/api/v1/runners")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"items", "total", "limit", "offset"}
    return {item["name"]: item for item in body["items"]}


async def health(tenant: Tenant, name: str) -> dict[str, Any]:
    response = await tenant.viewer.get(f"/api/v1/runners/{name}/health")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_for_runner(tenant: Tenant, name: str, live: int) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        found = (await runners(tenant)).get(name)
        if found is not None and found["live_workers"] == live:
            return found
        assert asyncio.get_running_loop().time() < deadline, found
        await asyncio.sleep(0.1)


async def test_a_runner_is_listed_while_its_worker_runs_and_down_after_it_stops(
    tenant: Tenant, live_api: str, fake_llm: FakeAnthropicServer
) -> None:
    queue = await make_queue(tenant, "rack")
    name = f"rack-{uuid.uuid4().hex[:6]}"
    key = await worker_key_for(tenant, queue["id"])
    process = start_worker_process(
        queue["id"], key, live_api, fake_llm, extra_args=("--runner-name", name)
    )
    try:
        runner = await wait_for_runner(tenant, name, live=1)
        assert runner["status"] == "healthy" and runner["reasons"] == []
        (worker,) = runner["workers"]
        assert (worker["worker_queue_id"], worker["queue_name"]) == (queue["id"], "q")
        assert runner["queues"] == [
            {
                "id": queue["id"],
                "name": "q",
                "environment_name": "rack",
                "live_workers": 1,
            }
        ]
        info = runner["system_info"]
        assert info["pid"] == process.pid
        assert {"hostname", "os_name", "python_version", "cpu_count"} <= set(info)
        assert info["memory_total"] > 0 and info["disk_total"] > 0
        assert (await health(tenant, name))["status"] == "healthy"
        listed = (await tenant.viewer.get(f"/api/v1/worker-queues/{queue['id']}/workers")).json()
        assert [w["runner_name"] for w in listed["items"]] == [name]
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
    stopped = await wait_for_runner(tenant, name, live=0)
    assert (stopped["status"], stopped["workers"], stopped["queues"]) == ("down", [], [])
    down = await health(tenant, name)
    assert (down["status"], down["live_workers"]) == ("down", 0)
    assert down["last_heartbeat"] == stopped["last_heartbeat"]


async def add_runner_worker(
    db: asyncpg.Pool[Any],
    tenant: Tenant,
    queue_id: str,
    runner: str,
    *,
    age_seconds: float = 0,
    status: str = "active",
) -> uuid.UUID:
    worker_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO workers (id, organization_id, worker_queue_id, status, runner_name, "
        "last_heartbeat) VALUES ($1, $2, $3, $4, $5, now() - make_interval(secs => $6))",
        worker_id,
        tenant.id,
        uuid.UUID(queue_id),
        status,
        runner,
        age_seconds,
    )
    return worker_id


async def test_health_is_judged_from_heartbeats(tenant: Tenant, db: asyncpg.Pool[Any]) -> None:
    queue = await make_queue(tenant, "health")  # heartbeat_interval 60 s
    await add_runner_worker(db, tenant, queue["id"], "steady", age_seconds=5)
    await add_runner_worker(
        db, tenant, queue["id"], "steady", age_seconds=3600, status="disconnected"
    )
    await add_runner_worker(db, tenant, queue["id"], "late", age_seconds=100)  # 60 s + 30 s grace
    await add_runner_worker(db, tenant, queue["id"], "lossy", age_seconds=5)
    await add_runner_worker(db, tenant, queue["id"], "lossy", age_seconds=300)  # died, no goodbye
    await add_runner_worker(db, tenant, queue["id"], "gone", age_seconds=600)
    await add_runner_worker(db, tenant, queue["id"], "forgotten", age_seconds=2 * 86400)
    listed = await runners(tenant)
    assert sorted(listed) == ["gone", "late", "lossy", "steady"]
    assert {name: runner["status"] for name, runner in listed.items()} == {
        "steady": "healthy",
        "late": "degraded",
        "lossy": "degraded",
        "gone": "down",
    }
    assert [w["late"] for w in listed["late"]["workers"]] == [True]
    lossy = await health(tenant, "lossy")
    assert (lossy["live_workers"], lossy["lost_workers"]) == (1, 1)
    assert "without disconnecting" in lossy["reasons"][0]
    assert (await health(tenant, "gone"))["seconds_since_heartbeat"] >= 600
    page = (await tenant.viewer.get("/api/v1/runners?limit=2&offset=1")).json()
    assert ([r["name"] for r in page["items"]], page["total"]) == (["late", "lossy"], 4)
    assert_validation(await tenant.viewer.get("/api/v1/runners?limit=0"), "limit")


async def test_another_organizations_runner_is_not_found(
    tenant: Tenant, other_tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    queue = await make_queue(other_tenant, "theirs")
    await add_runner_worker(db, other_tenant, queue["id"], "their-box")
    assert (await health(other_tenant, "their-box"))["status"] == "healthy"
    for name in ("their-box", "never-seen", "%20"):
        response = await tenant.viewer.get(f"/api/v1/runners/{name}/health")
        assert_error(response, 404, "RESOURCE_NOT_FOUND")
    assert await runners(tenant) == {}


async def test_a_bad_runner_name_is_refused_and_starts_nothing(
    tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    queue = await make_queue(tenant, "named")
    starter = client_for(tenant.app, await worker_key_for(tenant, queue["id"]))
    before = await rows_of(db, "workers", tenant.id)
    for bad in ("has space", "", "-leading", "x" * 256, 7):
        response = await starter.post(
            f"/api/v1/worker-queues/{queue['id']}/start", json={"runner_name": bad}
        )
        assert_validation(response, "runner_name")
    assert await rows_of(db, "workers", tenant.id) == before
    named = await starter.post(
        f"/api/v1/worker-queues/{queue['id']}/start",
        json={"runner_name": "box-1.example", "system_info": {"hostname": "ignored"}},
    )
    assert named.status_code == 200, named.text
    unnamed = await starter.post(
        f"/api/v1/worker-queues/{queue['id']}/start", json={"system_info": {"hostname": "h-2"}}
    )
    assert unnamed.status_code == 200, unnamed.text
    assert sorted(await runners(tenant)) == ["box-1.example", "h-2"]


async def test_a_workers_life_is_announced(tenant: Tenant, db: asyncpg.Pool[Any]) -> None:
    """`worker.status_changed`: registered, disconnected (once), stale (housekeeping)."""
    queue = await make_queue(tenant, "life")
    worker = await as_worker(tenant, queue["id"])
    worker_id = await db.fetchval("SELECT id FROM workers WHERE organization_id = $1", tenant.id)
    response = await worker.post(f"/api/v1/workers/{worker_id}/disconnect", json={})
    assert response.status_code == 200, response.text
    again = await worker.post(f"/api/v1/workers/{worker_id}/disconnect", json={})
    assert_error(again, 401)  # its token ended with it: nothing more to announce
    await as_worker(tenant, queue["id"])
    await db.execute(
        "UPDATE workers SET last_heartbeat = now() - interval '10 minutes' "
        "WHERE organization_id = $1 AND status = 'active'",
        tenant.id,
    )
    assert await mark_stale(db) >= 1
    rows = await db.fetch(
        "SELECT payload FROM outbox_events WHERE organization_id = $1 "
        "AND event_type = 'worker.status_changed' ORDER BY id",
        tenant.id,
    )
    data = [row["payload"]["data"] for row in rows]
    changes = [(item["status"], item["previous_status"]) for item in data]
    assert changes == [
        ("registered", None),
        ("disconnected", "active"),
        ("registered", None),
        ("stale", "active"),
    ]
    registered = data[0]
    assert (registered["worker_id"], registered["worker_queue_id"]) == (str(worker_id), queue["id"])
    assert (registered["queue_name"], registered["environment_name"]) == ("q", "life")
    assert data[1]["reason"] == "shutdown"
