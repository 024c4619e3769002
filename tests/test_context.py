"""`/api/v1/context` (reference §3.15, §8; DESIGN §3): per-entity context rows, their resolution
along organization → projects → environments → team environments → team → agent, the
environment's own context routes, and the system-prompt section built from a resolution."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from controlplane.context import ContextLayer, ResolvedContext, context_prompt, resolve_context
from controlplane.errors import NotFound, Refused
from tests.conftest import Tenant, assert_error
from tests.resource_helpers import (
    MISSING,
    add_team,
    assert_all_not_found,
    assert_validation,
    create_environment,
    rows_of,
)

CONTEXT_FIELDS = {
    "id",
    "entity_type",
    "entity_id",
    "organization_id",
    "knowledge_uuids",
    "resource_ids",
    "policy_ids",
    "created_at",
    "updated_at",
}
EMPTY: dict[str, list[str]] = {"knowledge_uuids": [], "resource_ids": [], "policy_ids": []}


async def create_agent(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/agents", json={"name": name, **fields})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def create_project(client: httpx.AsyncClient, name: str, key: str) -> dict[str, Any]:
    r = await client.post("/api/v1/projects", json={"name": name, "key": key})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def put(
    client: httpx.AsyncClient, entity_type: str, entity_id: str, **lists: list[str]
) -> dict[str, Any]:
    r = await client.put(f"/api/v1/context/{entity_type}/{entity_id}", json=lists)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def entities(tenant: Tenant) -> dict[str, str]:
    """One entity of each type that exists today (no teams yet)."""
    project = await create_project(tenant.member, "P", "P")
    env = await create_environment(tenant.member, "env")
    agent = await create_agent(tenant.member, "agent")
    return {
        "organization": tenant.id,
        "project": project["id"],
        "environment": env["id"],
        "agent": agent["id"],
    }


def lists(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in EMPTY}


async def test_empty_on_first_read_then_replace_and_reset(
    db: asyncpg.Pool[Any], tenant: Tenant
) -> None:
    for entity_type, entity_id in (await entities(tenant)).items():
        url = f"/api/v1/context/{entity_type}/{entity_id}"
        assert (
            await db.fetchval(
                "SELECT count(*) FROM entity_contexts "
                "WHERE organization_id = $1 AND entity_id = $2",
                tenant.id,
                entity_id,
            )
            == 0
        )
        first = (await tenant.viewer.get(url)).json()
        assert set(first) == CONTEXT_FIELDS
        assert (first["entity_type"], first["entity_id"]) == (entity_type, entity_id)
        assert first["organization_id"] == tenant.id and lists(first) == EMPTY
        # The first read created the row; the next reads return it.
        assert (await tenant.viewer.get(url)).json() == first

        replaced = await put(
            tenant.member,
            entity_type,
            entity_id,
            knowledge_uuids=["k1", "k2", "k1"],
            resource_ids=["r1"],
            policy_ids=["p1"],
        )
        assert replaced["id"] == first["id"]
        assert lists(replaced) == {
            "knowledge_uuids": ["k1", "k2"],
            "resource_ids": ["r1"],
            "policy_ids": ["p1"],
        }
        assert (await tenant.viewer.get(url)).json() == replaced
        # PUT replaces the whole context: lists left out become empty.
        again = await put(tenant.member, entity_type, entity_id, resource_ids=["r2"])
        assert lists(again) == {"knowledge_uuids": [], "resource_ids": ["r2"], "policy_ids": []}

        reset = await tenant.member.delete(url)
        assert reset.status_code == 200, reset.text
        assert reset.json()["deleted"] is True and lists(reset.json()) == EMPTY
        assert reset.json()["id"] == first["id"]
        assert lists((await tenant.viewer.get(url)).json()) == EMPTY
    stored = await db.fetch(
        "SELECT entity_type FROM entity_contexts WHERE organization_id = $1 ORDER BY entity_type",
        tenant.id,
    )
    assert [r["entity_type"] for r in stored] == ["agent", "environment", "organization", "project"]


async def test_delete_before_any_read_answers_the_empty_context(tenant: Tenant) -> None:
    r = await tenant.member.delete(f"/api/v1/context/organization/{tenant.id}")
    assert r.status_code == 200, r.text
    assert lists(r.json()) == EMPTY and r.json()["entity_id"] == tenant.id


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"knowledge_uuids": "k1"}, "knowledge_uuids"),
        ({"resource_ids": [1]}, "resource_ids.0"),
        ({"policy_ids": [""]}, "policy_ids.0"),
        ({"policy_ids": [None]}, "policy_ids.0"),
        ({"knowledge_uuids": ["k"] * 1001}, "knowledge_uuids"),
        (["k1"], "body"),
    ],
)
async def test_put_rejects_bad_input(
    db: asyncpg.Pool[Any], tenant: Tenant, body: Any, field: str
) -> None:
    url = f"/api/v1/context/organization/{tenant.id}"
    await put(tenant.member, "organization", tenant.id, knowledge_uuids=["kept"])
    before = await rows_of(db, "entity_contexts", tenant.id)
    assert_validation(await tenant.member.put(url, json=body), field)
    assert await rows_of(db, "entity_contexts", tenant.id) == before


async def test_bad_entity_type_and_malformed_json(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    for method in ("GET", "PUT", "DELETE"):
        r = await tenant.member.request(method, f"/api/v1/context/widget/{uuid.uuid4()}", json={})
        assert_error(r, 400, "BAD_REQUEST")
    assert_error(await tenant.viewer.get(f"/api/v1/context/resolve/widget/{uuid.uuid4()}"), 400)
    r = await tenant.member.put(f"/api/v1/context/organization/{tenant.id}", content=b"{nope")
    assert_error(r, 400, "BAD_REQUEST")
    assert await rows_of(db, "entity_contexts", tenant.id) == []


async def test_teams_are_not_found_until_they_exist(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    team = str(uuid.uuid4())
    for method in ("GET", "PUT", "DELETE"):
        r = await tenant.member.request(method, f"/api/v1/context/team/{team}", json={})
        assert_error(r, 404, "RESOURCE_NOT_FOUND")
    assert_error(await tenant.viewer.get(f"/api/v1/context/resolve/team/{team}"), 404)
    assert await rows_of(db, "entity_contexts", tenant.id) == []


Request = Callable[[str], Awaitable[httpx.Response]]


def context_requests(client: httpx.AsyncClient, kind: str) -> list[Request]:
    """GET, PUT, DELETE and resolve of an entity's context, by id."""

    async def get(ident: str) -> httpx.Response:
        return await client.get(f"/api/v1/context/{kind}/{ident}")

    async def replace(ident: str) -> httpx.Response:
        return await client.put(f"/api/v1/context/{kind}/{ident}", json={"knowledge_uuids": ["m"]})

    async def reset(ident: str) -> httpx.Response:
        return await client.delete(f"/api/v1/context/{kind}/{ident}")

    async def resolve(ident: str) -> httpx.Response:
        return await client.get(f"/api/v1/context/resolve/{kind}/{ident}")

    return [get, replace, reset, resolve]


