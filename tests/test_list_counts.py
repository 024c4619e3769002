"""The counts behind list totals and projects' member counts (migration 0016), kept by triggers:
they follow every way rows come and go (routes, cascades, statements of many rows, a queue
renamed to or from ephemeral) and always equal counting the rows."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from tests.conftest import Tenant
from tests.resource_helpers import add_team, create_environment, create_queue

# Resource -> the rows its list counts (organization_id = $1 and this).
COUNTED = {
    "projects": "projects",
    "agents": "agents",
    "environments": "environments",
    "executions": "executions",
    "worker_queues": "worker_queues WHERE NOT ephemeral",
}
LISTS = {
    "projects": "/api/v1/projects",
    "agents": "/api/v1/agents",
    "environments": "/api/v1/environments",
    "executions": "/api/v1/executions",
    "worker_queues": "/api/v1/worker-queues",
}


async def kept(db: asyncpg.Pool[Any], org: str) -> dict[str, int]:
    rows = await db.fetch("SELECT resource, n FROM row_counts WHERE organization_id = $1", org)
    counts = dict.fromkeys(COUNTED, 0)
    counts.update({row["resource"]: row["n"] for row in rows})
    return counts


async def counted(db: asyncpg.Pool[Any], org: str) -> dict[str, int]:
    counts = {}
    for resource, rows in COUNTED.items():
        table, _, condition = rows.partition(" WHERE ")
        where = "organization_id = $1" + (f" AND {condition}" if condition else "")
        counts[resource] = await db.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", org)
    return counts


async def assert_counts(db: asyncpg.Pool[Any], tenant: Tenant, **expected: int) -> None:
    """The kept counts equal counting, the lists' totals say the same, and `expected` holds."""
    counts = await counted(db, tenant.id)
    assert await kept(db, tenant.id) == counts
    for resource, path in LISTS.items():
        # A page of one: the total cannot come from the page's own length.
        page = (await tenant.viewer.get(f"{path}?limit=1")).json()
        assert page["total"] == counts[resource], (resource, page)
    assert {name: counts[name] for name in expected} == expected


async def assert_member_counts(db: asyncpg.Pool[Any], tenant: Tenant) -> dict[str, list[int]]:
    """Each project's agent_count and team_count equal its memberships; returns them by key."""
    rows = await db.fetch(
        "SELECT p.key, p.agent_count, p.team_count, "
        "(SELECT count(*) FROM project_agents pa WHERE pa.project_id = p.id) AS agents, "
        "(SELECT count(*) FROM project_teams pt WHERE pt.project_id = p.id) AS teams "
        "FROM projects p WHERE p.organization_id = $1",
        tenant.id,
    )
    for row in rows:
        assert (row["agent_count"], row["team_count"]) == (row["agents"], row["teams"]), dict(row)
    listed = (await tenant.viewer.get("/api/v1/projects?limit=1000")).json()["items"]
    return {item["key"]: [item["agent_count"], item["team_count"]] for item in listed}


async def add_execution(
    db: asyncpg.Pool[Any], org: str, parent: uuid.UUID | None = None
) -> uuid.UUID:
    execution_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO executions (id, organization_id, prompt, parent_execution_id) "
        "VALUES ($1, $2, 'hello', $3)",
        execution_id,
        org,
        parent,
    )
    return execution_id


