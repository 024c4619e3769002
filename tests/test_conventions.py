"""API conventions that hold on every route: the error envelope, auth, rate limits shared across
API processes, Idempotency-Key, request ids and JSON logs, health, metrics and OpenAPI."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.app import all_endpoints, create_app
from controlplane.logs import JsonFormatter
from controlplane.services import free_port
from controlplane.settings import Settings
from controlplane.tenancy import create_key
from tests.conftest import Tenant, assert_error, client_for, make_tenant


@pytest.fixture
async def second_app(settings: Settings) -> AsyncIterator[Starlette]:
    """Another API process's worth of app on the same database."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


async def test_unknown_route_and_method(tenant: Tenant, anonymous: httpx.AsyncClient) -> None:
    assert_error(await anonymous.get("/nowhere"), 404, "RESOURCE_NOT_FOUND")
    assert_error(await tenant.member.get("/api/v1/nowhere"), 404, "RESOURCE_NOT_FOUND")
    response = await tenant.member.put("/api/v1/projects", json={})
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["allow"] and "POST" in response.headers["allow"]
    assert_error(await anonymous.delete("/api/health"), 405, "METHOD_NOT_ALLOWED")


async def test_bad_bodies(tenant: Tenant, db: Any) -> None:
    count = "SELECT count(*) FROM projects WHERE organization_id = $1"
    malformed = await tenant.member.post(
        "/api/v1/projects", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert_error(malformed, 400, "BAD_REQUEST")
    invalid = await tenant.member.post("/api/v1/projects", json={"name": "", "key": 5})
    error = assert_error(invalid, 422, "VALIDATION_ERROR")
    fields = {item["field"] for item in error["details"]["validation_errors"]}
    assert fields == {"name", "key"}
    assert all(
        {"field", "message", "type"} <= set(item) for item in error["details"]["validation_errors"]
    )
    not_an_object = await tenant.member.post("/api/v1/projects", json=["a"])
    assert_error(not_an_object, 422, "VALIDATION_ERROR")
    # The test settings cap bodies at 64 KiB: by declared length, and by what actually arrives.
    big = {"name": "big", "key": "BIG", "description": "x" * 70_000}
    assert_error(await tenant.member.post("/api/v1/projects", json=big), 413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "big", "key": "BIG", "description": "'
        for _ in range(10):
            yield b"x" * 10_000
        yield b'"}'

    streamed = await tenant.member.post("/api/v1/projects", content=chunks())
    assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")
    assert await db.fetchval(count, tenant.id) == 0


async def test_unhandled_error_is_an_envelope_without_internals(
    settings: Settings, db: Any
) -> None:
    app = create_app(settings)

    async def explode(request: Request) -> Response:
        raise RuntimeError("secret internal detail")

    app.router.routes.append(Route("/api/explode", explode))
    async with app.router.lifespan_context(app):
        response = await client_for(app).get("/api/explode")
    error = assert_error(response, 500, "INTERNAL_ERROR")
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text
    assert error["details"]["request_id"] == response.headers["x-request-id"]


async def test_authentication(app: Starlette, tenant: Tenant, anonymous: httpx.AsyncClient) -> None:
    assert_error(await anonymous.get("/api/v1/projects"), 401, "AUTHENTICATION_ERROR")
    bogus = client_for(app, "cpk_not-a-real-key")
    assert_error(await bogus.get("/api/v1/projects"), 401, "AUTHENTICATION_ERROR")
    basic = client_for(app, Authorization="Basic abc")
    assert_error(await basic.get("/api/v1/projects"), 401, "AUTHENTICATION_ERROR")
    userkey = client_for(app, Authorization=f"UserKey {tenant.keys['viewer']}")
    assert (await userkey.get("/api/v1/projects")).status_code == 200
    # Public routes need no key.
    assert (await anonymous.get("/api/health")).status_code == 200


async def test_rate_limit_is_shared_across_api_processes(
    app: Starlette, second_app: Starlette, db: Any
) -> None:
    tenant = await make_tenant(app, db, rate_limit=5)
    first = client_for(app, tenant.keys["member"])
    second = client_for(second_app, tenant.keys["member"])
    remaining = []
    for i in range(5):
        client = first if i % 2 == 0 else second
        response = await client.get("/api/v1/projects")
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-limit"] == "5"
        remaining.append(int(response.headers["x-ratelimit-remaining"]))
    if remaining != [4, 3, 2, 1, 0]:
        # The minute rolled over mid-test; the counts restart, which is also correct.
        pytest.skip(f"window boundary crossed: {remaining}")
    refused = await second.get("/api/v1/projects")
    error = assert_error(refused, 429, "RATE_LIMIT_EXCEEDED")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert int(refused.headers["x-ratelimit-reset"]) > 0
    assert error["details"]["limit"] == 5
    # The limit is per key: another key of the same organization has its own budget.
    other_key = await create_key(db, tenant.id, role="member", name="second")
    assert (await client_for(app, other_key.key).get("/api/v1/projects")).status_code == 200


async def test_idempotent_create(tenant: Tenant, db: Any) -> None:
    key = {"Idempotency-Key": f"create-{uuid.uuid4()}"}
    body = {"name": "Once", "key": "ONCE"}
    first = await tenant.member.post("/api/v1/projects", json=body, headers=key)
    again = await tenant.member.post("/api/v1/projects", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    other = await tenant.member.post(
        "/api/v1/projects", json={"name": "Twice", "key": "TWICE"}, headers=key
    )
    assert_error(other, 409, "RESOURCE_CONFLICT")
    count = "SELECT count(*) FROM projects WHERE organization_id = $1"
    assert await db.fetchval(count, tenant.id) == 1


async def test_idempotent_create_under_concurrency(tenant: Tenant, db: Any) -> None:
    key = {"Idempotency-Key": f"race-{uuid.uuid4()}"}
    body = {"name": "Race", "key": "RACE"}
    responses = await asyncio.gather(
        *(tenant.member.post("/api/v1/projects", json=body, headers=key) for _ in range(8))
    )
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409} and 201 in statuses
    ids = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(ids) == 1
    count = "SELECT count(*) FROM projects WHERE organization_id = $1"
    assert await db.fetchval(count, tenant.id) == 1


async def test_idempotency_keys_are_per_organization(tenant: Tenant, other_tenant: Tenant) -> None:
    key = {"Idempotency-Key": "shared-key"}
    mine = await tenant.member.post("/api/v1/projects", json={"name": "A", "key": "A"}, headers=key)
    theirs = await other_tenant.member.post(
        "/api/v1/projects", json={"name": "B", "key": "B"}, headers=key
    )
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


async def test_request_id_is_echoed_and_logged(tenant: Tenant) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("controlplane.api")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        echoed = await tenant.viewer.get("/api/v1/projects", headers={"X-Request-ID": "req-abc.1"})
        generated = await tenant.viewer.get("/api/v1/projects")
        unsafe = await tenant.viewer.get("/api/v1/projects", headers={"X-Request-ID": "a b;<x>"})
    finally:
        logger.removeHandler(handler)
    assert echoed.headers["x-request-id"] == "req-abc.1"
    assert len(generated.headers["x-request-id"]) == 32
    assert unsafe.headers["x-request-id"] != "a b;<x>"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [line for line in lines if line.get("request_id") == "req-abc.1"]
    assert mine and mine[0]["route"] == "/api/v1/projects" and mine[0]["status"] == 200


async def test_health_ready_and_index(anonymous: httpx.AsyncClient) -> None:
    health = (await anonymous.get("/api/health")).json()
    assert health["status"] == "healthy"
    assert (await anonymous.get("/api/ready")).json()["status"] == "ready"
    detailed = (await anonymous.get("/api/health/detailed")).json()
    assert detailed | {"timestamp": None} == {
        "api": "healthy",
        "database": "healthy",
        "temporal": "healthy",
        "status": "healthy",
        "timestamp": None,
    }
    index = (await anonymous.get("/api")).json()
    assert index["version"] == "0.3.0"
    assert index["endpoints"]["projects"] == "/api/v1/projects"


async def test_not_ready_when_temporal_is_down(settings: Settings) -> None:
    unreachable = dataclasses.replace(settings, temporal_address=f"127.0.0.1:{free_port()}")
    app = create_app(unreachable)
    async with app.router.lifespan_context(app):
        client = client_for(app)
        ready = await client.get("/api/ready")
        detailed = (await client.get("/api/health/detailed")).json()
        metrics = (await client.get("/metrics")).text
        spec = (await client.get("/api/openapi.json")).json()
    error = assert_error(ready, 503, "SERVICE_UNAVAILABLE")
    # Documented, there and on every route (any may find Postgres or Temporal away).
    operations = [op for path in spec["paths"].values() for op in path.values()]
    assert operations and all("503" in op["responses"] for op in operations)
    assert error["details"] == {"database": True, "temporal": False}
    assert detailed["temporal"] == "unhealthy" and detailed["status"] == "degraded"
    assert 'controlplane_temporal_client_errors_total{operation="connect"}' in metrics


async def test_metrics_by_route_template(tenant: Tenant, anonymous: httpx.AsyncClient) -> None:
    await tenant.viewer.get(f"/api/v1/projects/{uuid.uuid4()}")
    text = (await anonymous.get("/metrics")).text
    assert (
        'controlplane_http_requests_total{method="GET",route="/api/v1/projects/{project_id}",'
        'status="404"}' in text
    )
    assert "controlplane_http_request_duration_seconds_bucket" in text
    assert "controlplane_http_requests_in_flight" in text
    assert "controlplane_db_pool_size" in text


async def test_openapi_covers_every_route(anonymous: httpx.AsyncClient) -> None:
    document = (await anonymous.get("/api/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == "0.3.0"
    for endpoint in all_endpoints():
        path = endpoint.path.replace(":path", "")
        assert endpoint.method.lower() in document["paths"][path], endpoint.path
    create = document["paths"]["/api/v1/projects"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ProjectCreate"
    )
    assert "422" in create["responses"] and "429" in create["responses"]


async def test_pagination_bounds(tenant: Tenant) -> None:
    for i in range(3):
        await tenant.member.post("/api/v1/projects", json={"name": f"p{i}", "key": f"P{i}"})
    assert_error(await tenant.viewer.get("/api/v1/projects?limit=0"), 422)
    assert_error(await tenant.viewer.get("/api/v1/projects?limit=1001"), 422)
    assert_error(await tenant.viewer.get("/api/v1/projects?offset=-1"), 422)
    page = (await tenant.viewer.get("/api/v1/projects?limit=2&skip=1")).json()
    assert [p["name"] for p in page["items"]] == ["p1", "p2"]
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 1)
    default = (await tenant.viewer.get("/api/v1/projects")).json()
    assert default["limit"] == 50
