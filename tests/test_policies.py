"""`/api/v1/policies` (reference §3.14, §9): Rego policies evaluated by a real engine (regorus in
process; an OPA REST server in OPA mode), associations, inheritance, and the enforcement check."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import pytest
import regorus  # type: ignore[import-untyped]
from starlette.applications import Starlette

from api.app import create_app
from controlplane.policies import agent_scope, enforce
from controlplane.policy_engine import RegorusEngine, get_engine
from controlplane.services import free_port
from controlplane.settings import Settings
from tests.conftest import Tenant, as_worker, assert_error, client_for
from tests.resource_helpers import (
    MISSING,
    assert_all_not_found,
    assert_validation,
    check_pagination,
    create_environment,
    create_queue,
    ordered_ids,
    rows_of,
)

POLICY_FIELDS = {
    "id",
    "organization_id",
    "name",
    "description",
    "policy_content",
    "policy_type",
    "enabled",
    "tags",
    "metadata",
    "version",
    "created_by",
    "updated_by",
    "created_at",
    "updated_at",
    "association_count",
}

# Kubiya's convention: default deny, allowed when there is no violation.
NO_RM = """package kubiya.tools
import rego.v1

default allow := false

allow if count(violations) == 0

violations contains msg if {
    input.tool.name == "shell"
    contains(input.tool.arguments.command, "rm -rf")
    msg := sprintf("Command '%s' is blocked", [input.tool.arguments.command])
}
"""
# The same package name in another policy: each policy is evaluated on its own.
NO_SLEEP = """package kubiya.tools
import rego.v1

violations contains "sleep is not allowed here" if input.tool.name == "sleep"
"""
# Rego v0, as Kubiya's sample policies are written.
NO_DELETE_V0 = """package kubiya.legacy

default allow = false

violations[msg] {
    input.action == "delete"
    msg := "deletes are not allowed"
}

allow { count(violations) == 0 }
"""
# An `allow` rule without a default: undefined denies.
ADMINS_ONLY = """package kubiya.admins
import rego.v1

allow if "admin" in input.user.roles
"""
# Compiles, but fails at evaluation time when the divisor is 0.
RATIO = """package kubiya.ratio
import rego.v1

allow if 10 / input.tool.arguments.n > 1
"""
NO_DECISION = """package kubiya.helpers
import rego.v1

is_shell if input.tool.name == "shell"
"""
BAD_SYNTAX = """package kubiya.broken
import rego.v1

