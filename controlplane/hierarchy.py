"""Where an agent or a team sits in its organization, loaded once and read by everything that
inherits along it: context, skills, execution environments and policies.

One precedence, outermost first; a later layer wins where values clash, lists are unioned in
this order:

    organization → projects → environments → team environments → team → agent (→ the run)

- projects: the agent's (`project_agents`) or the team's (`project_teams`), oldest first;
- environments: the entity's own `environment_ids`, in their order, those that still exist;
- team environments: the agent's team's environments not already among its own;
- team: the agent's team (a team is its own last layer);
- agent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from controlplane.db import Queryable


@dataclass(frozen=True)
class EnvironmentLayer:
    id: uuid.UUID
    name: str
    execution_environment: dict[str, Any]


@dataclass
class Hierarchy:
    organization_id: str
    project_ids: list[uuid.UUID] = field(default_factory=list)
    environments: list[EnvironmentLayer] = field(default_factory=list)
    team_environments: list[EnvironmentLayer] = field(default_factory=list)
    team: dict[str, Any] | None = None
    agent: dict[str, Any] | None = None

    @property
    def environment_ids(self) -> list[uuid.UUID]:
        return [environment.id for environment in self.environments]

    @property
    def team_environment_ids(self) -> list[uuid.UUID]:
        return [environment.id for environment in self.team_environments]

    @property
    def all_environment_ids(self) -> list[uuid.UUID]:
        return self.environment_ids + self.team_environment_ids

    @property
    def team_id(self) -> uuid.UUID | None:
        return uuid.UUID(str(self.team["id"])) if self.team is not None else None

    @property
    def agent_id(self) -> uuid.UUID | None:
        return uuid.UUID(str(self.agent["id"])) if self.agent is not None else None


def uuids(values: Any) -> list[uuid.UUID]:
    """The uuids among `values` (a JSON list of ids), once each, in order."""
    out: list[uuid.UUID] = []
    for value in values if isinstance(values, list) else []:
        try:
            out.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    return list(dict.fromkeys(out))


async def _environments(db: Queryable, org: str, ids: list[uuid.UUID]) -> list[EnvironmentLayer]:
    """The organization's environments among `ids`, in the given order."""
    if not ids:
        return []
    rows = await db.fetch(
        "SELECT id, name, execution_environment FROM environments "
        "WHERE organization_id = $1 AND id = ANY($2::uuid[])",
        org,
        ids,
    )
    found = {row["id"]: row for row in rows}
    return [
        EnvironmentLayer(ident, found[ident]["name"], dict(found[ident]["execution_environment"]))
        for ident in ids
        if ident in found
    ]


async def _team(db: Queryable, org: str, team_id: Any) -> dict[str, Any] | None:
    """The team row as a dict (every column), or None."""
    if team_id is None:
        return None
    row: dict[str, Any] | None = await db.fetchval(
        "SELECT to_jsonb(t) FROM teams t WHERE t.id = $1 AND t.organization_id = $2",
        team_id,
        org,
    )
    return row


async def _projects(db: Queryable, org: str, link: str, column: str, ident: Any) -> list[uuid.UUID]:
    rows = await db.fetch(
        f"SELECT p.id FROM {link} l JOIN projects p ON p.id = l.project_id "
        f"WHERE l.{column} = $1 AND p.organization_id = $2 ORDER BY l.added_at, p.id",
        ident,
        org,
    )
    return [row["id"] for row in rows]


async def agent_hierarchy(db: Queryable, org: str, agent_id: uuid.UUID) -> Hierarchy | None:
    """The agent's hierarchy; None when the organization has no such agent."""
    agent = await db.fetchrow(
        "SELECT id, name, team_id, environment_ids, skill_ids, skill_configurations, "
        "execution_environment FROM agents WHERE id = $1 AND organization_id = $2",
        agent_id,
        org,
    )
    if agent is None:
        return None
    environments = await _environments(db, org, uuids(agent["environment_ids"]))
    team = await _team(db, org, agent["team_id"])
    team_environments: list[EnvironmentLayer] = []
    if team is not None:
        own = {environment.id for environment in environments}
        candidates = [i for i in uuids(team.get("environment_ids")) if i not in own]
        team_environments = await _environments(db, org, candidates)
    return Hierarchy(
        organization_id=org,
        project_ids=await _projects(db, org, "project_agents", "agent_id", agent_id),
        environments=environments,
        team_environments=team_environments,
        team=team,
        agent=dict(agent),
    )


async def team_hierarchy(db: Queryable, org: str, team_id: uuid.UUID) -> Hierarchy | None:
    """The team's hierarchy: its projects, its environments (as team environments, the same
    layer they are for its agents) and itself; None when the organization has no such team."""
    team = await _team(db, org, team_id)
    if team is None:
        return None
    return Hierarchy(
        organization_id=org,
        project_ids=await _projects(db, org, "project_teams", "team_id", team_id),
        team_environments=await _environments(db, org, uuids(team.get("environment_ids"))),
        team=team,
    )
