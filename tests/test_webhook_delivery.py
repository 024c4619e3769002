"""Webhook deliveries end to end, on the real system worker: the outbox is fanned out by the
dispatcher, each delivery posted by its workflow to a real receiver on loopback (so these tests
allow private receivers, as the dev stack does), signed per Standard Webhooks and checked here
independently. Retries keep the `webhook-id`; a subscription failing for the whole 24 h window
is disabled (on the time-skipping test server); killing the system worker mid-delivery loses
nothing. Plus the housekeeping round that announces stale workers, and the histories the
replay test (tests/test_system_worker.py) replays."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from controlplane import outbox
from controlplane.services import installed_binary
from controlplane.settings import Settings
from controlplane.system.activities import SystemActivities
from controlplane.system.worker import run
from controlplane.temporal import TemporalGateway
from controlplane.webhooks.dispatch import fan_out
from tests.conftest import Tenant, as_worker, client_for, make_tenant
from tests.execution_helpers import execute, make_agent, make_queue, wait_status
from tests.resource_helpers import add_worker
from tests.webhook_helpers import Receiver, receiving, verified
from workflows.contracts import (
    HOUSEKEEPING_WORKFLOW,
    WEBHOOK_DELIVERY_WORKFLOW,
    WebhookDeliveryInput,
    webhook_delivery_id,
    webhook_dispatcher_id,
)
from workflows.webhooks import WebhookDeliveryWorkflow

HISTORIES = Path(__file__).parent / "histories" / "system"
RECORDED = {
    "webhook_dispatcher",
    "webhook_delivery_delivered",
    "webhook_delivery_retried",
    "webhook_delivery_given_up",
    "housekeeping_round_stale_workers",
}


@pytest.fixture(scope="module")
async def private_app(settings: Settings) -> AsyncIterator[Starlette]:
    app = create_app(dataclasses.replace(settings, webhook_allow_private=True))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def dev_tenant(private_app: Starlette, db: asyncpg.Pool[Any]) -> Tenant:
    return await make_tenant(private_app, db)


def own_settings(settings: Settings) -> Settings:
    """A system worker of this test alone (its own task queue, so its own dispatcher), posting
    to loopback, retrying after 1 s."""
    return dataclasses.replace(
        settings,
        system_task_queue=f"system-test-{uuid.uuid4().hex[:8]}",
        webhook_allow_private=True,
        webhook_first_retry_seconds=1,
    )


@contextlib.asynccontextmanager
async def system_worker(settings: Settings) -> AsyncIterator[Settings]:
    """`controlplane system-worker`'s own `run`, in this process."""
    own = own_settings(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(run(own, stop))
    try:
        yield own
    finally:
        stop.set()
        await task
        client = await system_client(own)
        with contextlib.suppress(Exception):
            await client.get_workflow_handle(
                webhook_dispatcher_id(own.system_task_queue)
            ).terminate()


async def system_client(settings: Settings) -> Client:
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


async def subscribe(admin: httpx.AsyncClient, receiver: Receiver, *events: str) -> dict[str, Any]:
    response = await admin.post(
        "/api/v1/webhooks", json={"url": receiver.url, "events": list(events)}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def delivery_log(tenant: Tenant, hook: str) -> list[dict[str, Any]]:
    response = await tenant.viewer.get(f"/api/v1/webhooks/{hook}/deliveries?limit=1000")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items[::-1]  # oldest first


async def settled_log(
    tenant: Tenant, hook: str, done: int, timeout: float = 30
) -> list[dict[str, Any]]:
    """The log once `done` attempts have finished: the receiver has answered before the
    attempt is recorded, so the test waits for the record, not for time."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        log = await delivery_log(tenant, hook)
        if sum(1 for attempt in log if attempt["status"] != "sending") >= done:
            return log
        assert asyncio.get_running_loop().time() < deadline, log
        await asyncio.sleep(0.05)


async def record(client: Client, workflow_id: str, name: str) -> None:
    """With RECORD_HISTORIES=1, keep the history for tests/test_system_worker.py's replay."""
    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    HISTORIES.mkdir(parents=True, exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())


async def test_a_completed_execution_is_delivered_signed(
    tenant: Tenant,
    settings: Settings,
    running_queue: dict[str, Any],
    private_app: Starlette,
) -> None:
    # The tenant's admin key, on an API that allows loopback receivers (as `make dev` does).
    dev_admin = client_for(private_app, tenant.keys["admin"])
    async with receiving() as receiver, system_worker(settings) as own:
        hook = await subscribe(dev_admin, receiver, "execution.completed")
        agent = await make_agent(tenant, "hooked", one_shot=True)
        execution_id = await execute(tenant, agent, running_queue["id"])
        await wait_status(tenant, execution_id, "completed")
        (received,) = await receiver.wait_for(1)
        assert verified(hook["secret"], received)
        payload = received.json
        assert set(payload) == {"id", "type", "timestamp", "organization_id", "data"}
        assert payload["type"] == "execution.completed"
        assert payload["organization_id"] == tenant.id
        assert received.headers["webhook-id"] == payload["id"]
        assert payload["data"]["execution_id"] == execution_id
        assert payload["data"]["response"] == "Fake reply to: Hi"
        assert received.headers["user-agent"].startswith("controlplane-webhooks/")
        log = await settled_log(tenant, hook["id"], 1)
        assert [(a["status"], a["status_code"], a["event_type"]) for a in log] == [
            ("succeeded", 200, "execution.completed")
        ]
        assert log[0]["event_id"] == payload["id"] and log[0]["duration_ms"] is not None
        assert log[0]["response_excerpt"] == "answer 0: 200"
        shown = (await tenant.viewer.get(f"/api/v1/webhooks/{hook['id']}")).json()
        assert (shown["delivery_attempts"], shown["successful_deliveries"]) == (1, 1)
        assert shown["last_triggered_at"] and shown["last_success_at"]
        client = await system_client(own)
        delivery = webhook_delivery_id(log[0]["delivery_id"])
        await client.get_workflow_handle(delivery).result()
        await record(client, delivery, "webhook_delivery_delivered")
        await record(client, webhook_dispatcher_id(own.system_task_queue), "webhook_dispatcher")


async def test_a_500_is_retried_with_the_same_webhook_id(
    dev_tenant: Tenant, settings: Settings, db: asyncpg.Pool[Any]
) -> None:
    queue = await make_queue(dev_tenant, "hooks")
    async with receiving(script=[500, 200]) as receiver, system_worker(settings) as own:
        hook = await subscribe(dev_tenant.admin, receiver, "worker.status_changed")
        await as_worker(dev_tenant, queue["id"])  # a worker registers: the event
        first, second = await receiver.wait_for(2)
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.body == second.body
        assert verified(hook["secret"], first) and verified(hook["secret"], second)
        assert first.json["type"] == "worker.status_changed"
        assert first.json["data"]["status"] == "registered"
        assert first.json["data"]["worker_queue_id"] == queue["id"]
        log = await settled_log(dev_tenant, hook["id"], 2)
        assert [(a["attempt"], a["status"], a["status_code"]) for a in log] == [
            (1, "failed", 500),
            (2, "succeeded", 200),
        ]
        assert {a["event_id"] for a in log} == {first.headers["webhook-id"]}
        assert log[0]["next_retry_at"] is not None and log[1]["next_retry_at"] is None
        assert log[0]["response_excerpt"] == "answer 0: 500"
        shown = (await dev_tenant.viewer.get(f"/api/v1/webhooks/{hook['id']}")).json()
        assert (shown["delivery_attempts"], shown["successful_deliveries"]) == (2, 1)
        assert (shown["failed_deliveries"], shown["status"]) == (0, "active")
        client = await system_client(own)
        delivery = webhook_delivery_id(log[0]["delivery_id"])
        result = await client.get_workflow_handle(delivery).result()
        assert (result["status"], result["attempts"]) == ("succeeded", 2)
        await record(client, delivery, "webhook_delivery_retried")


async def test_rotating_the_secret_changes_the_signing_key(
    dev_tenant: Tenant, settings: Settings
) -> None:
    queue = await make_queue(dev_tenant, "rotate")
    async with receiving() as receiver, system_worker(settings):
        hook = await subscribe(dev_tenant.admin, receiver, "worker.status_changed")
        await as_worker(dev_tenant, queue["id"])
        (before,) = await receiver.wait_for(1)
        rotated = await dev_tenant.admin.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret")
        new_secret = rotated.json()["secret"]
        await as_worker(dev_tenant, queue["id"])
        after = (await receiver.wait_for(2))[1]
    assert verified(hook["secret"], before) and not verified(new_secret, before)
    assert verified(new_secret, after) and not verified(hook["secret"], after)


async def test_a_subscription_failing_for_24_hours_is_disabled(
    dev_tenant: Tenant, settings: Settings, db: asyncpg.Pool[Any]
) -> None:
    """The real 24 h window and backoff, on the time-skipping test server: every attempt is a
    real POST to a receiver that always answers 500."""
    own = own_settings(settings)
    async with (
        receiving(script=[500] * 1000) as receiver,
        await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=installed_binary("temporal-test-server")
        ) as env,
    ):
        hook = await subscribe(dev_tenant.admin, receiver, "error")
        other = await subscribe(dev_tenant.admin, receiver, "worker.status_changed")
        await outbox.record(db, dev_tenant.id, "error", {"message": "something broke"})
        await fan_out(db)
        delivery_id = await db.fetchval(
            "SELECT id FROM webhook_deliveries WHERE webhook_id = $1", uuid.UUID(hook["id"])
        )
        activities = SystemActivities(db, TemporalGateway(own), own)
        async with Worker(
            env.client,
            task_queue=own.system_task_queue,
            workflows=[WebhookDeliveryWorkflow],
            activities=activities.activities(),
        ):
            workflow_id = webhook_delivery_id(str(delivery_id))
            result = await env.client.execute_workflow(
                WEBHOOK_DELIVERY_WORKFLOW,
                WebhookDeliveryInput(str(delivery_id)),
                id=workflow_id,
                task_queue=own.system_task_queue,
            )
            await record(env.client, workflow_id, "webhook_delivery_given_up")
    assert (result["status"], result["subscription_disabled"]) == ("failed", True)
    attempts = result["attempts"]
    assert attempts > 20  # 5 s, 10 s, ... doubling to an hour apart, for 24 h
    assert len(receiver.received) == attempts
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    shown = (await dev_tenant.viewer.get(f"/api/v1/webhooks/{hook['id']}")).json()
    assert shown["status"] == "disabled"
    assert shown["disabled_reason"].startswith("Every delivery attempt failed for 24 h")
    assert "HTTP 500" in shown["disabled_reason"]
    assert (shown["failed_deliveries"], shown["delivery_attempts"]) == (1, attempts)
    log = await delivery_log(dev_tenant, hook["id"])
    assert len(log) == attempts and {a["status"] for a in log} == {"failed"}
    assert all(a["next_retry_at"] for a in log[:-1]) and log[-1]["next_retry_at"] is None
    # The organization's other subscribers hear of it (`error`); the other one is untouched.
    announced = await db.fetchrow(
        "SELECT payload FROM outbox_events WHERE organization_id = $1 AND event_type = 'error' "
        "AND payload->'data'->>'code' = 'WEBHOOK_DISABLED'",
        dev_tenant.id,
    )
    assert announced is not None and announced["payload"]["data"]["webhook_id"] == hook["id"]
    assert (await dev_tenant.viewer.get(f"/api/v1/webhooks/{other['id']}")).json()[
        "status"
    ] == "active"


def system_worker_process(settings: Settings) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "CONTROLPLANE_SECRET_KEY": settings.secret_key,
        "SYSTEM_TASK_QUEUE": settings.system_task_queue,
        "CONTROLPLANE_WEBHOOK_ALLOW_PRIVATE": "true",
        "CONTROLPLANE_WEBHOOK_FIRST_RETRY_SECONDS": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "controlplane.cli", "system-worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_killing_the_system_worker_mid_delivery_loses_nothing(
    dev_tenant: Tenant, settings: Settings
) -> None:
    own = own_settings(settings)
    queue = await make_queue(dev_tenant, "crash")
    # The receiver holds the first request: the system worker dies while it is in flight.
    async with receiving(hold={0}) as receiver:
        hook = await subscribe(dev_tenant.admin, receiver, "worker.status_changed")
        first = system_worker_process(own)
        second: subprocess.Popen[bytes] | None = None
        try:
            await as_worker(dev_tenant, queue["id"])
            (in_flight,) = await receiver.wait_for(1)
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 10)
            # An event while no system worker runs waits in the outbox.
            await as_worker(dev_tenant, queue["id"])
            second = system_worker_process(own)
            received = await receiver.wait_for(3, timeout=90)
            ids = [r.headers["webhook-id"] for r in received]
            assert ids.count(in_flight.headers["webhook-id"]) == 2 and len(set(ids)) == 2
            log = await settled_log(dev_tenant, hook["id"], 3)
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    await asyncio.to_thread(process.wait, 30)
            client = await system_client(own)
            with contextlib.suppress(Exception):
                await client.get_workflow_handle(
                    webhook_dispatcher_id(own.system_task_queue)
                ).terminate()
    by_event: dict[str, list[tuple[int, str]]] = {}
    for attempt in log:
        by_event.setdefault(attempt["event_id"], []).append((attempt["attempt"], attempt["status"]))
    assert by_event[in_flight.headers["webhook-id"]] == [(1, "interrupted"), (2, "succeeded")]
    assert sorted(by_event.values()) == [
        [(1, "interrupted"), (2, "succeeded")],
        [(1, "succeeded")],
    ]


