"""Context (reference §3.15, §8; DESIGN §3): the knowledge, resource and policy ids attached to
an organization, project, environment, team or agent, and their resolution along the chain
organization → projects → environments → team environments → team → agent.

Every list is the union of the layers in that order, first-seen wins. Also here: the chain of
entities above an agent or team, which skill resolution walks too. There is no teams table yet:
the team layers are in the chain but stay empty until one exists (see `load_team`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from api.db import Queryable
from api.errors import ApiError, not_found

EntityType = Literal["organization", "project", "environment", "team", "agent"]
ENTITY_TYPES: tuple[EntityType, ...] = ("organization", "project", "environment", "team", "agent")
LISTS = ("knowledge_uuids", "resource_ids", "policy_ids")
KIND = {
    "organization": "Organization",
    "project": "Project",
    "environment": "Environment",
    "team": "Team",
    "agent": "Agent",
}


async def load_team(db: Queryable, org: str, team_id: uuid.UUID | None) -> dict[str, Any] | None:
    """The team row as a dict, or None: no team id, no such team in the organization, or no
    teams table yet. Read as JSON so the columns a future teams table has need not be known."""
    if team_id is None:
        return None
    if await db.fetchval("SELECT to_regclass('teams')") is None:
        return None
    row: dict[str, Any] | None = await db.fetchval(
        "SELECT to_jsonb(t) FROM teams t WHERE t.id = $1 AND t.organization_id = $2",
        team_id,
        org,
    )
    return row


def _uuids(values: Any) -> list[uuid.UUID]:
    out: list[uuid.UUID] = []
    for value in values if isinstance(values, list) else []:
        try:
            out.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    return list(dict.fromkeys(out))


def team_environment_ids(team: dict[str, Any]) -> list[uuid.UUID]:
    ids = _uuids(team.get("environment_ids"))
    if team.get("environment_id"):
        ids = _uuids([team["environment_id"], *ids])
    return ids


async def existing_environments(db: Queryable, org: str, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """`ids` that are environments of the organization, in the given order."""
    if not ids:
        return []
    rows = await db.fetch(
        "SELECT id FROM environments WHERE organization_id = $1 AND id = ANY($2::uuid[])",
        org,
        ids,
    )
    found = {row["id"] for row in rows}
    return [ident for ident in ids if ident in found]


@dataclass
class EntityChain:
    """The entities an agent or team inherits from, nearest last."""

    organization_id: str
    project_ids: list[uuid.UUID] = field(default_factory=list)
    environment_ids: list[uuid.UUID] = field(default_factory=list)
    team_environment_ids: list[uuid.UUID] = field(default_factory=list)
    team_id: uuid.UUID | None = None
    team: dict[str, Any] | None = None
    agent_id: uuid.UUID | None = None
    agent: dict[str, Any] | None = None


async def agent_chain(db: Queryable, org: str, agent_id: uuid.UUID) -> EntityChain | None:
    """The agent's projects (`project_agents`), environments (its `environment_ids`), team and
    team environments not already among its own; None when the agent is not in the org."""
    row = await db.fetchrow(
        "SELECT id, team_id, environment_ids, skill_ids, skill_configurations FROM agents "
        "WHERE id = $1 AND organization_id = $2",
        agent_id,
        org,
    )
    if row is None:
        return None
    projects = await db.fetch(
        "SELECT p.id FROM project_agents pa JOIN projects p ON p.id = pa.project_id "
        "WHERE pa.agent_id = $1 AND p.organization_id = $2 ORDER BY pa.added_at, p.id",
        agent_id,
        org,
    )
    environments = await existing_environments(db, org, _uuids(row["environment_ids"]))
    team = await load_team(db, org, row["team_id"])
    team_environments: list[uuid.UUID] = []
    if team is not None:
        candidates = [i for i in team_environment_ids(team) if i not in environments]
        team_environments = await existing_environments(db, org, candidates)
    return EntityChain(
        organization_id=org,
        project_ids=[p["id"] for p in projects],
        environment_ids=environments,
        team_environment_ids=team_environments,
        team_id=row["team_id"] if team is not None else None,
        team=team,
        agent_id=agent_id,
        agent=dict(row),
    )


async def team_chain(db: Queryable, org: str, team_id: uuid.UUID) -> EntityChain | None:
    """A team's projects (`project_teams`) and environments; None when there is no such team
    (always, until a teams table exists)."""
    team = await load_team(db, org, team_id)
    if team is None:
        return None
    projects = await db.fetch(
        "SELECT p.id FROM project_teams pt JOIN projects p ON p.id = pt.project_id "
        "WHERE pt.team_id = $1 AND p.organization_id = $2 ORDER BY pt.added_at, p.id",
        team_id,
        org,
    )
    return EntityChain(
        organization_id=org,
        project_ids=[p["id"] for p in projects],
        team_environment_ids=await existing_environments(db, org, team_environment_ids(team)),
        team_id=team_id,
        team=team,
    )


async def entity_id_for(
    db: Queryable, org: str, entity_type: str, raw_id: str
) -> tuple[EntityType, str]:
    """The entity named by a path, checked to exist in the organization: 400 for an unknown
    type, 404 (like any missing id) for an id that names nothing of the organization."""
    if entity_type not in ENTITY_TYPES:
        raise ApiError(
            400,
            f"Unknown entity type '{entity_type}'; expected one of {', '.join(ENTITY_TYPES)}",
        )
    kind: EntityType = entity_type
    if kind == "organization":
        if raw_id != org:
            raise not_found("Organization", raw_id)
        return kind, org
    try:
        ident = uuid.UUID(raw_id)
    except ValueError:
        raise not_found(KIND[kind], raw_id) from None
    if kind == "team":
        found = await load_team(db, org, ident) is not None
    else:
        table = {"project": "projects", "environment": "environments", "agent": "agents"}[kind]
        found = await db.fetchval(
            f"SELECT true FROM {table} WHERE id = $1 AND organization_id = $2", ident, org
        )
    if not found:
        raise not_found(KIND[kind], raw_id)
    return kind, str(ident)


class ContextLayer(BaseModel):
    entity_type: EntityType
    entity_id: str
    knowledge_uuids: list[str]
    resource_ids: list[str]
    policy_ids: list[str]


class ResolvedContext(BaseModel):
    entity_type: EntityType
    entity_id: str
    organization_id: str
    project_id: str | None = None
    environment_id: str | None = None
    team_id: str | None = None
    project_ids: list[str]
    environment_ids: list[str]
    knowledge_uuids: list[str]
    resource_ids: list[str]
    policy_ids: list[str]
    layers: dict[str, ContextLayer]


def _numbered(prefix: str, ids: list[uuid.UUID], always: bool = False) -> list[tuple[str, str]]:
    if len(ids) == 1 and not always:
        return [(prefix, str(ids[0]))]
    return [(f"{prefix}_{n}", str(ident)) for n, ident in enumerate(ids, start=1)]


async def resolve_context(
    db: Queryable, org: str, entity_type: str, entity_id: str | uuid.UUID
) -> ResolvedContext:
    """The entity's context merged along its chain; raises 400/404 like the routes."""
    kind, ident = await entity_id_for(db, org, entity_type, str(entity_id))
    # (layer name, entity type, entity id), outermost first.
    layers: list[tuple[str, EntityType, str]] = [("organization", "organization", org)]
    chain = EntityChain(organization_id=org)
    if kind == "agent":
        found = await agent_chain(db, org, uuid.UUID(ident))
        assert found is not None
        chain = found
    elif kind == "team":
        found = await team_chain(db, org, uuid.UUID(ident))
        assert found is not None
        chain = found
    elif kind == "project":
        chain.project_ids = [uuid.UUID(ident)]
    elif kind == "environment":
        chain.environment_ids = [uuid.UUID(ident)]
    layers += [(name, "project", i) for name, i in _numbered("project", chain.project_ids)]
    layers += [
        (name, "environment", i) for name, i in _numbered("environment", chain.environment_ids)
    ]
    layers += [
        (name, "environment", i)
        for name, i in _numbered("team_environment", chain.team_environment_ids, always=True)
    ]
    if chain.team_id is not None:
        layers.append(("team", "team", str(chain.team_id)))
    if kind == "agent":
        layers.append(("agent", "agent", ident))
    rows = await db.fetch(
        "SELECT entity_type, entity_id, knowledge_uuids, resource_ids, policy_ids "
        "FROM entity_contexts WHERE organization_id = $1 AND (entity_type, entity_id) IN "
        "(SELECT * FROM unnest($2::text[], $3::text[]))",
        org,
        [layer[1] for layer in layers],
        [layer[2] for layer in layers],
    )
    stored = {(row["entity_type"], row["entity_id"]): row for row in rows}
    merged: dict[str, dict[str, None]] = {name: {} for name in LISTS}
    out_layers: dict[str, ContextLayer] = {}
    for name, layer_type, layer_id in layers:
        row = stored.get((layer_type, layer_id))
        values = {key: list(row[key]) if row is not None else [] for key in LISTS}
        for key in LISTS:
            merged[key].update(dict.fromkeys(values[key]))
        out_layers[name] = ContextLayer(entity_type=layer_type, entity_id=layer_id, **values)
    project_ids = [str(i) for i in chain.project_ids]
    environment_ids = [str(i) for i in chain.environment_ids + chain.team_environment_ids]
    return ResolvedContext(
        entity_type=kind,
        entity_id=ident,
        organization_id=org,
        project_id=project_ids[0] if project_ids else None,
        environment_id=environment_ids[0] if environment_ids else None,
        team_id=str(chain.team_id) if chain.team_id is not None else None,
        project_ids=project_ids,
        environment_ids=environment_ids,
        knowledge_uuids=list(merged["knowledge_uuids"]),
        resource_ids=list(merged["resource_ids"]),
        policy_ids=list(merged["policy_ids"]),
        layers=out_layers,
    )


def _provenance(resolved: ResolvedContext, key: str) -> list[str]:
    lines = []
    for item in getattr(resolved, key):
        sources = [name for name, layer in resolved.layers.items() if item in getattr(layer, key)]
        lines.append(f"- {item} (from: {', '.join(sources)})")
    return lines


def context_prompt(resolved: ResolvedContext) -> str | None:
    """A system-prompt section naming the knowledge items and resources the agent has, with
    the layers that attached them; None when there are none."""
    if not resolved.knowledge_uuids and not resolved.resource_ids:
        return None
    parts = [
        "## Context",
        "These knowledge items and resources are attached to you through your organization, "
        "projects, environments, team and your own settings.",
    ]
    if resolved.knowledge_uuids:
        parts += ["Knowledge items:", *_provenance(resolved, "knowledge_uuids")]
    if resolved.resource_ids:
        parts += ["Resources:", *_provenance(resolved, "resource_ids")]
    return "\n".join(parts)
