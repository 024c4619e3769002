"""`/api/v1/webhooks`: subscriptions, the secret shown once and stored sealed, the URL guard at
write, roles, tenancy, rotate-secret and the test event against a real receiver."""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette

from api.app import create_app
from controlplane.settings import Settings
from tests.conftest import Tenant, assert_error, make_tenant
from tests.resource_helpers import (
    assert_all_not_found,
    assert_validation,
    check_pagination,
    ordered_ids,
    rows_of,
)
from tests.webhook_helpers import PUBLIC_URL, receiving, verified

TABLES = ("webhooks", "webhook_deliveries", "webhook_delivery_attempts", "outbox_events")
LOOPBACK = ["http://127.0.0.1:9/x", "http://localhost:9/x", "http://[::1]:9/x", "http://10.1.2.3/"]
ALWAYS_REFUSED = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://[fe80::1]/",
    "http://[::ffff:169.254.169.254]/",
]


@pytest.fixture(scope="module")
async def private_app(settings: Settings) -> AsyncIterator[Starlette]:
    """The API as the dev stack runs it: webhooks may go to private and loopback receivers."""
    app = create_app(dataclasses.replace(settings, webhook_allow_private=True))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def dev_tenant(private_app: Starlette, db: asyncpg.Pool[Any]) -> Tenant:
    return await make_tenant(private_app, db)


