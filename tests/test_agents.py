"""`/api/v1/agents` CRUD (reference §3.2)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Tenant, assert_error
from tests.resource_helpers import (
    add_team,
    assert_all_not_found,
    assert_validation,
    check_pagination,
    create_environment,
    ordered_ids,
    rows_of,
)

AGENT_FIELDS = {
    "id",
    "organization_id",
    "name",
    "description",
    "system_prompt",
    "status",
    "capabilities",
    "configuration",
    "model_id",
    "llm_config",
    "runtime",
    "runner_name",
    "team_id",
    "created_at",
    "updated_at",
    "last_active_at",
    "state",
    "error_message",
    "projects",
    "environments",
    "environment_ids",
    "skill_ids",
    "skills",
    "skill_configurations",
    "execution_environment",
}
SONNET = "anthropic/claude-sonnet-4-5"


async def create(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/agents", json={"name": name, **fields})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def add_model(client: httpx.AsyncClient, value: str, provider: str, **fields: Any) -> None:
    r = await client.post(
        "/api/v1/models", json={"value": value, "label": value, "provider": provider, **fields}
    )
    assert r.status_code == 201, r.text


async def memberships(db: asyncpg.Pool[Any], org: str) -> list[dict[str, Any]]:
    records = await db.fetch(
        "SELECT pa.* FROM project_agents pa JOIN projects p ON p.id = pa.project_id "
        "WHERE p.organization_id = $1 ORDER BY pa.id",
        org,
    )
    return [dict(record) for record in records]


async def snapshot(db: asyncpg.Pool[Any], org: str) -> list[Any]:
    return [
        await rows_of(db, "agents", org),
        await rows_of(db, "projects", org),
        await memberships(db, org),
    ]


async def test_create_with_defaults(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    agent = await create(tenant.member, "helper")
    assert set(agent) == AGENT_FIELDS
    assert agent["organization_id"] == tenant.id
    assert (agent["status"], agent["runtime"], agent["model_id"]) == ("idle", "default", SONNET)
    assert agent["configuration"] == {"one_shot": False}
    assert agent["system_prompt"] is None
    assert agent["capabilities"] == [] and agent["llm_config"] == {} and agent["state"] == {}
    assert (agent["environments"], agent["environment_ids"]) == ([], [])
    assert (agent["skills"], agent["skill_ids"], agent["skill_configurations"]) == ([], [], {})
    assert agent["execution_environment"] == {}
    assert (agent["team_id"], agent["runner_name"], agent["last_active_at"]) == (None, None, None)
    default = (await tenant.viewer.get("/api/v1/projects/default")).json()
    assert agent["projects"] == [{"id": default["id"], "name": "Default"}]
    assert default["agent_count"] == 1
    r = await tenant.viewer.get(f"/api/v1/agents/{agent['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == agent
    created_by = await db.fetchval(
        "SELECT created_by FROM agents WHERE id = $1", uuid.UUID(agent["id"])
    )
    assert created_by.startswith("api_key:")


async def test_create_with_everything(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    prod = await create_environment(tenant.member, "prod")
    dev = await create_environment(tenant.member, "dev")
    team_id, skill_id = str(await add_team(db, tenant.id, "crew")), str(uuid.uuid4())
    agent = await create(
        tenant.member,
        "coder",
        description="Writes code",
        system_prompt="You write code.",
        capabilities=["code", "review"],
        configuration={"one_shot": True, "timeout": 60, "custom": {"x": 1}},
        model="anthropic/claude-opus-4-5",
        llm_config={"temperature": 0.2},
        runtime="claude_code",
        runner_name="runner-1",
        team_id=team_id,
        environment_ids=[dev["id"], prod["id"], dev["id"]],
        skill_ids=[skill_id],
        skill_configurations={skill_id: {"allowed": ["ls"]}},
        execution_environment={"env_vars": {"A": "1"}, "secrets": ["token"]},
    )
    assert agent["model_id"] == "anthropic/claude-opus-4-5"  # given as `model`
    assert agent["runtime"] == "claude_code"
    assert agent["system_prompt"] == "You write code."
    assert agent["configuration"] == {
        "one_shot": True,
        "timeout": 60,
        "custom": {"x": 1},
        "system_prompt": "You write code.",
    }
    assert agent["environment_ids"] == [dev["id"], prod["id"]]
    assert agent["environments"] == [
        {"id": dev["id"], "name": "dev"},
        {"id": prod["id"], "name": "prod"},
    ]
    assert (agent["team_id"], agent["runner_name"]) == (team_id, "runner-1")
    assert agent["skill_ids"] == [skill_id]
    assert agent["skill_configurations"] == {skill_id: {"allowed": ["ls"]}}
    assert agent["execution_environment"] == {
        "env_vars": {"A": "1"},
        "secrets": ["token"],
        "integration_ids": [],
        "mcp_servers": {},
    }
    stored = await db.fetchrow(
        "SELECT configuration, llm_config FROM agents WHERE id = $1", uuid.UUID(agent["id"])
    )
    assert stored is not None
    assert stored["configuration"]["system_prompt"] == "You write code."
    assert stored["llm_config"] == {"temperature": 0.2}


async def test_system_prompt_and_model_forms(tenant: Tenant) -> None:
    inside = await create(tenant.member, "a", configuration={"system_prompt": "Inside."})
    assert inside["system_prompt"] == "Inside."
    both = await create(
        tenant.member, "b", system_prompt="Top.", configuration={"system_prompt": "Inside."}
    )
    assert both["system_prompt"] == both["configuration"]["system_prompt"] == "Top."
    model = (await tenant.viewer.get("/api/v1/models/anthropic/claude-haiku-4-5")).json()
    by_id = await create(tenant.member, "c", model_id=model["id"])
    assert by_id["model_id"] == "anthropic/claude-haiku-4-5"  # stored as the value
    kubiya = await create(tenant.member, "d", model_id="kubiya/claude-sonnet-4")
    assert kubiya["model_id"] == "anthropic/claude-sonnet-4"
    # The organization's own recommended model becomes its default.
    await add_model(tenant.member, "anthropic/claude-house", "anthropic", recommended=True)
    assert (await create(tenant.member, "e"))["model_id"] == "anthropic/claude-house"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "a", "runtime": "agno"}, "runtime"),
        ({"name": "a", "model_id": ""}, "model_id"),
        ({"name": "a", "environment_ids": ["not-a-uuid"]}, "environment_ids.0"),
        ({"name": "a", "configuration": {"one_shot": "maybe"}}, "configuration.one_shot"),
        ({"name": "a", "configuration": {"timeout": 0}}, "configuration.timeout"),
        ({"name": "a", "capabilities": "code"}, "capabilities"),
        ({"name": "a", "team_id": "team"}, "team_id"),
        (
            {"name": "a", "execution_environment": {"env_vars": []}},
            "execution_environment.env_vars",
        ),
        ({"name": "a", "status": "running", "llm_config": []}, "llm_config"),
        (["a"], "body"),
    ],
)
async def test_create_rejects_bad_input(
    db: asyncpg.Pool[Any], tenant: Tenant, body: Any, field: str
) -> None:
    assert_validation(await tenant.member.post("/api/v1/agents", json=body), field)
    assert await snapshot(db, tenant.id) == [[], [], []]


async def test_invalid_runtime_and_model_list_every_problem(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    await add_model(tenant.member, "openai/gpt-4o", "openai")
    theirs = await create_environment(other_tenant.member, "theirs")
    missing = str(uuid.uuid4())
    mine = await create_environment(tenant.member, "mine")
    before = await snapshot(db, tenant.id)
    r = await tenant.member.post(
        "/api/v1/agents",
        json={
            "name": "bad",
            "runtime": "claude_code",
            "model_id": "openai/gpt-4o",
            "environment_ids": [mine["id"], theirs["id"], missing],
        },
    )
    error = assert_error(r, 400, "BAD_REQUEST")
    errors = error["details"]["errors"]
    assert len(errors) == 4, errors
    assert any("provider 'anthropic'" in e for e in errors)
    assert any("Claude model" in e for e in errors)
    assert f"Environment '{theirs['id']}' not found" in errors
    assert f"Environment '{missing}' not found" in errors
    assert error["details"]["missing_environment_ids"] == [theirs["id"], missing]

    for body in [
        {"name": "bad", "model_id": "anthropic/claude-nope"},
        {"name": "bad", "model_id": "openai/gpt-4o", "runtime": "claude_code"},
        {"name": "bad", "environment_ids": [theirs["id"]]},
    ]:
        error = assert_error(await tenant.member.post("/api/v1/agents", json=body), 400)
        assert error["details"]["errors"], error
    assert await snapshot(db, tenant.id) == before
    # The default runtime runs any model in the catalogue.
    assert (await create(tenant.member, "ok", model_id="openai/gpt-4o"))["runtime"] == "default"


async def test_team_must_be_the_organizations(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs, missing = await add_team(db, other_tenant.id, "crew"), uuid.uuid4()
    agent = await create(tenant.member, "a")
    before = await snapshot(db, tenant.id)
    for team_id in (theirs, missing):
        for request in (
            tenant.member.post("/api/v1/agents", json={"name": "b", "team_id": str(team_id)}),
            tenant.member.patch(f"/api/v1/agents/{agent['id']}", json={"team_id": str(team_id)}),
        ):
            error = assert_error(await request, 400, "BAD_REQUEST")
            assert error["details"]["errors"] == [f"Team '{team_id}' not found"]
    assert await snapshot(db, tenant.id) == before
    # Deleting the team leaves its agents without one.
    mine = await add_team(db, tenant.id, "crew")
    r = await tenant.member.patch(f"/api/v1/agents/{agent['id']}", json={"team_id": str(mine)})
    assert r.json()["team_id"] == str(mine)
    await db.execute("DELETE FROM teams WHERE id = $1", mine)
    assert (await tenant.viewer.get(f"/api/v1/agents/{agent['id']}")).json()["team_id"] is None


async def test_name_is_unique_per_org(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    await create(tenant.member, "twin")
    before = await snapshot(db, tenant.id)
    assert_error(
        await tenant.member.post("/api/v1/agents", json={"name": "twin"}), 409, "RESOURCE_CONFLICT"
    )
    assert await snapshot(db, tenant.id) == before
    await create(other_tenant.member, "twin")


async def test_joins_an_existing_default_project(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    r = await tenant.member.post("/api/v1/projects", json={"name": "Default", "key": "MAIN"})
    assert r.status_code == 201, r.text
    existing = r.json()
    agent = await create(tenant.member, "joins")
    assert agent["projects"] == [{"id": existing["id"], "name": "Default"}]
    assert len(await rows_of(db, "projects", tenant.id)) == 1


async def test_list_paginates_and_filters(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    for name in ["one", "two", "three"]:
        await create(tenant.member, name)
    await create(other_tenant.member, "foreign")
    expected = await ordered_ids(db, "agents", "organization_id = $1", tenant.id)
    await check_pagination(tenant.viewer, "/api/v1/agents", expected)
    page = (await tenant.viewer.get("/api/v1/agents")).json()
    assert [a["name"] for a in page["items"]] == ["one", "two", "three"]
    assert all(a["projects"][0]["name"] == "Default" for a in page["items"])
    r = await tenant.member.patch(f"/api/v1/agents/{expected[1]}", json={"status": "paused"})
    assert r.status_code == 200, r.text
    paused = (await tenant.viewer.get("/api/v1/agents?status_filter=paused")).json()
    assert [a["id"] for a in paused["items"]] == [expected[1]] and paused["total"] == 1
    idle = (await tenant.viewer.get("/api/v1/agents?status_filter=idle&limit=1&offset=1")).json()
    assert (idle["total"], [a["id"] for a in idle["items"]]) == (2, [expected[2]])
    assert_validation(
        await tenant.viewer.get("/api/v1/agents?status_filter=sleeping"), "status_filter"
    )


async def test_patch_changes_only_the_fields_sent(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    env = await create_environment(tenant.member, "env")
    agent = await create(
        tenant.member,
        "patchable",
        description="d",
        system_prompt="Be brief.",
        configuration={"one_shot": True, "color": "red"},
        environment_ids=[env["id"]],
        llm_config={"temperature": 0},
    )
    url = f"/api/v1/agents/{agent['id']}"

    async def patch(body: dict[str, Any], changed: set[str]) -> dict[str, Any]:
        before = (await tenant.viewer.get(url)).json()
        r = await tenant.member.patch(url, json=body)
        assert r.status_code == 200, r.text
        after: dict[str, Any] = r.json()
        assert after["updated_at"] > before["updated_at"]
        same = changed | {"updated_at"}
        assert {k: v for k, v in after.items() if k not in same} == {
            k: v for k, v in before.items() if k not in same
        }
        return after

    assert (await patch({"description": "new"}, {"description"}))["description"] == "new"
    after = await patch({"status": "running", "state": {"turn": 2}}, {"status", "state"})
    assert (after["status"], after["state"]) == ("running", {"turn": 2})
    # A new configuration keeps the prompt and one_shot unless it sets them.
    after = await patch({"configuration": {"color": "blue"}}, {"configuration"})
    assert after["configuration"] == {
        "color": "blue",
        "one_shot": True,
        "system_prompt": "Be brief.",
    }
    after = await patch({"configuration": {"one_shot": False}}, {"configuration"})
    assert after["configuration"] == {"one_shot": False, "system_prompt": "Be brief."}
    after = await patch({"system_prompt": "Be thorough."}, {"system_prompt", "configuration"})
    assert after["configuration"]["system_prompt"] == "Be thorough."
    after = await patch({"system_prompt": None}, {"system_prompt", "configuration"})
    assert after["system_prompt"] is None and "system_prompt" not in after["configuration"]
    after = await patch(
        {"runtime": "claude_code", "model": "anthropic/claude-haiku-4-5"}, {"runtime", "model_id"}
    )
    assert (after["runtime"], after["model_id"]) == ("claude_code", "anthropic/claude-haiku-4-5")
    after = await patch({"environment_ids": []}, {"environment_ids", "environments"})
    assert after["environments"] == []
    after = await patch({"name": "renamed", "team_id": None}, {"name"})
    assert after["name"] == "renamed"


async def test_patch_refusals_change_nothing(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    await add_model(tenant.member, "openai/gpt-4o", "openai")
    await create(tenant.member, "taken")
    agent = await create(tenant.member, "gpt", model_id="openai/gpt-4o")
    url = f"/api/v1/agents/{agent['id']}"
    before = await snapshot(db, tenant.id)
    assert_error(await tenant.member.patch(url, json={"name": "taken"}), 409, "RESOURCE_CONFLICT")
    for body in [
        {"runtime": "claude_code"},
        {"model_id": "anthropic/claude-nope"},
        {"environment_ids": [str(uuid.uuid4())]},
    ]:
        error = assert_error(await tenant.member.patch(url, json=body), 400, "BAD_REQUEST")
        assert error["details"]["errors"], error
    for body, field in [
        ({"name": None}, "name"),
        ({"status": "sleeping"}, "status"),
        ({"state": None}, "state"),
        ({"runtime": None}, "runtime"),
        ({"model_id": None}, "model_id"),
        ({"configuration": {"one_shot": 3}}, "configuration.one_shot"),
    ]:
        assert_validation(await tenant.member.patch(url, json=body), field)
    assert_error(await tenant.member.patch(url, content=b"{"), 400, "BAD_REQUEST")
    assert await snapshot(db, tenant.id) == before


async def test_a_model_disabled_later_does_not_block_other_changes(tenant: Tenant) -> None:
    await add_model(tenant.member, "openai/gpt-4o", "openai")
    agent = await create(tenant.member, "old", model_id="openai/gpt-4o")
    r = await tenant.member.patch("/api/v1/models/openai/gpt-4o", json={"enabled": False})
    assert r.status_code == 200, r.text
    r = await tenant.member.patch(f"/api/v1/agents/{agent['id']}", json={"description": "x"})
    assert r.status_code == 200, r.text
    r = await tenant.member.patch(f"/api/v1/agents/{agent['id']}", json={"runtime": "default"})
    assert "disabled" in assert_error(r, 400)["details"]["errors"][0]


async def test_delete(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    agent = await create(tenant.member, "doomed")
    kept = await create(tenant.member, "kept")
    r = await tenant.member.delete(f"/api/v1/agents/{agent['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": agent["id"], "deleted": True}
    assert_error(await tenant.viewer.get(f"/api/v1/agents/{agent['id']}"), 404)
    assert [m["agent_id"] for m in await memberships(db, tenant.id)] == [uuid.UUID(kept["id"])]
    assert_error(await tenant.member.delete(f"/api/v1/agents/{agent['id']}"), 404)


async def test_other_tenants_agent_is_not_found(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await create(other_tenant.member, "secret")
    before = await snapshot(db, other_tenant.id)

    async def get(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"/api/v1/agents/{ident}")

    async def patch(ident: str) -> httpx.Response:
        return await tenant.admin.patch(f"/api/v1/agents/{ident}", json={"name": "mine"})

    async def delete(ident: str) -> httpx.Response:
        return await tenant.admin.delete(f"/api/v1/agents/{ident}")

    for request in (get, patch, delete):
        await assert_all_not_found(request, theirs["id"])
    assert await snapshot(db, other_tenant.id) == before
    listed = (await tenant.viewer.get("/api/v1/agents")).json()
    assert listed["items"] == [] and listed["total"] == 0


async def test_viewer_cannot_write(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    agent = await create(tenant.member, "guarded")
    before = await snapshot(db, tenant.id)
    url = f"/api/v1/agents/{agent['id']}"
    for response in [
        await tenant.viewer.post("/api/v1/agents", json={"name": "v"}),
        await tenant.viewer.patch(url, json={"name": "v"}),
        await tenant.viewer.delete(url),
    ]:
        assert_error(response, 403, "AUTHORIZATION_ERROR")
    assert await snapshot(db, tenant.id) == before
