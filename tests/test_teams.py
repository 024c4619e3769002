"""`/api/v1/teams` as a user drives it: CRUD, membership kept in one place (an agent is on one
team), the rules of a team (400 naming what is wrong), the layers a team now really resolves
(context, skills, execution environment, policies, projects), other tenants and bad input."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Tenant, assert_error

CLAUDE_MODEL = "anthropic/claude-sonnet-4-5"


async def make_agent(tenant: Tenant, name: str | None = None, **fields: Any) -> dict[str, Any]:
    response = await tenant.member.post(
        "/api/v1/agents", json={"name": name or f"agent-{uuid.uuid4().hex[:6]}", **fields}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def make_team(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    response = await tenant.member.post(
        "/api/v1/teams", json={"name": f"team-{uuid.uuid4().hex[:6]}", **fields}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def member_ids(team: dict[str, Any]) -> list[str]:
    return [agent["id"] for agent in team["agents"]]


async def test_create_get_list_update_delete(tenant: Tenant) -> None:
    first, second = await make_agent(tenant), await make_agent(tenant)
    team = await make_team(
        tenant,
        description="researchers",
        coordination_type="sequential",
        configuration={
            "member_ids": [second["id"], first["id"]],
            "instructions": ["Be brief", "Cite sources"],
            "llm": {"model": CLAUDE_MODEL, "temperature": 0.2},
        },
    )
    assert team["coordination_type"] == "sequential"
    assert team["status"] == "active" and team["runtime"] == "default"
    # Members in the order given, on both sides of the link.
    assert member_ids(team) == [second["id"], first["id"]]
    assert team["configuration"]["member_ids"] == [second["id"], first["id"]]
    assert team["model_id"] == CLAUDE_MODEL
    assert [p["name"] for p in team["projects"]] == ["Default"]
    agent = (await tenant.viewer.get(f"/api/v1/agents/{first['id']}")).json()
    assert agent["team_id"] == team["id"]

    fetched = (await tenant.viewer.get(f"/api/v1/teams/{team['id']}")).json()
    assert fetched == team
    listed = (await tenant.viewer.get("/api/v1/teams", params={"limit": 100})).json()
    assert listed["total"] >= 1 and team["id"] in [t["id"] for t in listed["items"]]
    narrowed = (
        await tenant.viewer.get("/api/v1/teams", params={"coordination_type": "parallel"})
    ).json()
    assert team["id"] not in [t["id"] for t in narrowed["items"]]

    # A PATCH of the configuration without member_ids keeps the members and their order.
    patched = await tenant.member.patch(
        f"/api/v1/teams/{team['id']}",
        json={"name": "renamed", "configuration": {"instructions": "Be thorough"}},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "renamed"
    assert member_ids(patched.json()) == [second["id"], first["id"]]
    assert patched.json()["configuration"]["instructions"] == "Be thorough"
    assert patched.json()["model_id"] is None  # the new configuration names no model

    # member_ids replaces the members: `first` leaves, its team_id is cleared.
    replaced = await tenant.member.patch(
        f"/api/v1/teams/{team['id']}", json={"configuration": {"member_ids": [second["id"]]}}
    )
    assert member_ids(replaced.json()) == [second["id"]]
    assert (await tenant.viewer.get(f"/api/v1/agents/{first['id']}")).json()["team_id"] is None

    deleted = await tenant.member.delete(f"/api/v1/teams/{team['id']}")
    assert deleted.json() == {"id": team["id"], "deleted": True}
    assert_error(await tenant.viewer.get(f"/api/v1/teams/{team['id']}"), 404, "RESOURCE_NOT_FOUND")
    assert (await tenant.viewer.get(f"/api/v1/agents/{second['id']}")).json()["team_id"] is None


async def test_add_and_remove_members(tenant: Tenant) -> None:
    a, b = await make_agent(tenant), await make_agent(tenant)
    team = await make_team(tenant, configuration={"member_ids": [a["id"]]})
    other = await make_team(tenant)
    added = await tenant.member.post(f"/api/v1/teams/{team['id']}/agents/{b['id']}")
    assert added.status_code == 200, added.text
    assert member_ids(added.json()) == [a["id"], b["id"]]
    # Added to another team, an agent leaves its old one: one source of truth.
    moved = await tenant.member.post(f"/api/v1/teams/{other['id']}/agents/{a['id']}")
    assert member_ids(moved.json()) == [a["id"]]
    after = (await tenant.viewer.get(f"/api/v1/teams/{team['id']}")).json()
    assert member_ids(after) == [b["id"]]
    assert after["configuration"]["member_ids"] == [b["id"]]
    removed = await tenant.member.delete(f"/api/v1/teams/{team['id']}/agents/{b['id']}")
    assert removed.status_code == 200 and removed.json()["agents"] == []
    error = assert_error(
        await tenant.member.delete(f"/api/v1/teams/{team['id']}/agents/{b['id']}"), 404
    )
    assert b["id"] in error["message"]
    # An agent that joins through its own team_id is a member too (last in order).
    c = await make_agent(tenant, team_id=other["id"])
    assert member_ids((await tenant.viewer.get(f"/api/v1/teams/{other['id']}")).json()) == [
        a["id"],
        c["id"],
    ]


async def test_the_rules_of_a_team_are_400s_that_name_the_problem(tenant: Tenant) -> None:
    plain = await make_agent(tenant, name=f"plain-{uuid.uuid4().hex[:4]}")
    coder = await make_agent(tenant, runtime="claude_code", model_id=CLAUDE_MODEL)
    ghost = str(uuid.uuid4())
    before = (await tenant.viewer.get("/api/v1/teams")).json()["total"]

    error = assert_error(
        await tenant.member.post(
            "/api/v1/teams", json={"name": "t1", "configuration": {"member_ids": [ghost]}}
        ),
        400,
    )
    assert error["details"]["missing_agent_ids"] == [ghost]
    error = assert_error(
        await tenant.member.post(
            "/api/v1/teams",
            json={
                "name": "t2",
                "runtime": "claude_code",
                "configuration": {"member_ids": [coder["id"], plain["id"]]},
            },
        ),
        400,
    )
    assert error["details"]["non_claude_code_members"] == [plain["name"]]
    assert plain["name"] in error["message"]
    error = assert_error(
        await tenant.member.post(
            "/api/v1/teams", json={"name": "t3", "configuration": {"llm": {"model": "nope"}}}
        ),
        400,
    )
    assert "nope" in error["message"]
    assert (await tenant.viewer.get("/api/v1/teams")).json()["total"] == before  # nothing written
    assert (await tenant.viewer.get(f"/api/v1/agents/{coder['id']}")).json()["team_id"] is None

    team = await make_team(
        tenant, runtime="claude_code", configuration={"member_ids": [coder["id"]]}
    )
    refused = await tenant.member.post(f"/api/v1/teams/{team['id']}/agents/{plain['id']}")
    assert assert_error(refused, 400)["details"]["non_claude_code_members"] == [plain["name"]]
    mixed = await make_team(tenant, configuration={"member_ids": [plain["id"]]})
    refused = await tenant.member.patch(
        f"/api/v1/teams/{mixed['id']}", json={"runtime": "claude_code"}
    )
    assert_error(refused, 400)
    assert (await tenant.viewer.get(f"/api/v1/teams/{mixed['id']}")).json()["runtime"] == "default"

    duplicate = await tenant.member.post("/api/v1/teams", json={"name": team["name"]})
    assert "already exists" in assert_error(duplicate, 409)["message"]
    renamed = await tenant.member.patch(f"/api/v1/teams/{mixed['id']}", json={"name": team["name"]})
    assert_error(renamed, 409)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "coordination_type": "democracy"}, "coordination_type"),
        ({"name": "x", "status": "busy"}, "status"),
        ({"name": "x", "runtime": "agno"}, "runtime"),
        ({"name": "x", "configuration": {"member_ids": ["not-a-uuid"]}}, "member_ids"),
        ({"name": "x", "configuration": {"llm": {"temperature": 7}}}, "temperature"),
        ({"name": "x", "configuration": {"llm": {"max_tokens": 0}}}, "max_tokens"),
        (
            {"name": "x", "execution_environment": {"mcp_servers": {"s": {"command": "sh"}}}},
            "mcp_servers",
        ),
    ],
)
async def test_bad_input_is_a_422_and_writes_nothing(
    tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    before = (await tenant.viewer.get("/api/v1/teams")).json()["total"]
    error = assert_error(await tenant.member.post("/api/v1/teams", json=body), 422)
    assert field in str(error["details"]), error
    assert (await tenant.viewer.get("/api/v1/teams")).json()["total"] == before


async def test_another_tenants_team_is_404_everywhere(tenant: Tenant, other_tenant: Tenant) -> None:
    agent = await make_agent(tenant)
    team = await make_team(tenant, configuration={"member_ids": [agent["id"]]})
    theirs = await make_agent(other_tenant)
    base = f"/api/v1/teams/{team['id']}"
    queue_env = await other_tenant.member.post("/api/v1/environments", json={"name": "e"})
    queue = await other_tenant.member.post(
        f"/api/v1/environments/{queue_env.json()['id']}/worker-queues", json={"name": "q"}
    )
    attempts = [
        other_tenant.viewer.get(base),
        other_tenant.member.patch(base, json={"name": "mine"}),
        other_tenant.member.delete(base),
        other_tenant.member.post(f"{base}/agents/{theirs['id']}"),
        other_tenant.member.delete(f"{base}/agents/{agent['id']}"),
        other_tenant.viewer.get(f"{base}/context"),
        other_tenant.member.put(f"{base}/context", json={"knowledge_uuids": ["k"]}),
        other_tenant.viewer.get(f"{base}/context/resolved"),
        other_tenant.member.get(f"/api/v1/execution-environment/teams/{team['id']}/resolved"),
        other_tenant.member.post(
            f"{base}/execute", json={"prompt": "hi", "worker_queue_id": queue.json()["id"]}
        ),
    ]
    for attempt in attempts:
        assert_error(await attempt, 404, "RESOURCE_NOT_FOUND")
    # Their agent cannot be put on our team either, nor ours on theirs.
    assert_error(await tenant.member.post(f"{base}/agents/{theirs['id']}"), 404)
    assert (await tenant.viewer.get(base)).json()["name"] == team["name"]
    assert_error(await tenant.viewer.get("/api/v1/teams/not-a-uuid"), 404)


async def test_viewers_read_and_members_write(tenant: Tenant) -> None:
    team = await make_team(tenant)
    assert (await tenant.viewer.get(f"/api/v1/teams/{team['id']}")).status_code == 200
    assert_error(await tenant.viewer.post("/api/v1/teams", json={"name": "v"}), 403)
    assert_error(await tenant.viewer.delete(f"/api/v1/teams/{team['id']}"), 403)
    assert_error(await tenant.anonymous().get("/api/v1/teams"), 401)


async def test_a_team_resolves_its_layers(tenant: Tenant) -> None:
    """Context, execution environment, skills, projects and policies now resolve for teams."""
    environment = await tenant.member.post(
        "/api/v1/environments",
        json={
            "name": f"env-{uuid.uuid4().hex[:4]}",
            "execution_environment": {"env_vars": {"A": "env"}},
        },
    )
    env_id = environment.json()["id"]
    member = await make_agent(tenant)
    team = await make_team(
        tenant,
        environment_ids=[env_id],
        execution_environment={"env_vars": {"B": "team"}},
        configuration={"member_ids": [member["id"]]},
    )
    base = f"/api/v1/teams/{team['id']}"
    assert [e["id"] for e in team["environments"]] == [env_id]

    context = await tenant.member.put(f"{base}/context", json={"knowledge_uuids": ["k1", "k1"]})
    assert context.status_code == 200, context.text
    assert context.json()["team_id"] == team["id"] and context.json()["knowledge_uuids"] == ["k1"]
    resolved = (await tenant.viewer.get(f"{base}/context/resolved")).json()
    assert resolved["knowledge_uuids"] == ["k1"]
    # The member inherits the team layer.
    agent_context = (
        await tenant.viewer.get(f"/api/v1/agents/{member['id']}/context/resolved")
    ).json()
    assert "k1" in agent_context["knowledge_uuids"]
    reset = await tenant.member.delete(f"{base}/context")
    assert reset.json()["deleted"] is True and reset.json()["knowledge_uuids"] == []

    environment_view = (
        await tenant.member.get(f"/api/v1/execution-environment/teams/{team['id']}/resolved")
    ).json()
    assert environment_view["env_vars"] == {"A": "env", "B": "team"}

    project = await tenant.member.post(
        "/api/v1/projects",
        json={"name": f"p-{uuid.uuid4().hex[:4]}", "key": "K" + uuid.uuid4().hex[:6]},
    )
    project_id = project.json()["id"]
    joined = await tenant.member.post(
        f"/api/v1/projects/{project_id}/teams", json={"team_id": team["id"], "role": "owner"}
    )
    assert joined.status_code == 201, joined.text
    assert joined.json()["team_name"] == team["name"]
    again = await tenant.member.post(
        f"/api/v1/projects/{project_id}/teams", json={"team_id": team["id"]}
    )
    assert_error(again, 409)
    listed = (await tenant.viewer.get(f"/api/v1/projects/{project_id}/teams")).json()
    assert [t["team_id"] for t in listed["items"]] == [team["id"]]
    assert project_id in [p["id"] for p in (await tenant.viewer.get(base)).json()["projects"]]
    assert (
        await tenant.member.delete(f"/api/v1/projects/{project_id}/teams/{team['id']}")
    ).status_code == 200
    assert_error(
        await tenant.member.delete(f"/api/v1/projects/{project_id}/teams/{team['id']}"), 404
    )

    skill = await tenant.admin.post(
        "/api/v1/skills",
        json={"name": f"s-{uuid.uuid4().hex[:4]}", "skill_type": "shell", "configuration": {}},
    )
    assert skill.status_code == 201, skill.text
    attached = await tenant.admin.post(
        "/api/v1/skills/associate",
        json={"skill_id": skill.json()["id"], "entity_type": "team", "entity_id": team["id"]},
    )
    assert attached.status_code == 201, attached.text
    skills = (
        await tenant.viewer.get(f"/api/v1/skills/associations/teams/{team['id']}/skills/resolved")
    ).json()
    assert skill.json()["id"] in [s["id"] for s in skills]

    policy = await tenant.admin.post(
        "/api/v1/policies",
        json={
            "name": f"p-{uuid.uuid4().hex[:6]}",
            "policy_content": "package t\ndefault allow := true",
        },
    )
    association = await tenant.admin.post(
        "/api/v1/policies/associations",
        json={"policy_id": policy.json()["id"], "entity_type": "team", "entity_id": team["id"]},
    )
    assert association.status_code == 201, association.text
    resolved_policies = (
        await tenant.viewer.get(f"/api/v1/policies/resolved/agent/{member['id']}")
    ).json()
    assert policy.json()["id"] in [p["policy_id"] for p in resolved_policies]

    # Deleting the team takes what hangs on it by id along.
    await tenant.member.delete(base)
    associations = (
        await tenant.viewer.get("/api/v1/policies/associations", params={"entity_id": team["id"]})
    ).json()
    assert associations["items"] == []