async def test_a_housekeeping_round_announces_stale_workers(
    dev_tenant: Tenant, settings: Settings, db: asyncpg.Pool[Any]
) -> None:
    queue = await make_queue(dev_tenant, "stale")
    stale = await add_worker(db, dev_tenant.id, queue["id"], age_seconds=400)
    fresh = await add_worker(db, dev_tenant.id, queue["id"])
    async with receiving() as receiver, system_worker(settings) as own:
        hook = await subscribe(dev_tenant.admin, receiver, "worker.status_changed")
        client = await system_client(own)
        round_id = f"housekeeping-test-{uuid.uuid4().hex[:6]}"
        result = await client.execute_workflow(
            HOUSEKEEPING_WORKFLOW, id=round_id, task_queue=own.system_task_queue
        )
        assert result["stale_workers"] >= 1
        (received,) = await receiver.wait_for(1)
        await record(client, round_id, "housekeeping_round_stale_workers")
    assert verified(hook["secret"], received)
    data = received.json["data"]
    assert (data["worker_id"], data["status"], data["previous_status"]) == (
        str(stale),
        "stale",
        "active",
    )
    statuses = {
        row["id"]: row["status"]
        for row in await db.fetch(
            "SELECT id, status FROM workers WHERE id = ANY($1::uuid[])", [stale, fresh]
        )
    }
    assert statuses == {stale: "offline", fresh: "active"}


def test_webhook_histories_were_recorded() -> None:
    assert {path.stem for path in HISTORIES.glob("*.json")} >= RECORDED
