"""Context (reference §3.15, §8; DESIGN §3): the knowledge, resource and policy ids attached to
an organization, project, environment, team or agent, and their resolution along the
hierarchy (controlplane/hierarchy.py): organization → projects → environments → team
environments → team → agent. Every list is the union of the layers in that order, first-seen
wins."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel

from controlplane.db import Queryable
from controlplane.errors import Refused, not_found
from controlplane.hierarchy import Hierarchy
from controlplane.snapshot import ContextRow, Snapshot, load_snapshot

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


def entity_ref(org: str, entity_type: str, raw_id: str) -> tuple[EntityType, str]:
    """The entity a path names, not yet checked to exist: 400 for an unknown type, 404 for an
    id that cannot name anything of the organization."""
    if entity_type not in ENTITY_TYPES:
        raise Refused(
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
    return kind, str(ident)


async def entity_id_for(
    db: Queryable, org: str, entity_type: str, raw_id: str
) -> tuple[EntityType, str]:
    """The entity named by a path, checked to exist in the organization: 400 for an unknown
    type, 404 (like any missing id) for an id that names nothing of the organization."""
    kind, ident = entity_ref(org, entity_type, raw_id)
    if kind == "organization":
        return kind, ident
    table = {
        "project": "projects",
        "environment": "environments",
        "team": "teams",
        "agent": "agents",
    }[kind]
    found = await db.fetchval(
        f"SELECT true FROM {table} WHERE id = $1 AND organization_id = $2", uuid.UUID(ident), org
    )
    if not found:
        raise not_found(KIND[kind], raw_id)
    return kind, ident


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


Layers = list[tuple[str, EntityType, str]]  # (layer name, entity type, entity id)


def _layers(kind: EntityType, ident: str, chain: Hierarchy) -> tuple[Layers, list[uuid.UUID]]:
    """The entity's context layers, outermost first, and its own environments."""
    layers: Layers = [("organization", "organization", chain.organization_id)]
    layers += [(name, "project", i) for name, i in _numbered("project", chain.project_ids)]
    environment_ids = [uuid.UUID(ident)] if kind == "environment" else chain.environment_ids
    layers += [(name, "environment", i) for name, i in _numbered("environment", environment_ids)]
    layers += [
        (name, "environment", i)
        for name, i in _numbered("team_environment", chain.team_environment_ids, always=True)
    ]
    if chain.team_id is not None:
        layers.append(("team", "team", str(chain.team_id)))
    if kind == "agent":
        layers.append(("agent", "agent", ident))
    return layers, environment_ids


def merge_context(
    kind: EntityType,
    ident: str,
    chain: Hierarchy,
    stored: Mapping[tuple[str, str], ContextRow],
) -> ResolvedContext:
    """The entity's context merged along its chain from the layers' stored rows."""
    layers, environment_ids = _layers(kind, ident, chain)
    merged: dict[str, dict[str, None]] = {name: {} for name in LISTS}
    out_layers: dict[str, ContextLayer] = {}
    for name, layer_type, layer_id in layers:
        row = stored.get((layer_type, layer_id))
        values = {key: list(getattr(row, key)) if row is not None else [] for key in LISTS}
        for key in LISTS:
            merged[key].update(dict.fromkeys(values[key]))
        out_layers[name] = ContextLayer(entity_type=layer_type, entity_id=layer_id, **values)
    project_ids = [str(i) for i in chain.project_ids]
    all_environment_ids = [str(i) for i in environment_ids + chain.team_environment_ids]
    return ResolvedContext(
        entity_type=kind,
        entity_id=ident,
        organization_id=chain.organization_id,
        project_id=project_ids[0] if project_ids else None,
        environment_id=all_environment_ids[0] if all_environment_ids else None,
        team_id=str(chain.team_id) if chain.team_id is not None else None,
        project_ids=project_ids,
        environment_ids=all_environment_ids,
        knowledge_uuids=list(merged["knowledge_uuids"]),
        resource_ids=list(merged["resource_ids"]),
        policy_ids=list(merged["policy_ids"]),
        layers=out_layers,
    )


def context_of(snapshot: Snapshot) -> ResolvedContext:
    """The resolved context of the snapshot's agent or team."""
    chain = snapshot.chain
    assert chain is not None
    if chain.agent_id is not None:
        return merge_context("agent", str(chain.agent_id), chain, snapshot.contexts)
    return merge_context("team", str(chain.team_id), chain, snapshot.contexts)


async def resolve_context(
    db: Queryable, org: str, entity_type: str, entity_id: str | uuid.UUID
) -> ResolvedContext:
    """The entity's context merged along its chain; raises 400/404 like the routes."""
    kind, ident = entity_ref(org, entity_type, str(entity_id))
    if kind in ("agent", "team"):
        if kind == "agent":
            snapshot = await load_snapshot(db, org, agent_id=uuid.UUID(ident))
        else:
            snapshot = await load_snapshot(db, org, team_id=uuid.UUID(ident))
        if snapshot.chain is None:
            raise not_found(KIND[kind], entity_id)
        return context_of(snapshot)
    await entity_id_for(db, org, kind, str(entity_id))
    chain = Hierarchy(organization_id=org)
    if kind == "project":
        chain.project_ids = [uuid.UUID(ident)]
    layers, _ = _layers(kind, ident, chain)
    rows = await db.fetch(
        "SELECT entity_type, entity_id, knowledge_uuids, resource_ids, policy_ids "
        "FROM entity_contexts WHERE organization_id = $1 AND (entity_type, entity_id) IN "
        "(SELECT * FROM unnest($2::text[], $3::text[]))",
        org,
        [layer[1] for layer in layers],
        [layer[2] for layer in layers],
    )
    stored = {
        (row["entity_type"], row["entity_id"]): ContextRow(
            list(row["knowledge_uuids"]), list(row["resource_ids"]), list(row["policy_ids"])
        )
        for row in rows
    }
    return merge_context(kind, ident, chain, stored)


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