async def test_counts_follow_routes_cascades_and_renames(
    db: asyncpg.Pool[Any], tenant: Tenant
) -> None:
    await assert_counts(db, tenant, projects=0, environments=0, worker_queues=0)

    first = await create_environment(tenant.member, "first")
    second = await create_environment(tenant.member, "second")
    await create_queue(tenant.member, first["id"], "a")
    renamed = await create_queue(tenant.member, first["id"], "b")
    await create_queue(tenant.member, second["id"], "c")
    await create_queue(tenant.member, second["id"], "local-exec-1")  # ephemeral: not listed
    await assert_counts(db, tenant, environments=2, worker_queues=3)

    # Renamed to an ephemeral name it leaves the list, and comes back when renamed again.
    path = f"/api/v1/worker-queues/{renamed['id']}"
    r = await tenant.member.patch(path, json={"name": "local-exec-2"})
    assert r.status_code == 200, r.text
    await assert_counts(db, tenant, worker_queues=2)
    r = await tenant.member.patch(path, json={"name": "b"})
    assert r.status_code == 200, r.text
    await assert_counts(db, tenant, worker_queues=3)

    # Deleting an environment deletes its queues with it.
    r = await tenant.member.delete(f"/api/v1/environments/{second['id']}")
    assert r.status_code == 200, r.text
    await assert_counts(db, tenant, environments=1, worker_queues=2)

    # Agents join the Default project (created on first use).
    agents = []
    for name in ("one", "two", "three"):
        r = await tenant.member.post("/api/v1/agents", json={"name": name})
        assert r.status_code == 201, r.text
        agents.append(r.json()["id"])
    r = await tenant.member.post("/api/v1/projects", json={"name": "Side", "key": "SIDE"})
    assert r.status_code == 201, r.text
    side = r.json()["id"]
    for agent in agents[:2]:
        r = await tenant.member.post(f"/api/v1/projects/{side}/agents", json={"agent_id": agent})
        assert r.status_code == 201, r.text
    team = await add_team(db, tenant.id, "crew")
    await db.execute(
        "INSERT INTO project_teams (id, project_id, team_id) VALUES ($1, $2, $3)",
        uuid.uuid4(),
        uuid.UUID(side),
        team,
    )
    await assert_counts(db, tenant, projects=2, agents=3)
    assert await assert_member_counts(db, tenant) == {"DEFAULT": [3, 0], "SIDE": [2, 1]}

    # Removing a member, deleting an agent (its memberships go with it) and a team.
    r = await tenant.member.delete(f"/api/v1/projects/{side}/agents/{agents[0]}")
    assert r.status_code == 200, r.text
    r = await tenant.member.delete(f"/api/v1/agents/{agents[1]}")
    assert r.status_code == 200, r.text
    await db.execute("DELETE FROM teams WHERE id = $1", team)
    await assert_counts(db, tenant, projects=2, agents=2)
    assert await assert_member_counts(db, tenant) == {"DEFAULT": [2, 0], "SIDE": [0, 0]}

    r = await tenant.member.delete(f"/api/v1/projects/{side}")
    assert r.status_code == 200, r.text
    await assert_counts(db, tenant, projects=1, agents=2)


async def test_counts_follow_statements_of_many_rows(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    # One statement, two organizations' rows.
    await db.execute(
        "INSERT INTO projects (id, organization_id, name, key) "
        "SELECT gen_random_uuid(), org, 'p' || i, 'P' || i "
        "FROM unnest($1::text[]) AS org, generate_series(1, 3) AS i",
        [tenant.id, other_tenant.id],
    )
    await assert_counts(db, tenant, projects=3)
    await assert_counts(db, other_tenant, projects=3)

    # A parent execution and its members: deleting the parent deletes them by cascade.
    parent = await add_execution(db, tenant.id)
    for _ in range(3):
        await add_execution(db, tenant.id, parent)
    await add_execution(db, tenant.id)
    await assert_counts(db, tenant, executions=5)
    await db.execute("DELETE FROM executions WHERE id = $1", parent)
    await assert_counts(db, tenant, executions=1)

    await db.execute(
        "DELETE FROM projects WHERE organization_id = ANY($1::text[]) AND key IN ('P1', 'P2')",
        [tenant.id, other_tenant.id],
    )
    await assert_counts(db, tenant, projects=1)
    await assert_counts(db, other_tenant, projects=1, executions=0)


async def test_filtered_totals_are_counted(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    """With a filter the total is counted, not read from the organization's count."""
    for i in range(3):
        r = await tenant.member.post("/api/v1/projects", json={"name": f"p{i}", "key": f"P{i}"})
        assert r.status_code == 201, r.text
        if i:
            archived = await tenant.member.patch(
                f"/api/v1/projects/{r.json()['id']}", json={"status": "archived"}
            )
            assert archived.status_code == 200, archived.text
    page = (await tenant.viewer.get("/api/v1/projects?limit=1&status_filter=archived")).json()
    assert (len(page["items"]), page["total"]) == (1, 2)
    page = (await tenant.viewer.get("/api/v1/projects?limit=1&status_filter=active")).json()
    assert (len(page["items"]), page["total"]) == (1, 1)
    page = (await tenant.viewer.get("/api/v1/projects?offset=10&status_filter=archived")).json()
    assert (page["items"], page["total"]) == ([], 2)
