"""Every route of the app refuses every credential its role does not admit, with 403 and
before it reads anything: viewer, member and admin keys, a worker key and a worker token, each
tried on each route of the route table (so a route added later is covered the day it lands).
The expectations are written out here, not derived from the code that enforces them."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from starlette.applications import Starlette

from api.app import ROUTERS
from api.routing import Endpoint
from tests.conftest import Tenant, as_worker, client_for, worker_key_for
from tests.execution_helpers import make_queue

# Who each declared access admits; everyone else gets 403.
ADMITTED: dict[str, set[str]] = {
    "viewer": {"viewer", "member", "admin"},
    "member": {"member", "admin"},
    "admin": {"admin"},
    "worker_token": {"worker_token"},
    "admin_or_worker_token": {"admin", "worker_token"},
    "starter": {"admin", "worker_key"},
}
CREDENTIALS = ("viewer", "member", "admin", "worker_key", "worker_token")
# Routes the later issues added, which must be in the table this test walks.
EXPECTED_PATHS = (
    "/api/v1/jobs",
    "/api/v1/jobs/{job_id}/trigger",
    "/api/v1/workflows/{workflow_id}/start",
    "/api/v1/tasks/plan/execute",
    "/api/v1/webhooks/{webhook_id}/rotate-secret",
    "/api/v1/runners",
    "/api/v1/teams/{team_id}/execute",
    "/api/v1/executions/{execution_id}/reports",
)


# This round's resources, and what each of their routes should need: reads a viewer key,
# writes a member key, webhook subscriptions (signing secrets) an admin key.
ROUND_PREFIXES = (
    "/api/v1/jobs",
    "/api/v1/workflows",
    "/api/v1/tasks/plan",
    "/api/v1/plans",
    "/api/v1/planning",
    "/api/v1/webhooks",
    "/api/v1/runners",
    "/api/v1/teams",
)


def expected_access(method: str, path: str) -> str | None:
    if path == "/api/v1/jobs/webhook/{webhook_path}":
        return None  # no key: the signature of its body authenticates it
    if method == "GET":
        return "viewer"
    if path.startswith("/api/v1/webhooks"):
        return "admin"
    return "member"


def keyed_endpoints() -> list[Endpoint]:
    return [e for router in ROUTERS for e in router.endpoints if e.role is not None]


def concrete(path: str) -> str:
    """The route's path with every parameter filled by an id nothing has."""
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), path)


@pytest.fixture
async def clients(app: Starlette, tenant: Tenant) -> dict[str, httpx.AsyncClient]:
    queue = await make_queue(tenant, "access")
    return {
        "viewer": tenant.viewer,
        "member": tenant.member,
        "admin": tenant.admin,
        "worker_key": client_for(app, await worker_key_for(tenant, queue["id"])),
        "worker_token": await as_worker(tenant, queue["id"]),
    }


def test_the_route_table_holds_the_routes_of_this_round() -> None:
    declared = {e.path for e in keyed_endpoints()}
    assert len(declared) > 100
    assert set(EXPECTED_PATHS) <= declared
    assert {e.role for e in keyed_endpoints()} <= set(ADMITTED)


def test_this_rounds_routes_need_the_role_their_kind_calls_for() -> None:
    endpoints = [e for r in ROUTERS for e in r.endpoints if e.path.startswith(ROUND_PREFIXES)]
    assert len(endpoints) > 50
    wrong = [
        f"{e.method} {e.path}: {e.role}, not {expected_access(e.method, e.path)}"
        for e in endpoints
        if e.role != expected_access(e.method, e.path)
    ]
    assert wrong == []
    reports = [e for r in ROUTERS for e in r.endpoints if e.path.endswith("/reports")]
    assert [e.role for e in reports] == ["worker_token"]


async def test_every_route_refuses_every_credential_its_role_does_not_admit(
    clients: dict[str, httpx.AsyncClient],
) -> None:
    refused = 0
    for endpoint in keyed_endpoints():
        assert endpoint.role is not None
        path = concrete(endpoint.path)
        for credential in CREDENTIALS:
            if credential in ADMITTED[endpoint.role]:
                continue
            body: dict[str, str] | None = (
                {} if endpoint.method in ("POST", "PUT", "PATCH") else None
            )
            response = await clients[credential].request(endpoint.method, path, json=body)
            where = f"{endpoint.method} {endpoint.path} with a {credential}"
            assert response.status_code == 403, f"{where}: {response.status_code} {response.text}"
            assert response.json()["error"]["code"] == "AUTHORIZATION_ERROR", where
            refused += 1
    # Every keyed route refuses at least the worker key or the worker token.
    assert refused >= len(keyed_endpoints())