allow if {
    input.tool.name ==
}
"""
V0_WITHOUT_IF = "package kubiya.bad\nallow {{ "


def shell(command: str) -> dict[str, Any]:
    return {
        "action": "tool_execution",
        "tool": {
            "name": "shell",
            "arguments": {"command": command},
            "source": "builtin",
            "category": "shell",
            "risk_level": "high",
        },
    }


async def create_policy(
    client: httpx.AsyncClient, name: str, content: str, **fields: Any
) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/policies", json={"name": name, "policy_content": content, **fields}
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def attach(
    client: httpx.AsyncClient, policy_id: str, entity_type: str, entity_id: str, **fields: Any
) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/policies/associations",
        json={
            "policy_id": policy_id,
            "entity_type": entity_type,
            "entity_id": entity_id,
            **fields,
        },
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def create_agent(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/agents", json={"name": f"agent-{uuid.uuid4().hex[:6]}", **fields}
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


@dataclasses.dataclass
class Run:
    """A pending execution of an agent (its queue has no worker process) and the worker token
    of a worker started on that queue: what a real worker asks the policy check with."""

    execution_id: str
    queue_id: str
    worker: httpx.AsyncClient

    async def check(self, tool_name: str, **arguments: Any) -> dict[str, Any]:
        r = await self.worker.post(
            "/api/v1/policies/enforce",
            json={
                "execution_id": self.execution_id,
                "tool_name": tool_name,
                "arguments": arguments,
            },
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


async def shell_agent(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    """An agent with a shell tool (from a shell skill the admin wrote)."""
    skill = await tenant.admin.post(
        "/api/v1/skills", json={"name": f"sh-{uuid.uuid4().hex[:6]}", "type": "shell"}
    )
    assert skill.status_code == 201, skill.text
    return await create_agent(tenant.member, skill_ids=[skill.json()["id"]], **fields)


async def start_run(
    tenant: Tenant,
    agent: dict[str, Any],
    *,
    app: Starlette | None = None,
    environment_id: str | None = None,
    runner: httpx.AsyncClient | None = None,
) -> Run:
    if environment_id is None:
        environment_id = (await create_environment(tenant.member, f"e-{uuid.uuid4().hex[:6]}"))[
            "id"
        ]
    queue = await create_queue(tenant.member, environment_id, f"q-{uuid.uuid4().hex[:6]}")
    executed = await (runner or tenant.member).post(
        f"/api/v1/agents/{agent['id']}/execute",
        json={"prompt": "go", "worker_queue_id": queue["id"]},
    )
    assert executed.status_code == 200, executed.text
    worker = await as_worker(tenant, queue["id"], app=app)
    return Run(executed.json()["execution_id"], queue["id"], worker)


# --- CRUD ---------------------------------------------------------------------------------


async def test_create_get_update_delete(tenant: Tenant, db: asyncpg.Pool[Any]) -> None:
    policy = await create_policy(
        tenant.admin,
        "no-rm",
        NO_RM,
        description="Refuse rm -rf",
        tags=["shell", "safety"],
        metadata={"owner": "sec"},
    )
    assert set(policy) == POLICY_FIELDS
    assert policy["organization_id"] == tenant.id
    assert (policy["policy_type"], policy["version"], policy["enabled"]) == ("rego", 1, True)
    assert (policy["tags"], policy["metadata"]) == (["shell", "safety"], {"owner": "sec"})
    assert policy["created_by"] == policy["updated_by"] and policy["created_by"]
    assert policy["association_count"] == 0
    got = await tenant.viewer.get(f"/api/v1/policies/{policy['id']}")
    assert got.status_code == 200 and got.json() == policy

    put = await tenant.admin.put(
        f"/api/v1/policies/{policy['id']}", json={"description": "Still refuses rm -rf"}
    )
    assert put.status_code == 200, put.text
    assert (put.json()["version"], put.json()["description"]) == (2, "Still refuses rm -rf")
    assert put.json()["policy_content"] == NO_RM
    patched = await tenant.admin.patch(
        f"/api/v1/policies/{policy['id']}",
        json={"enabled": False, "policy_content": NO_SLEEP, "description": None},
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["version"], body["enabled"], body["description"]) == (3, False, None)
    assert body["policy_content"] == NO_SLEEP
    assert body["updated_at"] > policy["updated_at"]

    other = await create_policy(tenant.admin, "other", NO_SLEEP)
    taken = await tenant.admin.post(
        "/api/v1/policies", json={"name": "no-rm", "policy_content": NO_RM}
    )
    assert_error(taken, 409, "RESOURCE_CONFLICT")
    renamed = await tenant.admin.patch(f"/api/v1/policies/{other['id']}", json={"name": "no-rm"})
    assert_error(renamed, 409, "RESOURCE_CONFLICT")
    for null_field in ("name", "policy_content", "enabled", "tags"):
        refused = await tenant.admin.patch(
            f"/api/v1/policies/{other['id']}", json={null_field: None}
        )
        assert_error(refused, 422, "VALIDATION_ERROR")
    assert (
        await db.fetchval("SELECT version FROM policies WHERE id = $1", uuid.UUID(other["id"])) == 1
    )

    deleted = await tenant.admin.delete(f"/api/v1/policies/{policy['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": policy["id"], "deleted": True}
    assert_error(await tenant.viewer.get(f"/api/v1/policies/{policy['id']}"), 404)
    assert_error(await tenant.admin.delete(f"/api/v1/policies/{policy['id']}"), 404)


async def test_list_search_enabled_and_pages(tenant: Tenant, db: asyncpg.Pool[Any]) -> None:
    await create_policy(tenant.admin, "alpha", NO_RM, description="shell guard")
    await create_policy(tenant.admin, "beta_100%", NO_SLEEP, enabled=False)
    await create_policy(tenant.admin, "gamma", NO_DELETE_V0)
    expected = await ordered_ids(db, "policies", "organization_id = $1", tenant.id)
    await check_pagination(tenant.viewer, "/api/v1/policies", expected)

    async def names(query: str) -> list[str]:
        r = await tenant.viewer.get(f"/api/v1/policies?{query}")
        assert r.status_code == 200, r.text
        return [item["name"] for item in r.json()["items"]]

    assert await names("enabled=false") == ["beta_100%"]
    assert await names("enabled=true") == ["alpha", "gamma"]
    assert await names("search=SHELL") == ["alpha"]  # description, case-insensitive
    assert await names("search=100%25") == ["beta_100%"]  # % is a literal, not a wildcard
    assert await names("search=e_a") == []  # _ too (as a wildcard it would match "beta")
    page = (await tenant.viewer.get("/api/v1/policies?page=2&limit=2")).json()
    assert [item["id"] for item in page["items"]] == expected[2:]
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 2)
    assert_validation(await tenant.viewer.get("/api/v1/policies?page=0"), "page")
    assert_validation(await tenant.viewer.get("/api/v1/policies?enabled=maybe"), "enabled")


async def test_bad_rego_is_refused_with_the_engines_message(
    tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    policy = await create_policy(tenant.admin, "kept", NO_RM)
    before = await rows_of(db, "policies", tenant.id)
    created = await tenant.admin.post(
        "/api/v1/policies", json={"name": "broken", "policy_content": BAD_SYNTAX}
    )
    error = assert_validation(created, "policy_content")
    assert "expecting expression" in error[0]["message"], error
    envelope = created.json()["error"]
    assert envelope["details"]["errors"] == [error[0]["message"]]
    assert re.match(r"policy\.rego:\d+:\d+: ", envelope["details"]["errors"][0])
    assert "Stack backtrace" not in created.text
    no_package = await tenant.admin.post(
        "/api/v1/policies", json={"name": "nameless", "policy_content": "allow := true"}
    )
    assert "package" in assert_validation(no_package, "policy_content")[0]["message"]
    for sent in ({"name": "x"}, {"policy_content": NO_RM}, {"name": "", "policy_content": NO_RM}):
        assert_error(await tenant.admin.post("/api/v1/policies", json=sent), 422)
    for method in (tenant.admin.put, tenant.admin.patch):
        refused = await method(
            f"/api/v1/policies/{policy['id']}", json={"policy_content": V0_WITHOUT_IF}
        )
        message = assert_validation(refused, "policy_content")[0]["message"]
        assert "policy.rego:2:7" in message, message
    assert await rows_of(db, "policies", tenant.id) == before


async def test_validate(tenant: Tenant) -> None:
    good = await create_policy(tenant.admin, "good", NO_RM)
    r = await tenant.viewer.post(f"/api/v1/policies/{good['id']}/validate")
    assert r.status_code == 200, r.text
    assert r.json() == {"valid": True, "errors": [], "warnings": []}
    legacy = await create_policy(tenant.admin, "legacy", NO_DELETE_V0)
    body = (await tenant.viewer.post(f"/api/v1/policies/{legacy['id']}/validate")).json()
    assert body["valid"] is True and "v0" in body["warnings"][0]
    helpers = await create_policy(tenant.admin, "helpers", NO_DECISION)
    body = (await tenant.viewer.post(f"/api/v1/policies/{helpers['id']}/validate")).json()
    assert body["valid"] is True
    assert body["warnings"] == [
        "The policy defines none of allow, violations or deny: it allows everything"
    ]
    draft = await tenant.viewer.post(
        f"/api/v1/policies/{good['id']}/validate", json={"policy_content": BAD_SYNTAX}
    )
    assert draft.status_code == 200
    assert draft.json()["valid"] is False
    assert "expecting expression" in draft.json()["errors"][0]


async def test_other_tenant_and_roles(tenant: Tenant, other_tenant: Tenant) -> None:
    theirs = await create_policy(other_tenant.admin, "theirs", NO_RM)
    assoc_env = await create_environment(other_tenant.member, "their-env")
    their_assoc = await attach(other_tenant.admin, theirs["id"], "environment", assoc_env["id"])

    await assert_all_not_found(
        lambda ident: tenant.viewer.get(f"/api/v1/policies/{ident}"), theirs["id"]
    )
    await assert_all_not_found(
        lambda ident: tenant.admin.patch(f"/api/v1/policies/{ident}", json={"enabled": False}),
        theirs["id"],
    )
    await assert_all_not_found(
        lambda ident: tenant.admin.put(f"/api/v1/policies/{ident}", json={}), theirs["id"]
    )
    await assert_all_not_found(
        lambda ident: tenant.admin.delete(f"/api/v1/policies/{ident}"), theirs["id"]
    )
    await assert_all_not_found(
        lambda ident: tenant.viewer.post(f"/api/v1/policies/{ident}/validate"), theirs["id"]
    )
    await assert_all_not_found(
        lambda ident: tenant.viewer.get(f"/api/v1/policies/associations/{ident}"),
        their_assoc["id"],
    )
    await assert_all_not_found(
        lambda ident: tenant.admin.patch(
            f"/api/v1/policies/associations/{ident}", json={"priority": 1}
        ),
        their_assoc["id"],
    )
    await assert_all_not_found(
        lambda ident: tenant.admin.delete(f"/api/v1/policies/associations/{ident}"),
        their_assoc["id"],
    )
    # Their policy and their environment cannot be used in my associations or evaluations.
    mine = await create_policy(tenant.admin, "mine", NO_RM)
    r = await tenant.admin.post(
        "/api/v1/policies/associations",
        json={"policy_id": theirs["id"], "entity_type": "role", "entity_id": "ops"},
    )
    assert_error(r, 404, "RESOURCE_NOT_FOUND")
    r = await tenant.admin.post(
        "/api/v1/policies/associations",
        json={"policy_id": mine["id"], "entity_type": "environment", "entity_id": assoc_env["id"]},
    )
    assert_error(r, 404, "RESOURCE_NOT_FOUND")
    await assert_all_not_found(
        lambda ident: tenant.viewer.get(f"/api/v1/policies/resolved/environment/{ident}"),
        assoc_env["id"],
    )
    await assert_all_not_found(
        lambda ident: tenant.viewer.post(
            f"/api/v1/policies/evaluate/environment/{ident}", json={"input_data": {}}
        ),
        assoc_env["id"],
    )
    r = await tenant.viewer.post(
        "/api/v1/policies/evaluate", json={"policy_id": theirs["id"], "input": {}}
    )
    assert_error(r, 404, "RESOURCE_NOT_FOUND")
    listed = (await tenant.viewer.get("/api/v1/policies")).json()
    assert [item["id"] for item in listed["items"]] == [mine["id"]]
    assert (await tenant.viewer.get("/api/v1/policies/associations")).json()["total"] == 0

    # Viewers read and evaluate but do not write.
    for response in (
        await tenant.viewer.post("/api/v1/policies", json={"name": "v", "policy_content": NO_RM}),
        await tenant.viewer.put(f"/api/v1/policies/{mine['id']}", json={}),
        await tenant.viewer.patch(f"/api/v1/policies/{mine['id']}", json={}),
        await tenant.viewer.delete(f"/api/v1/policies/{mine['id']}"),
        await tenant.viewer.post(
            "/api/v1/policies/associations",
            json={"policy_id": mine["id"], "entity_type": "role", "entity_id": "ops"},
        ),
        await tenant.viewer.post(
            "/api/v1/policies/enforce",
            json={"execution_id": MISSING, "tool_name": "shell", "arguments": {}},
        ),
    ):
        assert_error(response, 403, "AUTHORIZATION_ERROR")
    assert (await tenant.viewer.get(f"/api/v1/policies/{mine['id']}")).json()["version"] == 1


# --- Associations and inheritance -------------------------------------------------------


async def test_associations(tenant: Tenant, db: asyncpg.Pool[Any]) -> None:
    policy = await create_policy(tenant.admin, "p", NO_RM)
    env = await create_environment(tenant.member, "prod")
    agent = await create_agent(tenant.member, environment_ids=[env["id"]])
    on_env = await attach(tenant.admin, policy["id"], "environment", env["id"].upper())
    assert on_env["entity_id"] == env["id"]  # stored in canonical form
    on_agent = await tenant.admin.post(
        "/api/v1/policies/associations",
        json={
            "policy_name": "p",
            "entity_type": "agent",
            "entity_id": agent["id"],
            "metadata": {"why": "audit"},
        },
    )
    assert on_agent.status_code == 201, on_agent.text
    on_role = await attach(tenant.admin, policy["id"], "role", "ops", priority=7, enabled=False)
    assert {
        (a["entity_type"], a["priority"], a["enabled"], a["policy_name"])
        for a in (on_env, on_agent.json(), on_role)
    } == {("environment", 300, True, "p"), ("agent", 100, True, "p"), ("role", 7, False, "p")}
    assert on_agent.json()["metadata"] == {"why": "audit"}
    got = await tenant.viewer.get(f"/api/v1/policies/associations/{on_role['id']}")
    assert got.json() == on_role
    assert (await tenant.viewer.get(f"/api/v1/policies/{policy['id']}")).json()[
        "association_count"
    ] == 3

    before = await rows_of(db, "policy_associations", tenant.id)
    dup = await tenant.admin.post(
        "/api/v1/policies/associations",
        json={"policy_id": policy["id"], "entity_type": "role", "entity_id": "ops"},
    )
    assert_error(dup, 409, "RESOURCE_CONFLICT")
    for entity_type in ("agent", "environment", "team"):
        for entity_id in (MISSING, "not-a-uuid"):
            r = await tenant.admin.post(
                "/api/v1/policies/associations",
                json={
                    "policy_id": policy["id"],
                    "entity_type": entity_type,
                    "entity_id": entity_id,
                },
            )
            assert entity_id in assert_error(r, 404, "RESOURCE_NOT_FOUND")["message"]
    missing_policy = await tenant.admin.post(
        "/api/v1/policies/associations",
        json={"policy_name": "nope", "entity_type": "role", "entity_id": "ops"},
    )
    assert_error(missing_policy, 404, "RESOURCE_NOT_FOUND")
    for body in (
        {"entity_type": "role", "entity_id": "ops"},
        {"policy_id": policy["id"], "entity_type": "project", "entity_id": "x"},
        {"policy_id": policy["id"], "entity_type": "role", "entity_id": ""},
        {"policy_id": policy["id"], "entity_type": "role", "entity_id": "x", "priority": "high"},
    ):
        r = await tenant.admin.post("/api/v1/policies/associations", json=body)
        assert_error(r, 422, "VALIDATION_ERROR")
    assert await rows_of(db, "policy_associations", tenant.id) == before

    async def listed(query: str) -> list[str]:
        r = await tenant.viewer.get(f"/api/v1/policies/associations?{query}")
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"items", "total", "limit", "offset"}
        return [item["id"] for item in r.json()["items"]]

    all_ids = [on_env["id"], on_agent.json()["id"], on_role["id"]]
    assert await listed("") == all_ids
    assert await listed("entity_type=agent") == [on_agent.json()["id"]]
    assert await listed(f"entity_id={env['id']}") == [on_env["id"]]
    assert await listed("enabled=false") == [on_role["id"]]
    assert await listed(f"policy_id={policy['id']}&limit=1&offset=1") == [on_agent.json()["id"]]
    assert await listed(f"policy_id={uuid.uuid4()}") == []
    assert_validation(await tenant.viewer.get("/api/v1/policies/associations?policy_id=x"))

    patched = await tenant.admin.patch(
        f"/api/v1/policies/associations/{on_role['id']}",
        json={"enabled": True, "priority": 900, "metadata": {"a": 1}},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["enabled"], patched.json()["priority"]) == (True, 900)
    assert patched.json()["metadata"] == {"a": 1}
    null = await tenant.admin.patch(
        f"/api/v1/policies/associations/{on_role['id']}", json={"priority": None}
    )
    assert_error(null, 422, "VALIDATION_ERROR")
    deleted = await tenant.admin.delete(f"/api/v1/policies/associations/{on_role['id']}")
    assert deleted.json() == {"id": on_role["id"], "deleted": True}
    assert await listed("") == all_ids[:2]
    # Deleting the policy takes its associations with it.
    await tenant.admin.delete(f"/api/v1/policies/{policy['id']}")
    assert await listed("") == []


async def test_resolved_inheritance(tenant: Tenant, other_tenant: Tenant) -> None:
    """Agent-only, environment-only, and both with either side at the higher priority."""
    env_a = await create_environment(tenant.member, "env-a")
    env_b = await create_environment(tenant.member, "env-b")
    agent = await create_agent(tenant.member, environment_ids=[env_a["id"], env_b["id"]])
    bystander = await create_agent(tenant.member)
    p = {}
    for name in ("agent-only", "env-only", "env-wins", "agent-wins", "disabled", "detached"):
        p[name] = (await create_policy(tenant.admin, name, NO_RM))["id"]
    await attach(tenant.admin, p["agent-only"], "agent", agent["id"])
    await attach(tenant.admin, p["env-only"], "environment", env_b["id"], metadata={"m": 1})
    await attach(tenant.admin, p["env-wins"], "agent", agent["id"])
    await attach(tenant.admin, p["env-wins"], "environment", env_a["id"])
    await attach(tenant.admin, p["agent-wins"], "environment", env_a["id"])
    await attach(tenant.admin, p["agent-wins"], "agent", agent["id"], priority=500)
    await attach(tenant.admin, p["disabled"], "agent", agent["id"], priority=50)
    await tenant.admin.patch(f"/api/v1/policies/{p['disabled']}", json={"enabled": False})
    await attach(tenant.admin, p["detached"], "agent", agent["id"], enabled=False)
    await attach(tenant.admin, p["detached"], "agent", bystander["id"])

    r = await tenant.viewer.get(f"/api/v1/policies/resolved/agent/{agent['id']}")
    assert r.status_code == 200, r.text
    table = [
        (item["policy_name"], item["source_type"], item["source_id"], item["priority"])
        for item in r.json()
    ]
    assert table == [
        ("agent-wins", "agent", agent["id"], 500),
        ("env-only", "environment", env_b["id"], 300),
        ("env-wins", "environment", env_a["id"], 300),
        ("agent-only", "agent", agent["id"], 100),
        ("disabled", "agent", agent["id"], 50),
    ]
    assert [item["enabled"] for item in r.json()] == [True, True, True, True, False]
    assert r.json()[1]["metadata"] == {"m": 1}
    assert all(item["policy_details"] is None for item in r.json())

    detailed = await tenant.viewer.get(
        f"/api/v1/policies/resolved/agent/{agent['id']}?include_details=true"
    )
    details = detailed.json()[0]["policy_details"]
    assert (details["id"], details["policy_content"]) == (p["agent-wins"], NO_RM)

    env_only = await tenant.viewer.get(f"/api/v1/policies/resolved/environment/{env_a['id']}")
    assert [(i["policy_name"], i["priority"]) for i in env_only.json()] == [
        ("agent-wins", 300),
        ("env-wins", 300),
    ]
    # An environment the agent leaves stops contributing.
    await tenant.member.patch(f"/api/v1/agents/{agent['id']}", json={"environment_ids": []})
    r = await tenant.viewer.get(f"/api/v1/policies/resolved/agent/{agent['id']}")
    assert [(i["policy_name"], i["source_type"]) for i in r.json()] == [
        ("agent-wins", "agent"),
        ("agent-only", "agent"),
        ("env-wins", "agent"),
        ("disabled", "agent"),
    ]
    role = await tenant.viewer.get("/api/v1/policies/resolved/role/ops")
    assert role.status_code == 200 and role.json() == []
    # No teams resource yet: a team is not found.
    team = await tenant.viewer.get(f"/api/v1/policies/resolved/team/{uuid.uuid4()}")
    assert_error(team, 404, "RESOURCE_NOT_FOUND")
    unknown = await tenant.viewer.get(f"/api/v1/policies/resolved/project/{uuid.uuid4()}")
    assert_error(unknown, 400, "BAD_REQUEST")
    theirs = await create_agent(other_tenant.member)
    await assert_all_not_found(
        lambda ident: tenant.viewer.get(f"/api/v1/policies/resolved/agent/{ident}"), theirs["id"]
    )


# --- Evaluation ---------------------------------------------------------------------------


async def test_evaluate_for_an_entity(tenant: Tenant, other_tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "prod")
    agent = await create_agent(tenant.member, environment_ids=[env["id"]])
    no_rm = await create_policy(tenant.admin, "no-rm", NO_RM)
    no_sleep = await create_policy(tenant.admin, "no-sleep", NO_SLEEP)
    await attach(tenant.admin, no_rm["id"], "agent", agent["id"])
    await attach(tenant.admin, no_sleep["id"], "environment", env["id"])
    path = f"/api/v1/policies/evaluate/agent/{agent['id']}"

    allowed = await tenant.viewer.post(path, json={"input_data": shell("ls -la")})
    assert allowed.status_code == 200, allowed.text
    assert allowed.json() == {
        "allowed": True,
        "violations": [],
        "policy_results": {
            no_rm["id"]: {"policy_name": "no-rm", "allow": True, "violations": [], "error": None},
            no_sleep["id"]: {
                "policy_name": "no-sleep",
                "allow": True,
                "violations": [],
                "error": None,
            },
        },
        "policies_evaluated": 2,
        "engine_error": None,
    }
    denied = (await tenant.viewer.post(path, json={"input_data": shell("rm -rf /")})).json()
    assert denied["allowed"] is False
    assert denied["violations"] == ["Command 'rm -rf /' is blocked"]
    assert denied["policy_results"][no_rm["id"]]["allow"] is False
    assert denied["policy_results"][no_sleep["id"]]["allow"] is True
    sleep = {"tool": {"name": "sleep", "arguments": {}}}
    only_rm = await tenant.viewer.post(
        path, json={"input_data": sleep, "policy_ids": [no_rm["id"]]}
    )
    assert only_rm.json()["allowed"] is True and only_rm.json()["policies_evaluated"] == 1
    both = (await tenant.viewer.post(path, json={"input_data": sleep})).json()
    assert both["violations"] == ["sleep is not allowed here"]

    # A new version of the text is what gets evaluated (the compiled cache is per version).
    await tenant.admin.patch(f"/api/v1/policies/{no_sleep['id']}", json={"policy_content": NO_RM})
    assert (await tenant.viewer.post(path, json={"input_data": sleep})).json()["allowed"] is True
    # A disabled policy is not evaluated.
    await tenant.admin.patch(f"/api/v1/policies/{no_rm['id']}", json={"enabled": False})
    r = (await tenant.viewer.post(path, json={"input_data": shell("rm -rf /")})).json()
    assert (r["allowed"], r["policies_evaluated"]) == (False, 1)
    await tenant.admin.patch(f"/api/v1/policies/{no_sleep['id']}", json={"enabled": False})
    r = (await tenant.viewer.post(path, json={"input_data": shell("rm -rf /")})).json()
    assert (r["allowed"], r["policies_evaluated"], r["policy_results"]) == (True, 0, {})

    stray = await tenant.viewer.post(path, json={"input_data": {}, "policy_ids": [no_rm["id"]]})
    assert_error(stray, 400, "BAD_REQUEST")
    assert_validation(await tenant.viewer.post(path, json={"input_data": "x"}), "input_data")
    theirs = await create_agent(other_tenant.member)
    await assert_all_not_found(
        lambda ident: tenant.viewer.post(
            f"/api/v1/policies/evaluate/agent/{ident}", json={"input_data": {}}
        ),
        theirs["id"],
    )


async def test_undefined_allow_denies_and_v0_policies_run(tenant: Tenant) -> None:
    admins = await create_policy(tenant.admin, "admins", ADMINS_ONLY)
    legacy = await create_policy(tenant.admin, "legacy", NO_DELETE_V0)
    await attach(tenant.admin, admins["id"], "role", "deployer")
    await attach(tenant.admin, legacy["id"], "role", "deployer")
    path = "/api/v1/policies/evaluate/role/deployer"
    nobody = (await tenant.viewer.post(path, json={"input_data": {"action": "read"}})).json()
    assert nobody["allowed"] is False
    assert nobody["violations"] == ["Denied by policy 'admins'"]
    admin = {"action": "read", "user": {"roles": ["admin"]}}
    assert (await tenant.viewer.post(path, json={"input_data": admin})).json()["allowed"] is True
    deleting = {"action": "delete", "user": {"roles": ["admin"]}}
    body = (await tenant.viewer.post(path, json={"input_data": deleting})).json()
    assert body["violations"] == ["deletes are not allowed"]


async def test_check_authorization(tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "prod")
    rule = """package kubiya.deploys