async def test_other_tenants_entities_are_not_found(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await entities(other_tenant)
    for entity_type, entity_id in theirs.items():
        await put(other_tenant.member, entity_type, entity_id, knowledge_uuids=["secret"])
    before = await rows_of(db, "entity_contexts", other_tenant.id)
    for entity_type, entity_id in theirs.items():
        extra = (MISSING.replace("0000", "1111"),) if entity_type == "organization" else ()
        for request in context_requests(tenant.admin, entity_type):
            await assert_all_not_found(request, entity_id, extra=extra)

    async def agent_resolved(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"/api/v1/agents/{ident}/context/resolved")

    async def env_context(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"/api/v1/environments/{ident}/context")

    async def env_put(ident: str) -> httpx.Response:
        return await tenant.admin.put(f"/api/v1/environments/{ident}/context", json={})

    async def env_delete(ident: str) -> httpx.Response:
        return await tenant.admin.delete(f"/api/v1/environments/{ident}/context")

    await assert_all_not_found(agent_resolved, theirs["agent"])
    for request in (env_context, env_put, env_delete):
        await assert_all_not_found(request, theirs["environment"])
    assert await rows_of(db, "entity_contexts", other_tenant.id) == before
    assert await rows_of(db, "entity_contexts", tenant.id) == []


async def test_viewer_cannot_write(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    ids = await entities(tenant)
    await put(tenant.member, "agent", ids["agent"], knowledge_uuids=["k"])
    before = await rows_of(db, "entity_contexts", tenant.id)
    for response in [
        await tenant.viewer.put(f"/api/v1/context/agent/{ids['agent']}", json={}),
        await tenant.viewer.delete(f"/api/v1/context/agent/{ids['agent']}"),
        await tenant.viewer.put(f"/api/v1/environments/{ids['environment']}/context", json={}),
        await tenant.viewer.delete(f"/api/v1/environments/{ids['environment']}/context"),
    ]:
        assert_error(response, 403, "AUTHORIZATION_ERROR")
    assert await rows_of(db, "entity_contexts", tenant.id) == before


async def test_environment_context_routes(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "env")
    url = f"/api/v1/environments/{env['id']}/context"
    first = (await tenant.viewer.get(url)).json()
    assert set(first) == {
        "id",
        "environment_id",
        "organization_id",
        "knowledge_uuids",
        "resource_ids",
        "created_at",
        "updated_at",
    }
    assert first["environment_id"] == env["id"]
    assert (first["knowledge_uuids"], first["resource_ids"]) == ([], [])
    await put(tenant.member, "environment", env["id"], policy_ids=["p1"], resource_ids=["old"])
    r = await tenant.member.put(url, json={"knowledge_uuids": ["k1"], "resource_ids": ["r1"]})
    assert r.status_code == 200, r.text
    assert (r.json()["knowledge_uuids"], r.json()["resource_ids"]) == (["k1"], ["r1"])
    # The same row as /context/environment/{id}; the environment route leaves policy ids be.
    general = (await tenant.viewer.get(f"/api/v1/context/environment/{env['id']}")).json()
    assert general["id"] == first["id"]
    assert lists(general) == {
        "knowledge_uuids": ["k1"],
        "resource_ids": ["r1"],
        "policy_ids": ["p1"],
    }
    before = await rows_of(db, "entity_contexts", tenant.id)
    assert_validation(await tenant.member.put(url, json={"resource_ids": "r"}), "resource_ids")
    assert await rows_of(db, "entity_contexts", tenant.id) == before
    reset = await tenant.member.delete(url)
    assert reset.status_code == 200, reset.text
    assert reset.json()["deleted"] is True
    assert (reset.json()["knowledge_uuids"], reset.json()["resource_ids"]) == ([], [])
    general = (await tenant.viewer.get(f"/api/v1/context/environment/{env['id']}")).json()
    assert lists(general) == {"knowledge_uuids": [], "resource_ids": [], "policy_ids": ["p1"]}


def layer_lists(layers: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    return {
        name: (layer["entity_type"], layer["knowledge_uuids"]) for name, layer in layers.items()
    }


async def test_resolve_layers_and_union_order(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    member = tenant.member
    e1 = await create_environment(member, "e1")
    e2 = await create_environment(member, "e2")
    agent = await create_agent(member, "agent", environment_ids=[e1["id"], e2["id"]])
    default = agent["projects"][0]["id"]
    # A second project of the agent's (there is no membership route yet).
    second = await create_project(member, "Second", "SEC")
    await db.execute(
        "INSERT INTO project_agents (id, project_id, agent_id) VALUES ($1, $2, $3)",
        uuid.uuid4(),
        uuid.UUID(second["id"]),
        uuid.UUID(agent["id"]),
    )
    await put(member, "organization", tenant.id, knowledge_uuids=["org-k"], policy_ids=["org-p"])
    await put(member, "project", default, knowledge_uuids=["proj-k", "org-k"])
    await put(member, "project", second["id"], resource_ids=["proj2-r"])
    await put(member, "environment", e1["id"], knowledge_uuids=["env-k"], resource_ids=["env-r"])
    await put(member, "environment", e2["id"], resource_ids=["env-r", "env2-r"])
    await put(
        member,
        "agent",
        agent["id"],
        knowledge_uuids=["agent-k", "env-k"],
        resource_ids=["agent-r"],
        policy_ids=["agent-p", "org-p"],
    )
    rows_before = await rows_of(db, "entity_contexts", tenant.id)

    r = await tenant.viewer.get(f"/api/v1/context/resolve/agent/{agent['id']}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["entity_type"], body["entity_id"]) == ("agent", agent["id"])
    assert (body["project_id"], body["environment_id"], body["team_id"]) == (
        default,
        e1["id"],
        None,
    )
    assert body["project_ids"] == [default, second["id"]]
    assert body["environment_ids"] == [e1["id"], e2["id"]]
    assert body["knowledge_uuids"] == ["org-k", "proj-k", "env-k", "agent-k"]
    assert body["resource_ids"] == ["proj2-r", "env-r", "env2-r", "agent-r"]
    assert body["policy_ids"] == ["org-p", "agent-p"]
    assert list(body["layers"]) == [
        "organization",
        "project_1",
        "project_2",
        "environment_1",
        "environment_2",
        "agent",
    ]
    assert layer_lists(body["layers"]) == {
        "organization": ("organization", ["org-k"]),
        "project_1": ("project", ["proj-k", "org-k"]),
        "project_2": ("project", []),
        "environment_1": ("environment", ["env-k"]),
        "environment_2": ("environment", []),
        "agent": ("agent", ["agent-k", "env-k"]),
    }
    assert body["layers"]["environment_2"]["entity_id"] == e2["id"]
    # The convenience route answers the same; resolving writes nothing.
    same = await tenant.viewer.get(f"/api/v1/agents/{agent['id']}/context/resolved")
    assert same.json() == body
    assert await rows_of(db, "entity_contexts", tenant.id) == rows_before

    # One environment is named `environment`; an agent with no context rows resolves empty.
    lone = await create_agent(member, "lone", environment_ids=[e2["id"]])
    lone_body = (await tenant.viewer.get(f"/api/v1/agents/{lone['id']}/context/resolved")).json()
    assert list(lone_body["layers"]) == ["organization", "project", "environment", "agent"]
    assert lone_body["knowledge_uuids"] == ["org-k", "proj-k"]

    project = (await tenant.viewer.get(f"/api/v1/context/resolve/project/{default}")).json()
    assert list(project["layers"]) == ["organization", "project"]
    assert project["knowledge_uuids"] == ["org-k", "proj-k"]
    assert project["project_id"] == default and project["environment_id"] is None
    env = (await tenant.viewer.get(f"/api/v1/context/resolve/environment/{e2['id']}")).json()
    assert list(env["layers"]) == ["organization", "environment"]
    assert env["resource_ids"] == ["env-r", "env2-r"] and env["environment_id"] == e2["id"]
    org = (await tenant.viewer.get(f"/api/v1/context/resolve/organization/{tenant.id}")).json()
    assert list(org["layers"]) == ["organization"] and org["policy_ids"] == ["org-p"]


async def test_team_layers(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    """With a team (a row of `teams`, which has no routes yet): team environments the agent does
    not have itself, then the team, come between its environments and the agent."""
    member = tenant.member
    own = await create_environment(member, "own")
    team_env = await create_environment(member, "team-env")
    team_id = await add_team(db, tenant.id, "crew", environment_ids=[own["id"], team_env["id"]])
    agent = await create_agent(member, "teamed", environment_ids=[own["id"]])
    await put(member, "environment", own["id"], knowledge_uuids=["own-k"])
    await put(member, "environment", team_env["id"], knowledge_uuids=["team-env-k"])
    await put(member, "agent", agent["id"], knowledge_uuids=["agent-k", "team-k"])
    await db.execute(
        "INSERT INTO entity_contexts (id, organization_id, entity_type, entity_id, "
        "knowledge_uuids) VALUES ($1, $2, 'team', $3, $4)",
        uuid.uuid4(),
        tenant.id,
        str(team_id),
        ["team-k"],
    )
    plain = await resolve_context(db, tenant.id, "agent", agent["id"])
    assert plain.team_id is None and "team" not in plain.layers
    r = await member.patch(f"/api/v1/agents/{agent['id']}", json={"team_id": str(team_id)})
    assert r.status_code == 200, r.text
    resolved = await resolve_context(db, tenant.id, "agent", agent["id"])
    team = await resolve_context(db, tenant.id, "team", str(team_id))
    assert list(resolved.layers) == [
        "organization",
        "project",
        "environment",
        "team_environment_1",
        "team",
        "agent",
    ]
    assert resolved.team_id == str(team_id)
    assert resolved.layers["team_environment_1"].entity_id == team_env["id"]
    assert resolved.knowledge_uuids == ["own-k", "team-env-k", "team-k", "agent-k"]
    assert list(team.layers) == [
        "organization",
        "team_environment_1",
        "team_environment_2",
        "team",
    ]
    assert team.knowledge_uuids == ["own-k", "team-env-k", "team-k"]


async def test_resolve_context_function(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    agent = await create_agent(tenant.member, "a")
    await put(tenant.member, "agent", agent["id"], knowledge_uuids=["k"])
    resolved = await resolve_context(db, tenant.id, "agent", uuid.UUID(agent["id"]))
    assert resolved.knowledge_uuids == ["k"] and resolved.entity_id == agent["id"]
    for entity_type, ident, kind in [
        ("agent", str(uuid.uuid4()), NotFound),
        ("agent", "nope", NotFound),
        ("widget", agent["id"], Refused),
        ("organization", "another-org", NotFound),
    ]:
        with pytest.raises(kind):
            await resolve_context(db, tenant.id, entity_type, ident)


def _layer(entity_type: Any, knowledge: list[str], resources: list[str]) -> ContextLayer:
    return ContextLayer(
        entity_type=entity_type,
        entity_id="x",
        knowledge_uuids=knowledge,
        resource_ids=resources,
        policy_ids=[],
    )


def test_context_prompt() -> None:
    empty = ResolvedContext(
        entity_type="agent",
        entity_id="a",
        organization_id="o",
        project_ids=[],
        environment_ids=[],
        knowledge_uuids=[],
        resource_ids=[],
        policy_ids=["only-a-policy"],
        layers={"organization": _layer("organization", [], [])},
    )
    assert context_prompt(empty) is None
    full = empty.model_copy(
        update={
            "knowledge_uuids": ["kb-1", "kb-2"],
            "resource_ids": ["res-1"],
            "layers": {
                "organization": _layer("organization", ["kb-1"], []),
                "environment": _layer("environment", [], ["res-1"]),
                "agent": _layer("agent", ["kb-2", "kb-1"], []),
            },
        }
    )
    prompt = context_prompt(full)
    assert prompt is not None
    lines = prompt.splitlines()
    assert lines[0] == "## Context"
    assert "- kb-1 (from: organization, agent)" in lines
    assert "- kb-2 (from: agent)" in lines
    assert "- res-1 (from: environment)" in lines
    assert lines.index("Knowledge items:") < lines.index("- kb-1 (from: organization, agent)")
    assert lines.index("Resources:") < lines.index("- res-1 (from: environment)")
    assert "only-a-policy" not in prompt
    resources_only = full.model_copy(update={"knowledge_uuids": []})
    assert "Knowledge items:" not in (context_prompt(resources_only) or "")
