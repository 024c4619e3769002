"""The execution layer as a tenant boundary: one Temporal namespace per organization, JWTs that
Temporal's default authorizer reads as "this namespace only", worker credentials out of reach
of the tools a worker runs, and a rate limit per worker token."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import asyncpg
import jwt
import pytest

from api.app import create_app
from controlplane.devtools.fake_anthropic import (
    AsyncFakeAnthropicClient,
    FakeAnthropicServer,
    text_reply,
    tool_reply,
)
from controlplane.settings import Settings
from tests.conftest import Tenant, as_worker, assert_error, make_tenant, temporal_for
from tests.execution_helpers import events_of, execute, make_queue, started_workflow, wait_status

# --- Temporal's default claim mapper and authorizer, as documented --------------------------
# The claim mapper reads `permissions`: entries "<namespace>:<role>", role one of read, write,
# worker, admin; "system:<role>" applies to every namespace. The authorizer lets an API through
# when the caller's role in that namespace covers the API's class.
ROLES = {"worker": 1, "read": 2, "write": 4, "admin": 8}
# Which roles may call which kind of API (a writer may do what a worker does, and more).
API_CLASS = {
    "PollWorkflowTaskQueue": ROLES["worker"] | ROLES["write"] | ROLES["admin"],
    "RespondActivityTaskCompleted": ROLES["worker"] | ROLES["write"] | ROLES["admin"],
    "DescribeWorkflowExecution": ROLES["read"] | ROLES["write"] | ROLES["admin"],
    "StartWorkflowExecution": ROLES["write"] | ROLES["admin"],
    "RegisterNamespace": ROLES["admin"],
}


def default_authorizer_allows(claims: dict[str, Any], namespace: str, api: str) -> bool:
    held = 0
    for entry in claims.get("permissions", []):
        scope, _, role = str(entry).lower().partition(":")
        if scope in (namespace.lower(), "system"):
            held |= ROLES.get(role, 0)
    if api == "RegisterNamespace":  # a cluster API: only system admins
        return any(str(e).lower() == "system:admin" for e in claims.get("permissions", []))
    return bool(held & API_CLASS[api])


async def verified(tenant: Tenant, token: str) -> dict[str, Any]:
    """Claims of a token whose signature checks out against the published JWKS (PyJWT)."""
    jwks = (await tenant.anonymous().get("/.well-known/jwks.json")).json()
    kid = jwt.get_unverified_header(token)["kid"]
    (key,) = [jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == kid]
    claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=["RS256"])
    return claims


async def worker_config(tenant: Tenant) -> dict[str, Any]:
    queue = await make_queue(tenant, f"e-{uuid.uuid4().hex[:6]}")
    started = await tenant.admin.post(f"/api/v1/worker-queues/{queue['id']}/start", json={})
    assert started.status_code == 200, started.text
    body: dict[str, Any] = started.json()
    return body


async def test_a_workers_jwt_opens_its_organizations_namespace_only(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    mine, theirs = await worker_config(tenant), await worker_config(other_tenant)
    assert mine["temporal_namespace"] != theirs["temporal_namespace"]
    claims = await verified(tenant, mine["temporal_api_key"])
    ns, other_ns = mine["temporal_namespace"], theirs["temporal_namespace"]
    assert default_authorizer_allows(claims, ns, "PollWorkflowTaskQueue")
    assert default_authorizer_allows(claims, ns, "RespondActivityTaskCompleted")
    # Not another organization's namespace; and a worker starts and reads no workflow.
    assert not default_authorizer_allows(claims, other_ns, "PollWorkflowTaskQueue")
    for api in ("StartWorkflowExecution", "DescribeWorkflowExecution", "RegisterNamespace"):
        assert not default_authorizer_allows(claims, ns, api)
    their_claims = await verified(other_tenant, theirs["temporal_api_key"])
    assert not default_authorizer_allows(their_claims, ns, "PollWorkflowTaskQueue")
    # A token altered to name another namespace no longer verifies.
    header, _, signature = mine["temporal_api_key"].split(".")
    forged_claims = {**claims, "permissions": [f"{other_ns}:worker"]}
    forged_payload = jwt.utils.base64url_encode(json.dumps(forged_claims).encode())
    with pytest.raises(jwt.InvalidSignatureError):
        await verified(tenant, f"{header}.{forged_payload.decode()}.{signature}")
    assert claims["exp"] - claims["iat"] <= 3600  # short-lived


async def test_each_organizations_workflows_live_in_its_own_namespace(
    tenant: Tenant, other_tenant: Tenant, temporal_address: str
) -> None:
    queue = await make_queue(tenant, "boundary")  # no worker: the execution stays pending
    agent = await tenant.member.post(
        "/api/v1/agents",
        json={"name": "boundary", "model_id": "anthropic/claude-sonnet-4-5"},
    )
    execution_id = await execute(tenant, agent.json()["id"], queue["id"])
    await started_workflow(tenant, temporal_address, execution_id)
    query = f"WorkflowId = 'agent-execution-{execution_id}'"
    # Organization B has a namespace too, once it uses Temporal (here: a worker starts).
    await worker_config(other_tenant)
    own = await temporal_for(temporal_address, tenant)
    theirs = await temporal_for(temporal_address, other_tenant)
    found = [w.id async for w in own.list_workflows(query)]
    assert found == [f"agent-execution-{execution_id}"]
    assert [w.id async for w in theirs.list_workflows(query)] == []
    # Not even by id: organization B's namespace has no such workflow to describe or signal.
    with pytest.raises(Exception, match="not found"):
        await theirs.get_workflow_handle(f"agent-execution-{execution_id}").describe()
    await tenant.member.delete(f"/api/v1/executions/{execution_id}")


async def test_a_tool_cannot_read_the_workers_credentials(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    db: asyncpg.Pool[Any],
) -> None:
    """The attack of the issue: a shell tool reading its parent's environment. The worker
    (started with its model key in its environment) holds no key there any more."""
    token = uuid.uuid4().hex
    skill = await tenant.admin.post("/api/v1/skills", json={"name": "sh", "type": "shell"})
    agent = await tenant.member.post(
        "/api/v1/agents",
        json={
            "name": f"snoop-{token[:6]}",
            "model_id": "anthropic/claude-sonnet-4-5",
            "system_prompt": f"[{token}]",
            "configuration": {"one_shot": True},
            "skill_ids": [skill.json()["id"]],
        },
    )
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    snoop = "tr '\\0' '\\n' < /proc/$PPID/environ; echo; cat /proc/$PPID/cmdline | tr '\\0' ' '"
    await fake.script(token, [tool_reply("shell", {"command": snoop}), text_reply("Done.")])
    execution_id = await execute(tenant, agent.json()["id"], running_queue["id"])
    final = await wait_status(tenant, execution_id, "completed", "failed", timeout=60)
    assert final["status"] == "completed", final
    events = await events_of(db, execution_id)
    (completed,) = [e for e in events if e["event_type"] == "tool_completed"]
    output = completed["data"]["tool_output"]
    # The tool did read the worker's environment and command line ...
    assert "CONTROLPLANE_URL=" in output and "--api-key-file" in output
    # ... and found no credential in either.
    assert running_queue["worker_key"] not in output
    assert "ANTHROPIC_API_KEY" not in output and "test-key" not in output


async def test_worker_tokens_have_their_own_rate_limit(
    settings: Settings, db: asyncpg.Pool[Any]
) -> None:
    app = create_app(dataclasses.replace(settings, worker_rate_limit_per_minute=3))
    async with app.router.lifespan_context(app):
        tenant = await make_tenant(app, db)
        queue = await make_queue(tenant, "limited")
        worker = await as_worker(tenant, queue["id"], app=app)
        listed = await worker.get(f"/api/v1/workers/{uuid.uuid4()}")  # 403, but counted
        assert listed.status_code == 403
        statuses = []
        for _ in range(3):
            response = await worker.post(f"/api/v1/workers/{uuid.uuid4()}/heartbeat", json={})
            statuses.append(response.status_code)
        assert statuses == [404, 404, 429]
        assert_error(response, 429, "RATE_LIMIT_EXCEEDED")
        assert response.headers["x-ratelimit-limit"] == "3"
        # The limit is the token's: another worker of the same queue is not throttled.
        other = await as_worker(tenant, queue["id"], app=app)
        again = await other.post(f"/api/v1/workers/{uuid.uuid4()}/heartbeat", json={})
        assert again.status_code == 404
