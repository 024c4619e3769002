"""The planning tools: what the planner may read of an organization (its agents, teams,
environments and worker queues), as JSON-ready summaries. Configuration, prompts and execution
environments stay out: the summaries enter the model's prompt and the workflow's history.

Teams are read from the `teams` table directly (migration 0007), whatever routes serve them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from controlplane.db import Queryable
from controlplane.queues import live_workers_sql

# At most this many of each are listed (the rest are counted): a plan names a handful, and the
# list travels in the prompt and in Temporal history.
MAX_LISTED = 200

Listed = tuple[list[dict[str, Any]], int]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


async def _count(db: Queryable, table: str, org: str) -> int:
    total: int = await db.fetchval(f"SELECT count(*) FROM {table} WHERE organization_id = $1", org)
    return total


async def list_agents(db: Queryable, org: str) -> Listed:
    rows = await db.fetch(
        "SELECT a.id, a.name, a.description, a.model_id, a.runtime, a.capabilities, a.status, "
        "a.team_id, t.name AS team_name FROM agents a LEFT JOIN teams t ON t.id = a.team_id "
        "WHERE a.organization_id = $1 ORDER BY a.created_at, a.id LIMIT $2",
        org,
        MAX_LISTED,
    )
    items = [
        {
            "id": str(row["id"]),
            "name": row["name"],
            "description": row["description"],
            "model_id": row["model_id"],
            "runtime": row["runtime"],
            "capabilities": [str(c) for c in row["capabilities"] or []],
            "status": row["status"],
            "team_id": _text(row["team_id"]),
            "team_name": row["team_name"],
        }
        for row in rows
    ]
    return items, await _count(db, "agents", org)


async def list_teams(db: Queryable, org: str) -> Listed:
    rows = await db.fetch(
        "SELECT t.id, t.name, t.description, t.status, t.runtime, t.model_id, "
        "t.coordination_type, (SELECT coalesce(jsonb_agg(a.name ORDER BY a.name), '[]') "
        "FROM agents a WHERE a.team_id = t.id) AS members "
        "FROM teams t WHERE t.organization_id = $1 ORDER BY t.created_at, t.id LIMIT $2",
        org,
        MAX_LISTED,
    )
    items = [
        {
            "id": str(row["id"]),
            "name": row["name"],
            "description": row["description"],
            "status": row["status"],
            "runtime": row["runtime"],
            "model_id": row["model_id"],
            "coordination_type": row["coordination_type"],
            "agent_count": len(row["members"]),
            "members": row["members"],
        }
        for row in rows
    ]
    return items, await _count(db, "teams", org)


async def list_environments(db: Queryable, org: str) -> Listed:
    rows = await db.fetch(
        "SELECT id, name, display_name, description, status FROM environments "
        "WHERE organization_id = $1 ORDER BY created_at, id LIMIT $2",
        org,
        MAX_LISTED,
    )
    items = [
        {
            "id": str(row["id"]),
            "name": row["name"],
            "display_name": row["display_name"],
            "description": row["description"],
            "status": row["status"],
        }
        for row in rows
    ]
    return items, await _count(db, "environments", org)


async def list_worker_queues(db: Queryable, org: str) -> Listed:
    rows = await db.fetch(
        "SELECT q.id, q.name, q.environment_id, e.name AS environment_name, q.status, "
        + live_workers_sql("w.worker_queue_id = q.id")
        + " AS active_workers FROM worker_queues q JOIN environments e ON e.id = q.environment_id "
        "WHERE q.organization_id = $1 AND NOT q.ephemeral ORDER BY q.created_at, q.id LIMIT $2",
        org,
        MAX_LISTED,
    )
    items = [
        {
            "id": str(row["id"]),
            "name": row["name"],
            "environment_id": str(row["environment_id"]),
            "environment_name": row["environment_name"],
            "status": row["status"],
            "active_workers": row["active_workers"],
        }
        for row in rows
    ]
    total: int = await db.fetchval(
        "SELECT count(*) FROM worker_queues WHERE organization_id = $1 AND NOT ephemeral", org
    )
    return items, total


PLANNING_TOOLS: dict[str, Callable[[Queryable, str], Awaitable[Listed]]] = {
    "list_agents": list_agents,
    "list_teams": list_teams,
    "list_environments": list_environments,
    "list_worker_queues": list_worker_queues,
}
