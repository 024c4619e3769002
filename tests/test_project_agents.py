"""Project membership of agents: add, list, remove, with the usual refusals."""

from __future__ import annotations

import uuid
from typing import Any

from tests.conftest import Tenant, assert_error


async def new_agent(tenant: Tenant) -> str:
    response = await tenant.member.post(
        "/api/v1/agents",
        json={"name": f"a-{uuid.uuid4().hex[:6]}", "model_id": "anthropic/claude-sonnet-4-5"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_agents_join_and_leave_a_project(
    tenant: Tenant, other_tenant: Tenant, db: Any
) -> None:
    project = (await tenant.member.post("/api/v1/projects", json={"name": "P", "key": "P"})).json()
    base = f"/api/v1/projects/{project['id']}/agents"
    first, second = await new_agent(tenant), await new_agent(tenant)
    foreign = await new_agent(other_tenant)

    added = await tenant.member.post(base, json={"agent_id": first, "role": "lead"})
    assert added.status_code == 201, added.text
    assert added.json()["agent_id"] == first and added.json()["role"] == "lead"
    assert (await tenant.member.post(base, json={"agent_id": second})).status_code == 201
    assert_error(await tenant.member.post(base, json={"agent_id": first}), 409, "RESOURCE_CONFLICT")

    count = "SELECT count(*) FROM project_agents WHERE project_id = $1"
    before = await db.fetchval(count, uuid.UUID(project["id"]))
    assert_error(await tenant.member.post(base, json={"agent_id": foreign}), 404)
    assert_error(await tenant.member.post(base, json={"agent_id": "nope"}), 422)
    assert_error(await tenant.viewer.post(base, json={"agent_id": first}), 403)
    assert_error(await other_tenant.member.post(base, json={"agent_id": foreign}), 404)
    assert await db.fetchval(count, uuid.UUID(project["id"])) == before

    listed = (await tenant.viewer.get(base)).json()
    assert [m["agent_id"] for m in listed["items"]] == [first, second]
    assert (await tenant.viewer.get(f"/api/v1/projects/{project['id']}")).json()["agent_count"] == 2
    assert_error(await other_tenant.viewer.get(base), 404)

    assert_error(await tenant.viewer.delete(f"{base}/{first}"), 403)
    assert_error(await other_tenant.member.delete(f"{base}/{first}"), 404)
    removed = await tenant.member.delete(f"{base}/{first}")
    assert removed.json() == {"id": first, "deleted": True}
    assert_error(await tenant.member.delete(f"{base}/{first}"), 404)
    assert [m["agent_id"] for m in (await tenant.viewer.get(base)).json()["items"]] == [second]