import rego.v1

default allow := false
allow if {
    input.action == "deploy"
    input.resource == "staging"
}
allow if {
    input.action == "deploy"
    "sre" in input.user.groups
}
violations contains "read-only organization" if input.organization.id == "frozen"
"""
    policy = await create_policy(tenant.admin, "deploys", rule)
    await attach(tenant.admin, policy["id"], "environment", env["id"])
    path = f"/api/v1/policies/check-authorization/environment/{env['id']}"
    ok = await tenant.viewer.post(path, json={"action": "deploy", "resource": "staging"})
    assert ok.status_code == 200, ok.text
    assert ok.json() == {
        "authorized": True,
        "violations": [],
        "policies_evaluated": 1,
        "engine_error": None,
    }
    prod = (await tenant.viewer.post(path, json={"action": "deploy", "resource": "prod"})).json()
    assert (prod["authorized"], prod["violations"]) == (False, ["Denied by policy 'deploys'"])
    # `context` keys reach the input's top level (here: the user).
    sre = await tenant.viewer.post(
        path,
        json={"action": "deploy", "resource": "prod", "context": {"user": {"groups": ["sre"]}}},
    )
    assert sre.json()["authorized"] is True
    assert_validation(await tenant.viewer.post(path, json={"resource": "x"}), "action")
    other_env = await create_environment(tenant.member, "dev")
    empty = f"/api/v1/policies/check-authorization/environment/{other_env['id']}"
    none = (await tenant.viewer.post(empty, json={"action": "deploy"})).json()
    assert (none["authorized"], none["policies_evaluated"]) == (True, 0)


async def test_client_aliases(tenant: Tenant) -> None:
    no_rm = await create_policy(tenant.admin, "no-rm", NO_RM)
    no_sleep = await create_policy(tenant.admin, "no-sleep", NO_SLEEP)
    agent = await create_agent(tenant.member)
    await attach(tenant.admin, no_sleep["id"], "agent", agent["id"])
    sleep = {"tool": {"name": "sleep"}}

    by_id = await tenant.viewer.post(
        "/api/v1/policies/evaluate", json={"policy_id": no_rm["id"], "input": shell("rm -rf /x")}
    )
    assert by_id.status_code == 200, by_id.text
    body = by_id.json()
    assert (body["allow"], body["allowed"], body["decision"]) == (False, False, "deny")
    assert body["violations"] == ["Command 'rm -rf /x' is blocked"]
    by_name = await tenant.viewer.post(
        "/api/v1/policies/evaluate", json={"policy_name": "no-rm", "input_data": sleep}
    )
    assert (by_name.json()["decision"], by_name.json()["policies_evaluated"]) == ("permit", 1)
    by_entity = await tenant.viewer.post(
        "/api/v1/policies/evaluate",
        json={"entity_type": "agent", "entity_id": agent["id"], "input": sleep},
    )
    assert by_entity.json()["violations"] == ["sleep is not allowed here"]
    assert list(by_entity.json()["policy_results"]) == [no_sleep["id"]]
    everything = await tenant.viewer.post("/api/v1/policies/evaluate", json={"input": sleep})
    assert everything.json()["policies_evaluated"] == 2
    assert everything.json()["allow"] is False
    half = await tenant.viewer.post(
        "/api/v1/policies/evaluate", json={"entity_type": "agent", "input": {}}
    )
    assert_error(half, 422, "VALIDATION_ERROR")
    missing = await tenant.viewer.post(
        "/api/v1/policies/evaluate", json={"policy_name": "nope", "input": {}}
    )
    assert_error(missing, 404, "RESOURCE_NOT_FOUND")

    authorize = await tenant.viewer.post(
        "/api/v1/policies/authorize",
        json={"action": "tool_execution", "context": {"tool": {"name": "sleep"}}},
    )
    assert authorize.status_code == 200, authorize.text
    assert authorize.json() == {
        "authorized": False,
        "decision": "deny",
        "violations": ["sleep is not allowed here"],
        "policies_evaluated": 2,
        "engine_error": None,
    }
    scoped = await tenant.viewer.post(
        "/api/v1/policies/authorize",
        json={
            "action": "tool_execution",
            "context": shell("rm -rf /"),
            "entity_type": "agent",
            "entity_id": agent["id"],
        },
    )
    assert (scoped.json()["authorized"], scoped.json()["policies_evaluated"]) == (True, 1)
    assert_validation(await tenant.viewer.post("/api/v1/policies/authorize", json={}), "action")


# --- Enforcement --------------------------------------------------------------------------


async def test_enforce_decides_from_the_execution_not_the_worker(
    tenant: Tenant, other_tenant: Tenant, db: asyncpg.Pool[Any]
) -> None:
    env = await create_environment(tenant.member, "prod")
    agent = await shell_agent(tenant, environment_ids=[env["id"]])
    run = await start_run(tenant, agent)
    assert await run.check("shell", command="rm -rf /") == {
        "allowed": True,
        "violations": [],
        "policies_evaluated": 0,
        "engine_error": None,
    }
    no_rm = await create_policy(tenant.admin, "no-rm", NO_RM)
    await attach(tenant.admin, no_rm["id"], "environment", env["id"])
    assert await run.check("shell", command="rm -rf /") == {
        "allowed": False,
        "violations": ["Command 'rm -rf /' is blocked"],
        "policies_evaluated": 1,
        "engine_error": None,
    }
    assert (await run.check("shell", command="ls"))["allowed"] is True
    # A tool the execution was not started with is refused before any policy runs.
    assert await run.check("sleep", seconds=1) == {
        "allowed": False,
        "violations": ["'sleep' is not one of this execution's tools"],
        "policies_evaluated": 0,
        "engine_error": None,
    }
    # Each denial is announced to webhook subscribers, with what was denied and why.
    announced = await db.fetch(
        "SELECT payload FROM outbox_events WHERE organization_id = $1 "
        "AND event_type = 'policy.violation' ORDER BY id",
        tenant.id,
    )
    assert [row["payload"]["data"]["tool_name"] for row in announced] == ["shell", "sleep"]
    first = announced[0]["payload"]["data"]
    assert first["violations"] == ["Command 'rm -rf /' is blocked"]
    assert (first["execution_id"], first["agent_id"]) == (run.execution_id, agent["id"])
    # What the tool is, who runs it and for which agent come from the control plane's rows:
    # the shell skill is `critical`, the run was started with a member key.
    facts = await create_policy(
        tenant.admin,
        "facts",
        """package kubiya.facts
