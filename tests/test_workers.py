"""The worker protocol: start, heartbeat, disconnect, and a real worker process serving its
queue's Temporal task queue."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt

from tests.conftest import Tenant, assert_error, client_for, temporal_for, worker_key_for
from workflows.contracts import QUEUE_PROBE_WORKFLOW


async def verified_claims(tenant: Tenant, token: str) -> dict[str, Any]:
    """The token's claims, its signature checked against the published JWKS with PyJWT
    (as Temporal's authorizer checks it: by the key id in the header)."""
    jwks = (await tenant.anonymous().get("/.well-known/jwks.json")).json()
    kid = jwt.get_unverified_header(token)["kid"]
    (public,) = [jwt.PyJWK(key) for key in jwks["keys"] if key["kid"] == kid]
    claims: dict[str, Any] = jwt.decode(token, public.key, algorithms=["RS256"])
    return claims


async def make_queue(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    env = await tenant.member.post(
        "/api/v1/environments", json={"name": f"env-{uuid.uuid4().hex[:6]}"}
    )
    assert env.status_code == 201, env.text
    queue = await tenant.member.post(
        f"/api/v1/environments/{env.json()['id']}/worker-queues", json={"name": "q", **fields}
    )
    assert queue.status_code == 201, queue.text
    body: dict[str, Any] = queue.json()
    return body


async def start(
    tenant: Tenant, queue_id: str, client: httpx.AsyncClient | None = None
) -> httpx.Response:
    return await (client or tenant.admin).post(
        f"/api/v1/worker-queues/{queue_id}/start",
        json={"worker_sdk_version": "0.3.0", "system_info": {"hostname": "box-1"}},
    )


async def test_start_returns_config_and_counts_the_worker(tenant: Tenant) -> None:
    queue = await make_queue(tenant)
    key = client_for(tenant.app, await worker_key_for(tenant, queue["id"]))
    response = await start(tenant, queue["id"], key)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    config = response.json()
    assert config["task_queue_name"] == queue["id"]
    assert config["worker_token"].startswith("worker_")
    assert config["organization_id"] == tenant.id
    assert config["heartbeat_interval"] == 60
    # The organization's own namespace, and a JWT that lets the worker poll only there.
    assert config["temporal_host"] and config["temporal_namespace"] == f"org-{tenant.id}"
    assert config["temporal_tls"] is False and config["temporal_tls_ca"] is None
    claims = await verified_claims(tenant, config["temporal_api_key"])
    assert claims["permissions"] == [f"org-{tenant.id}:worker"]
    assert claims["sub"] == f"worker:{config['worker_id']}"
    got = await tenant.viewer.get(f"/api/v1/worker-queues/{queue['id']}")
    assert got.json()["active_workers"] == 1
    workers = (await tenant.viewer.get(f"/api/v1/worker-queues/{queue['id']}/workers")).json()
    assert workers["total"] == 1
    assert workers["items"][0]["hostname"] == "box-1"
    assert workers["items"][0]["is_active"] is True


async def test_start_refusals(tenant: Tenant, other_tenant: Tenant, db: Any) -> None:
    queue = await make_queue(tenant, max_workers=1)
    other_queue = await make_queue(tenant)
    assert_error(await start(other_tenant, queue["id"]), 404, "RESOURCE_NOT_FOUND")
    assert_error(await start(tenant, str(uuid.uuid4())), 404, "RESOURCE_NOT_FOUND")
    # Only admin keys and worker keys start workers; a worker key only on its own queue.
    for client in (tenant.viewer, tenant.member):
        assert_error(await start(tenant, queue["id"], client), 403, "AUTHORIZATION_ERROR")
    elsewhere = client_for(tenant.app, await worker_key_for(tenant, other_queue["id"]))
    assert_error(await start(tenant, queue["id"], elsewhere), 403, "AUTHORIZATION_ERROR")
    # A worker key opens nothing else, not even reads.
    for path in ("/api/v1/projects", f"/api/v1/worker-queues/{queue['id']}"):
        assert_error(await elsewhere.get(path), 403, "AUTHORIZATION_ERROR")
    bad = await tenant.admin.post(
        f"/api/v1/worker-queues/{queue['id']}/start", json={"system_info": "not an object"}
    )
    assert_error(bad, 422, "VALIDATION_ERROR")
    count = "SELECT count(*) FROM workers WHERE worker_queue_id = $1"
    assert await db.fetchval(count, uuid.UUID(queue["id"])) == 0

    assert (await start(tenant, queue["id"])).status_code == 200
    full = await start(tenant, queue["id"])
    error = assert_error(full, 409, "RESOURCE_CONFLICT")
    assert error["details"] == {"active_workers": 1, "max_workers": 1}
    assert await db.fetchval(count, uuid.UUID(queue["id"])) == 1

    await tenant.member.patch(f"/api/v1/worker-queues/{queue['id']}", json={"status": "inactive"})
    assert_error(await start(tenant, queue["id"]), 400, "BAD_REQUEST")


async def test_heartbeat_and_disconnect_with_the_worker_token(
    app: Any, tenant: Tenant, other_tenant: Tenant
) -> None:
    queue = await make_queue(tenant)
    first = (await start(tenant, queue["id"])).json()
    second = (await start(tenant, queue["id"])).json()
    worker = client_for(app, first["worker_token"])

    beat = await worker.post(
        f"/api/v1/workers/{first['worker_id']}/heartbeat",
        json={"status": "busy", "tasks_processed": 3, "current_task_id": "t-1"},
    )
    assert beat.status_code == 200, beat.text
    assert beat.json()["status"] == "busy"
    assert "temporal_api_key" not in beat.json() or beat.json()["temporal_api_key"] is None
    renewed = await worker.post(
        f"/api/v1/workers/{first['worker_id']}/heartbeat", json={"renew_temporal_token": True}
    )
    claims = await verified_claims(tenant, renewed.json()["temporal_api_key"])
    assert claims["permissions"] == [f"org-{tenant.id}:worker"]
    # A worker token speaks only for its own worker; API keys, of this organization or
    # another, cannot speak the worker protocol at all.
    assert_error(
        await worker.post(f"/api/v1/workers/{second['worker_id']}/heartbeat", json={}), 404
    )
    for key in (tenant.admin, tenant.member, other_tenant.admin):
        assert_error(
            await key.post(f"/api/v1/workers/{first['worker_id']}/heartbeat", json={}), 403
        )
    assert_error(
        await worker.post(f"/api/v1/workers/{first['worker_id']}/heartbeat", json={"status": "x"}),
        422,
    )
    # A worker token opens nothing but the worker protocol.
    assert_error(await worker.get("/api/v1/projects"), 403, "AUTHORIZATION_ERROR")

    gone = await worker.post(
        f"/api/v1/workers/{first['worker_id']}/disconnect", json={"reason": "shutdown"}
    )
    assert gone.status_code == 200
    assert gone.json()["status"] == "disconnected"
    assert_error(
        await worker.post(f"/api/v1/workers/{first['worker_id']}/heartbeat", json={}),
        401,
        "AUTHENTICATION_ERROR",
    )
    listed = (await tenant.viewer.get(f"/api/v1/worker-queues/{queue['id']}/workers")).json()
    states = {w["worker_id"]: (w["status"], w["is_active"]) for w in listed["items"]}
    assert states[first["worker_id"]] == ("disconnected", False)
    assert states[second["worker_id"]] == ("active", True)
    assert (await tenant.viewer.get(f"/api/v1/worker-queues/{queue['id']}")).json()[
        "active_workers"
    ] == 1


async def _wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def test_worker_process_serves_its_queue_and_disconnects_on_sigterm(
    live_api: str, tenant: Tenant, temporal_address: str
) -> None:
    queue = await make_queue(tenant, heartbeat_interval=1)
    key = await worker_key_for(tenant, queue["id"])
    # Given in the environment, the key is handed over and scrubbed (worker/credentials.py).
    env = {**os.environ, "CONTROLPLANE_URL": live_api, "CONTROLPLANE_API_KEY": key}
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "--queue-id", queue["id"]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        async def registered() -> bool:
            got = await tenant.viewer.get(f"/api/v1/worker-queues/{queue['id']}")
            return bool(got.json()["active_workers"] == 1)

        await _wait_for(registered)
        # The process (same pid after it re-ran itself) holds no key in its environment.
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
        assert any(item.startswith(b"CONTROLPLANE_URL=") for item in environ)
        assert not any(key.encode() in item for item in environ)
        client = await temporal_for(temporal_address, tenant)
        result = await client.execute_workflow(
            QUEUE_PROBE_WORKFLOW, "probe", id=f"probe-{uuid.uuid4()}", task_queue=queue["id"]
        )
        assert result == f"probe answered by {queue['id']}"

        async def counted() -> bool:
            listed = await tenant.viewer.get(f"/api/v1/worker-queues/{queue['id']}/workers")
            worker = listed.json()["items"][0]
            return bool(worker["tasks_processed"] >= 1 and worker["status"] == "idle")

        await _wait_for(counted)

        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0

        listed = (await tenant.viewer.get(f"/api/v1/worker-queues/{queue['id']}/workers")).json()
        assert [w["status"] for w in listed["items"]] == ["disconnected"]
        assert listed["items"][0]["worker_metadata"]["disconnect_reason"] == "shutdown"
    finally:
        if process.poll() is None:
            process.kill()
        output = process.stdout.read().decode() if process.stdout else ""
        assert "Traceback" not in output, output