async def create(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    body = {"url": PUBLIC_URL, "events": ["execution.completed"], **fields}
    response = await tenant.admin.post("/api/v1/webhooks", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def snapshot(db: asyncpg.Pool[Any], org: str) -> list[list[dict[str, Any]]]:
    return [await rows_of(db, table, org) for table in TABLES]


async def test_the_secret_is_shown_once_and_stored_sealed(
    tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    response = await tenant.admin.post(
        "/api/v1/webhooks",
        json={
            "url": PUBLIC_URL,
            "events": ["execution.failed", "execution.completed", "execution.failed"],
            "description": "ops channel",
        },
        headers={"Idempotency-Key": "one-hook"},
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    created = response.json()
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert created["events"] == ["execution.failed", "execution.completed"]
    assert (created["url"], created["status"], created["description"]) == (
        PUBLIC_URL,
        "active",
        "ops channel",
    )
    assert (
        created["delivery_attempts"],
        created["successful_deliveries"],
        created["failed_deliveries"],
        created["last_triggered_at"],
        created["disabled_reason"],
    ) == (0, 0, 0, None, None)
    # Not replayed for the same Idempotency-Key: the secret is handed out once.
    again = await tenant.admin.post(
        "/api/v1/webhooks",
        json={"url": PUBLIC_URL, "events": ["execution.failed", "execution.completed"]},
        headers={"Idempotency-Key": "one-hook"},
    )
    assert_error(again, 409)
    shown = (await tenant.viewer.get(f"/api/v1/webhooks/{created['id']}")).json()
    assert "secret" not in shown and shown["id"] == created["id"]
    listed = (await tenant.viewer.get("/api/v1/webhooks")).json()
    assert listed["items"] and all("secret" not in item for item in listed["items"])
    (row,) = await rows_of(db, "webhooks", tenant.id)
    key = base64.b64decode(secret[6:])
    assert all(
        secret.encode() not in bytes(value) and key not in bytes(value)
        for value in row.values()
        if isinstance(value, bytes)
    )
    assert secret not in repr(row)
    everything = await tenant.admin.post(
        "/api/v1/webhooks", json={"url": PUBLIC_URL, "events": ["error", "*"]}
    )
    assert everything.json()["events"] == ["*"]


async def test_list_get_patch_and_delete(tenant: Tenant, db: asyncpg.Pool[Any]) -> None:
    for n in range(3):
        await create(tenant, description=f"hook {n}")
    expected = await ordered_ids(db, "webhooks", "organization_id = $1", tenant.id)
    await check_pagination(tenant.viewer, "/api/v1/webhooks", expected)
    hook = expected[0]
    changed = await tenant.admin.patch(
        f"/api/v1/webhooks/{hook}",
        json={"events": ["worker.status_changed", "policy.violation"], "description": None},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["events"] == ["worker.status_changed", "policy.violation"]
    assert changed.json()["description"] is None
    disabled = (
        await tenant.admin.patch(f"/api/v1/webhooks/{hook}", json={"status": "disabled"})
    ).json()
    assert disabled["status"] == "disabled" and disabled["disabled_at"]
    assert disabled["disabled_reason"].startswith("disabled by api_key:")
    filtered = (await tenant.viewer.get("/api/v1/webhooks?status=disabled")).json()
    assert [item["id"] for item in filtered["items"]] == [hook]
    enabled = (
        await tenant.admin.patch(f"/api/v1/webhooks/{hook}", json={"status": "active"})
    ).json()
    assert (enabled["status"], enabled["disabled_reason"], enabled["disabled_at"]) == (
        "active",
        None,
        None,
    )
    deleted = await tenant.admin.delete(f"/api/v1/webhooks/{hook}")
    assert deleted.status_code == 200 and deleted.json() == {"id": hook, "deleted": True}
    assert_error(await tenant.viewer.get(f"/api/v1/webhooks/{hook}"), 404, "RESOURCE_NOT_FOUND")


async def test_writes_need_an_admin_key_and_reads_a_viewer_key(
    tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    hook = (await create(tenant))["id"]
    before = await snapshot(db, tenant.id)
    for client in (tenant.member, tenant.viewer):
        writes = [
            client.post("/api/v1/webhooks", json={"url": PUBLIC_URL, "events": ["error"]}),
            client.patch(f"/api/v1/webhooks/{hook}", json={"description": "x"}),
            client.delete(f"/api/v1/webhooks/{hook}"),
            client.post(f"/api/v1/webhooks/{hook}/rotate-secret"),
            client.post(f"/api/v1/webhooks/{hook}/test"),
        ]
        for write in writes:
            assert_error(await write, 403, "AUTHORIZATION_ERROR")
    for path in ("", f"/{hook}", f"/{hook}/deliveries"):
        assert (await tenant.viewer.get(f"/api/v1/webhooks{path}")).status_code == 200
    assert_error(await tenant.anonymous().get("/api/v1/webhooks"), 401)
    assert await snapshot(db, tenant.id) == before


async def test_bad_input_is_refused_and_writes_nothing(
    tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    hook = (await create(tenant))["id"]
    before = await snapshot(db, tenant.id)
    bad_bodies: list[tuple[dict[str, Any], str]] = [
        ({"events": ["error"]}, "url"),
        ({"url": "ftp://93.184.216.34/x", "events": ["error"]}, "url"),
        ({"url": "not a url", "events": ["error"]}, "url"),
        ({"url": "http://", "events": ["error"]}, "url"),
        ({"url": PUBLIC_URL, "events": []}, "events"),
        ({"url": PUBLIC_URL, "events": ["execution.exploded"]}, "events.0"),
        ({"url": PUBLIC_URL}, "events"),
        ({"url": PUBLIC_URL, "events": ["error"], "status": "paused"}, "status"),
        ({"url": PUBLIC_URL, "events": "error"}, "events"),
        ({"url": PUBLIC_URL, "events": ["error"], "description": "x" * 2001}, "description"),
        ({"url": "https://example.com/" + "a" * 2048, "events": ["error"]}, "url"),
    ]
    for body, field in bad_bodies:
        assert_validation(await tenant.admin.post("/api/v1/webhooks", json=body), field)
    # Loopback, private, link-local and metadata receivers are refused at write.
    for url in LOOPBACK + ALWAYS_REFUSED:
        response = await tenant.admin.post("/api/v1/webhooks", json={"url": url, "events": ["*"]})
        errors = assert_validation(response, "url")
        assert "refused" in errors[0]["message"], errors
    refused = await tenant.admin.post(
        "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["*"]}
    )
    assert "CONTROLPLANE_WEBHOOK_ALLOW_PRIVATE" in refused.json()["error"]["message"]
    bad_patches: list[tuple[dict[str, Any], str]] = [
        ({"url": None}, "url"),
        ({"events": None}, "events"),
        ({"status": None}, "status"),
        ({"url": "http://localhost/x"}, "url"),
        ({"events": []}, "events"),
        ({"status": "gone"}, "status"),
    ]
    for body, field in bad_patches:
        response = await tenant.admin.patch(f"/api/v1/webhooks/{hook}", json=body)
        assert_validation(response, field)
    malformed = await tenant.admin.post(
        "/api/v1/webhooks", content=b'{"url": ', headers={"content-type": "application/json"}
    )
    assert_error(malformed, 400, "BAD_REQUEST")
    for query in ("limit=0", "offset=-1", "status=nope", "event_id=x"):
        response = await tenant.viewer.get(f"/api/v1/webhooks/{hook}/deliveries?{query}")
        assert_error(response, 422, "VALIDATION_ERROR")
    assert_error(await tenant.viewer.get("/api/v1/webhooks?status=nope"), 422)
    assert await snapshot(db, tenant.id) == before


async def test_link_local_and_metadata_are_refused_even_where_private_is_allowed(
    dev_tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    before = await snapshot(db, dev_tenant.id)
    for url in ALWAYS_REFUSED:
        response = await dev_tenant.admin.post(
            "/api/v1/webhooks", json={"url": url, "events": ["*"]}
        )
        errors = assert_validation(response, "url")
        assert "never reachable" in errors[0]["message"], errors
    assert await snapshot(db, dev_tenant.id) == before
    for url in LOOPBACK:
        created = await dev_tenant.admin.post(
            "/api/v1/webhooks", json={"url": url, "events": ["*"]}
        )
        assert created.status_code == 201, created.text


async def test_another_organizations_webhook_is_not_found(
    tenant: Tenant, other_tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    theirs = (await create(other_tenant))["id"]
    before = await snapshot(db, other_tenant.id)
    base = "/api/v1/webhooks"

    async def each(request: Any) -> None:
        await assert_all_not_found(request, theirs)

    await each(lambda ident: tenant.viewer.get(f"{base}/{ident}"))
    await each(lambda ident: tenant.viewer.get(f"{base}/{ident}/deliveries"))
    await each(lambda ident: tenant.admin.patch(f"{base}/{ident}", json={"description": "x"}))
    await each(lambda ident: tenant.admin.delete(f"{base}/{ident}"))
    await each(lambda ident: tenant.admin.post(f"{base}/{ident}/rotate-secret"))
    await each(lambda ident: tenant.admin.post(f"{base}/{ident}/test"))
    assert (await tenant.viewer.get(base)).json()["total"] == 0
    assert await snapshot(db, other_tenant.id) == before


async def test_rotate_secret_and_the_test_event(dev_tenant: Tenant, db: asyncpg.Pool[Any]) -> None:
    async with receiving(script=[200, 503]) as receiver:
        created = await create(dev_tenant, url=receiver.url, events=["policy.violation"])
        hook = created["id"]
        sent = await dev_tenant.admin.post(f"/api/v1/webhooks/{hook}/test")
        assert sent.status_code == 200, sent.text
        assert sent.json()["delivered"] is True
        attempt = sent.json()["attempt"]
        assert (attempt["status"], attempt["status_code"], attempt["attempt"]) == (
            "succeeded",
            200,
            1,
        )
        assert attempt["response_excerpt"] == "answer 0: 200"
        assert attempt["event_type"] == "webhook.test" and attempt["next_retry_at"] is None
        (first,) = await receiver.wait_for(1)
        assert (
            first.json["type"] == "webhook.test" and first.json["organization_id"] == dev_tenant.id
        )
        assert first.headers["webhook-id"] == first.json["id"] == attempt["event_id"]
        assert verified(created["secret"], first)

        rotated = await dev_tenant.admin.post(f"/api/v1/webhooks/{hook}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        assert rotated.headers["cache-control"] == "no-store"
        new_secret = rotated.json()["secret"]
        assert new_secret.startswith("whsec_") and new_secret != created["secret"]
        # A failing receiver: reported, logged, not retried, the subscription stays active.
        failed = await dev_tenant.admin.post(f"/api/v1/webhooks/{hook}/test")
        assert failed.json()["delivered"] is False
        assert failed.json()["attempt"]["status_code"] == 503
        second = (await receiver.wait_for(2))[1]
        assert verified(new_secret, second) and not verified(created["secret"], second)

    shown = (await dev_tenant.viewer.get(f"/api/v1/webhooks/{hook}")).json()
    assert shown["status"] == "active"
    assert (shown["delivery_attempts"], shown["successful_deliveries"]) == (2, 1)
    assert shown["failed_deliveries"] == 0  # a test is never given up on
    log = (await dev_tenant.viewer.get(f"/api/v1/webhooks/{hook}/deliveries")).json()
    assert [(a["status"], a["status_code"]) for a in log["items"]] == [
        ("failed", 503),
        ("succeeded", 200),
    ]
    assert log["total"] == 2
    only_failed = await dev_tenant.viewer.get(f"/api/v1/webhooks/{hook}/deliveries?status=failed")
    assert [a["status_code"] for a in only_failed.json()["items"]] == [503]
    # Test events are never fanned out to other subscribers.
    pending = await db.fetchval(
        "SELECT count(*) FROM outbox_events WHERE organization_id = $1 "
        "AND event_type = 'webhook.test' AND dispatched_at IS NULL",
        dev_tenant.id,
    )
    assert pending == 0


async def test_a_test_event_to_an_unreachable_receiver_is_an_error_in_the_log(
    dev_tenant: Tenant,
) -> None:
    hook = (await create(dev_tenant, url="http://127.0.0.1:9/nothing-listens"))["id"]
    sent = (await dev_tenant.admin.post(f"/api/v1/webhooks/{hook}/test")).json()
    assert sent["delivered"] is False
    assert sent["attempt"]["status_code"] is None and sent["attempt"]["error"]
    assert uuid.UUID(sent["attempt"]["event_id"])