import rego.v1

violations contains sprintf("%s|%s|%s|%s", [input.tool.category, input.tool.risk_level,
    concat(",", input.user.roles), input.execution.agent_id]) if true
""",
    )
    await attach(tenant.admin, facts["id"], "agent", agent["id"])
    seen = await run.check("shell", command="ls")
    assert f"shell|critical|member|{agent['id']}" in seen["violations"]
    await tenant.admin.delete(f"/api/v1/policies/{facts['id']}")

    # The other tenant's policies never apply; its workers cannot ask about this execution;
    # no API key may use the worker protocol.
    their_policy = await create_policy(other_tenant.admin, "deny-all", ADMINS_ONLY)
    their_env = await create_environment(other_tenant.member, "theirs")
    await attach(other_tenant.admin, their_policy["id"], "environment", their_env["id"])
    assert (await run.check("shell", command="ls"))["policies_evaluated"] == 1
    their_run = await start_run(other_tenant, await shell_agent(other_tenant))
    another_queue = await start_run(tenant, agent)
    body = {"execution_id": run.execution_id, "tool_name": "shell", "arguments": {}}
    for stranger in (their_run.worker, another_queue.worker):
        r = await stranger.post("/api/v1/policies/enforce", json=body)
        assert_error(r, 404, "RESOURCE_NOT_FOUND")
    for key in (tenant.admin, tenant.member, tenant.viewer):
        assert_error(await key.post("/api/v1/policies/enforce", json=body), 403)
    assert_validation(
        await run.worker.post("/api/v1/policies/enforce", json={"execution_id": run.execution_id}),
        "tool_name",
    )
    # An execution that ended gets no more answers.
    await db.execute(
        "UPDATE executions SET status = 'completed' WHERE id = $1", uuid.UUID(run.execution_id)
    )
    assert_error(await run.worker.post("/api/v1/policies/enforce", json=body), 404)
    # The worker token reaches only the worker protocol routes.
    assert_error(await run.worker.get("/api/v1/policies"), 403, "AUTHORIZATION_ERROR")


async def test_enforce_applies_every_layer_of_the_run(tenant: Tenant) -> None:
    """The queue's environment, the role of the key that started the run, and the policy ids
    the agent's projects and context list all apply, besides the agent's own layers."""
    agent_env = await create_environment(tenant.member, "agent-env")
    queue_env = await create_environment(tenant.member, "queue-env")
    agent = await shell_agent(tenant, environment_ids=[agent_env["id"]])
    run = await start_run(tenant, agent, environment_id=queue_env["id"])
    assert (await run.check("shell", command="rm -rf /"))["allowed"] is True

    no_rm = await create_policy(tenant.admin, "no-rm", NO_RM)
    await attach(tenant.admin, no_rm["id"], "environment", queue_env["id"])
    denied = await run.check("shell", command="rm -rf /")
    assert (denied["allowed"], denied["policies_evaluated"]) == (False, 1)
    await tenant.admin.delete(f"/api/v1/policies/associations/{(await associations(tenant))[0]}")

    # Role associations: the run was started with a member key.
    await attach(tenant.admin, no_rm["id"], "role", "admin")
    assert (await run.check("shell", command="rm -rf /"))["allowed"] is True
    await attach(tenant.admin, no_rm["id"], "role", "member")
    assert (await run.check("shell", command="rm -rf /"))["allowed"] is False
    admin_run = await start_run(tenant, agent, runner=tenant.admin)
    admin_denied = await admin_run.check("shell", command="rm -rf /")
    assert admin_denied["allowed"] is False  # the admin association applies to it
    for association in await associations(tenant):
        await tenant.admin.delete(f"/api/v1/policies/associations/{association}")
    assert (await run.check("shell", command="rm -rf /"))["allowed"] is True

    # Listed by id: a project of the agent, and the agent's context.
    project = await tenant.member.post(
        "/api/v1/projects", json={"name": "P", "key": "P", "policy_ids": [no_rm["id"]]}
    )
    assert project.status_code == 201, project.text
    joined = await tenant.member.post(
        f"/api/v1/projects/{project.json()['id']}/agents", json={"agent_id": agent["id"]}
    )
    assert joined.status_code == 201, joined.text
    assert (await run.check("shell", command="rm -rf /"))["allowed"] is False
    resolved = (await tenant.viewer.get(f"/api/v1/policies/resolved/agent/{agent['id']}")).json()
    assert [(p["policy_id"], p["source_type"]) for p in resolved] == [(no_rm["id"], "project")]
    await tenant.member.delete(f"/api/v1/projects/{project.json()['id']}")
    assert (await run.check("shell", command="rm -rf /"))["allowed"] is True
    put = await tenant.member.put(
        f"/api/v1/context/agent/{agent['id']}", json={"policy_ids": [no_rm["id"], "not-a-uuid"]}
    )
    assert put.status_code == 200, put.text
    assert (await run.check("shell", command="rm -rf /"))["allowed"] is False
    resolved = (await tenant.viewer.get(f"/api/v1/policies/resolved/agent/{agent['id']}")).json()
    assert [(p["policy_id"], p["source_type"]) for p in resolved] == [(no_rm["id"], "context")]


async def associations(tenant: Tenant) -> list[str]:
    listed = (await tenant.viewer.get("/api/v1/policies/associations?limit=1000")).json()
    return [item["id"] for item in listed["items"]]


async def test_only_admins_write_policies(tenant: Tenant, db: asyncpg.Pool[Any]) -> None:
    policy = await create_policy(tenant.admin, "guard", NO_RM)
    agent = await create_agent(tenant.member)
    association = await attach(tenant.admin, policy["id"], "agent", agent["id"])
    before = [await rows_of(db, t, tenant.id) for t in ("policies", "policy_associations")]
    member = tenant.member
    for response in (
        await member.post("/api/v1/policies", json={"name": "m", "policy_content": NO_RM}),
        await member.put(f"/api/v1/policies/{policy['id']}", json={"enabled": False}),
        await member.patch(f"/api/v1/policies/{policy['id']}", json={"enabled": False}),
        await member.delete(f"/api/v1/policies/{policy['id']}"),
        await member.post(
            "/api/v1/policies/associations",
            json={"policy_id": policy["id"], "entity_type": "role", "entity_id": "member"},
        ),
        await member.patch(
            f"/api/v1/policies/associations/{association['id']}", json={"enabled": False}
        ),
        await member.delete(f"/api/v1/policies/associations/{association['id']}"),
    ):
        assert_error(response, 403, "AUTHORIZATION_ERROR")
    assert [await rows_of(db, t, tenant.id) for t in ("policies", "policy_associations")] == before


async def test_engine_error_fails_closed(
    tenant: Tenant, db: asyncpg.Pool[Any], settings: Settings
) -> None:
    agent = await shell_agent(tenant)
    run = await start_run(tenant, agent)
    ratio = await create_policy(tenant.admin, "ratio", RATIO)
    await attach(tenant.admin, ratio["id"], "agent", agent["id"])

    ok = await run.check("shell", n=2)
    assert ok["allowed"] is True and ok["engine_error"] is None
    failed = await run.check("shell", n=0)
    assert failed["allowed"] is False
    assert "divide by zero" in failed["engine_error"]
    assert failed["violations"] == [f"Policy engine error: {failed['engine_error']}"]
    # The evaluate route reports the same error on the policy, not as its violations.
    divide_by_zero = {"tool": {"arguments": {"n": 0}}}
    evaluated = await tenant.viewer.post(
        f"/api/v1/policies/evaluate/agent/{agent['id']}", json={"input_data": divide_by_zero}
    )
    result = evaluated.json()["policy_results"][ratio["id"]]
    assert result["violations"] == [] and "divide by zero" in result["error"]

    # The Python entry point the execute route uses, with fail-open.
    open_decision = await enforce(
        db,
        get_engine(settings),
        tenant.id,
        input=divide_by_zero,
        scope=await agent_scope(db, tenant.id, agent["id"]),
        fail_open=True,
    )
    assert open_decision.allowed is True and "divide by zero" in (open_decision.engine_error or "")
    assert open_decision.violations == []


@pytest.fixture
async def fail_open_app(settings: Settings) -> AsyncIterator[Starlette]:
    app = create_app(dataclasses.replace(settings, policy_fail_open=True))
    async with app.router.lifespan_context(app):
        yield app


async def test_fail_open_setting(fail_open_app: Starlette, tenant: Tenant) -> None:
    agent = await shell_agent(tenant)
    run = await start_run(tenant, agent, app=fail_open_app)
    ratio = await create_policy(tenant.admin, "ratio", RATIO)
    no_rm = await create_policy(tenant.admin, "no-rm", NO_RM)
    for policy in (ratio, no_rm):
        await attach(tenant.admin, policy["id"], "agent", agent["id"])
    member = client_for(fail_open_app, tenant.keys["member"])
    health = (await member.get("/api/v1/policies/health")).json()
    assert (health["engine"], health["fail_open"], health["status"]) == ("regorus", True, "healthy")
    decision = await run.check("shell", n=0, command="ls")
    assert decision["allowed"] is True
    assert "divide by zero" in decision["engine_error"]
    # Fail-open excuses the engine error, not another policy's deny.
    decision = await run.check("shell", n=0, command="rm -rf /")
    assert decision["allowed"] is False
    assert decision["violations"] == ["Command 'rm -rf /' is blocked"]


async def test_engine_caches_compiled_policies() -> None:
    engine = RegorusEngine()
    from controlplane.policy_engine import PolicySource

    first = PolicySource(id="p", version=1, content=NO_SLEEP, name="p")
    second = PolicySource(id="p", version=2, content=NO_RM, name="p")
    sleep = {"tool": {"name": "sleep"}}
    assert (await engine.evaluate([first], sleep))["p"].allow is False
    compiled = engine.compiled(first)
    assert engine.compiled(first) is compiled
    assert (await engine.evaluate([second], sleep))["p"].allow is True
    await engine.forget("p")
    assert engine.compiled(first) is not compiled


async def test_engine_caches_compiled_policies_by_text() -> None:
    """A text compiles once, whichever policy or version carries it; a new text compiles anew."""
    engine = RegorusEngine()
    from controlplane.policy_engine import PolicySource

    one = PolicySource(id="a", version=1, content=NO_SLEEP, name="a")
    same_text = PolicySource(id="b", version=7, content=NO_SLEEP, name="b")
    edited = PolicySource(id="a", version=2, content=NO_RM, name="a")
    compiled = engine.compiled(one)
    assert engine.compiled(same_text) is compiled
    assert engine.compiled(edited) is not compiled
    # Deleting one of the policies that had a text drops it; it compiles again when used.
    await engine.forget("b")
    assert engine.compiled(one) is not compiled


# --- OPA REST mode --------------------------------------------------------------------------


class OpaStandIn:
    """Stands in for a third-party OPA server (not installable here): the subset of its REST API
    the engine uses — PUT/DELETE /v1/policies/{id}, POST /v1/data/{path}, GET /health — with
    OPA's status codes and bodies. It evaluates with a real Rego engine (regorus, Rego v1 as in
    OPA 1.x), all modules in one namespace, as OPA does."""

    def __init__(self) -> None:
        self.modules: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                stand_in.requests.append(("GET", self.path))
                self._send(200, {})

            def do_PUT(self) -> None:
                stand_in.requests.append(("PUT", self.path))
                module_id = self.path.removeprefix("/v1/policies/")
                text = self._body().decode()
                engine = regorus.Engine()
                try:
                    for other_id, other in stand_in.modules.items():
                        if other_id != module_id:
                            engine.add_policy(other_id, other)
                    engine.add_policy(module_id, text)
                except Exception as exc:
                    message = str(exc).split("\n\nStack backtrace:")[0].strip()
                    found = re.search(r":(\d+):(\d+)", message)
                    row, col = (int(found[1]), int(found[2])) if found else (0, 0)
                    error = {
                        "code": "rego_parse_error",
                        "message": message.splitlines()[-1].removeprefix("error: "),
                        "location": {"file": module_id, "row": row, "col": col},
                    }
                    self._send(
                        400,
                        {
                            "code": "invalid_parameter",
                            "message": "error(s) occurred while compiling module(s)",
                            "errors": [error],
                        },
                    )
                    return
                stand_in.modules[module_id] = text
                self._send(200, {})

            def do_DELETE(self) -> None:
                stand_in.requests.append(("DELETE", self.path))
                stand_in.modules.pop(self.path.removeprefix("/v1/policies/"), None)
                self._send(200, {})

            def do_POST(self) -> None:
                stand_in.requests.append(("POST", self.path))
                path = self.path.removeprefix("/v1/data/").strip("/").replace("/", ".")
                engine = regorus.Engine()
                for module_id, text in stand_in.modules.items():
                    engine.add_policy(module_id, text)
                engine.set_input_json(json.dumps(json.loads(self._body())["input"]))
                try:
                    answer = json.loads(engine.eval_query_as_json(f"data.{path}"))
                except Exception as exc:
                    message = str(exc).split("\n\nStack backtrace:")[0].strip()
                    self._send(500, {"code": "internal_error", "message": message})
                    return
                results = answer.get("result") or []
                value = results[0]["expressions"][0]["value"] if results else None
                packages = {p.removeprefix("data.") for p in engine.get_packages()}
                if not any(p == path or p.startswith(f"{path}.") for p in packages):
                    self._send(200, {})  # an undefined document: no "result"
                    return
                self._send(200, {"result": value})

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OpaStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def opa() -> Iterator[OpaStandIn]:
    with OpaStandIn() as server:
        yield server


@pytest.fixture
async def opa_app(settings: Settings, opa: OpaStandIn) -> AsyncIterator[Starlette]:
    app = create_app(dataclasses.replace(settings, opa_url=opa.url))
    async with app.router.lifespan_context(app):
        yield app


async def test_opa_rest_mode(opa_app: Starlette, opa: OpaStandIn, tenant: Tenant) -> None:
    member = client_for(opa_app, tenant.keys["admin"])
    health = (await member.get("/api/v1/policies/health")).json()
    assert (health["engine"], health["status"], health["opa_url"]) == ("opa", "healthy", opa.url)

    # Validation is OPA's: its compile error comes back as the 422, and nothing stays loaded.
    bad = await member.post("/api/v1/policies", json={"name": "bad", "policy_content": BAD_SYNTAX})
    assert "expecting expression" in assert_validation(bad, "policy_content")[0]["message"]
    assert opa.modules == {}
    no_rm = await create_policy(member, "no-rm", NO_RM)
    no_sleep = await create_policy(member, "no-sleep", NO_SLEEP)  # the same package name
    assert opa.modules == {}
    sleeper = await tenant.admin.post("/api/v1/skills", json={"name": "nap", "type": "sleep"})
    agent = await shell_agent(tenant)
    await tenant.member.patch(
        f"/api/v1/agents/{agent['id']}",
        json={"skill_ids": [*agent["skill_ids"], sleeper.json()["id"]]},
    )
    for policy in (no_rm, no_sleep):
        await attach(member, policy["id"], "agent", agent["id"])
    run = await start_run(tenant, agent, app=opa_app)

    denied = await run.check("shell", command="rm -rf /")
    assert (denied["allowed"], denied["violations"]) == (False, ["Command 'rm -rf /' is blocked"])
    assert denied["policies_evaluated"] == 2
    # Each policy was uploaded under its own package, so the two kubiya.tools did not merge.
    assert len(opa.modules) == 2
    assert all("package kubiya.tools" not in text for text in opa.modules.values())
    assert (await run.check("shell", command="ls"))["allowed"] is True
    assert (await run.check("sleep", seconds=1))["violations"] == ["sleep is not allowed here"]
    # Each policy was uploaded once (per version); validations used scratch modules, removed.
    uploads = [path for method, path in opa.requests if method == "PUT" and "validate" not in path]
    assert sorted(uploads) == sorted(
        f"/v1/policies/controlplane-{p['id']}" for p in (no_rm, no_sleep)
    )


async def test_opa_rest_mode_errors_and_restart(
    opa_app: Starlette, opa: OpaStandIn, tenant: Tenant
) -> None:
    member = client_for(opa_app, tenant.keys["admin"])
    agent = await shell_agent(tenant)
    run = await start_run(tenant, agent, app=opa_app)
    ratio = await create_policy(member, "ratio", RATIO)
    await attach(member, ratio["id"], "agent", agent["id"])

    async def check(n: int) -> dict[str, Any]:
        return await run.check("shell", n=n)

    assert (await check(2))["allowed"] is True
    failed = await check(0)
    assert failed["allowed"] is False and "divide by zero" in failed["engine_error"]
    # OPA restarted and lost its modules: the policy is uploaded again.
    opa.modules.clear()
    assert (await check(2))["allowed"] is True
    assert len(opa.modules) == 1
    # A new version replaces the module.
    await member.patch(f"/api/v1/policies/{ratio['id']}", json={"policy_content": NO_SLEEP})
    assert (await check(0))["allowed"] is True
    assert "package kubiya.ratio" not in next(iter(opa.modules.values()))
    # Deleting the policy unloads it.
    await member.delete(f"/api/v1/policies/{ratio['id']}")
    assert opa.modules == {}
    ratio = await create_policy(member, "ratio-2", RATIO)
    await attach(member, ratio["id"], "agent", agent["id"])
    # OPA unreachable: fail closed, with the reason.
    opa.server.shutdown()
    opa.server.server_close()
    down = await check(2)
    assert down["allowed"] is False and "unreachable" in down["engine_error"]
    health = (await member.get("/api/v1/policies/health")).json()
    assert health["status"] == "unhealthy"
    refused = await member.post("/api/v1/policies", json={"name": "x", "policy_content": NO_RM})
    assert "unreachable" in assert_validation(refused, "policy_content")[0]["message"]
