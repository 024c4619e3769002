"""Skill resolution (reference §3.10, §8): which skills an agent or team has, inherited along
environments → team environments → team → agent, and the tool specs they give.

A skill met again in a later layer moves to that layer, and that layer's
`configuration_override` is merged over the earlier ones (so an environment's restriction stays
unless the agent's association sets the same key). Disabled skills are left out. An agent's own
`skill_ids` (with `skill_configurations` as overrides) count as agent-layer associations, before
its associations made through `/skills/associations`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel

from controlplane.db import Queryable
from controlplane.errors import Refused, not_found
from controlplane.hierarchy import Hierarchy
from controlplane.snapshot import SkillLink, Snapshot, load_snapshot
from controlplane.tool_catalogue import tools_for_skills, validate_config
from workflows.contracts import ToolSpec

AssociationEntity = Literal["agent", "team", "environment"]
ASSOCIATION_ENTITIES: tuple[AssociationEntity, ...] = ("agent", "team", "environment")
Source = Literal["environment", "team", "agent"]


class SkillOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    name: str
    type: str
    description: str | None
    icon: str
    enabled: bool
    configuration: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> SkillOut:
        return cls(**dict(row))


class ResolvedSkill(SkillOut):
    """A skill as an agent or team has it: `configuration` is the skill's own with every
    layer's override merged over it; `source` is the layer that attached it last."""

    source: Source
    source_id: uuid.UUID
    inherited: bool
    configuration_override: dict[str, Any]


@dataclass
class _Attachment:
    source: Source
    source_id: uuid.UUID
    skill_id: uuid.UUID
    override: dict[str, Any]


def _skill_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _own_skill_ids(
    source: Source, source_id: uuid.UUID, row: dict[str, Any] | None
) -> list[_Attachment]:
    """`skill_ids` (and `skill_configurations` overrides) stored on an agent or team row."""
    if row is None:
        return []
    overrides = row.get("skill_configurations") or {}
    out = []
    for raw in row.get("skill_ids") or []:
        skill_id = _skill_uuid(raw)
        if skill_id is not None:
            override = overrides.get(str(raw)) if isinstance(overrides, dict) else None
            out.append(_Attachment(source, source_id, skill_id, dict(override or {})))
    return out


def _attachments(chain: Hierarchy, links: Sequence[SkillLink]) -> list[_Attachment]:
    """Every attachment along the chain, outermost layer first."""
    layers: list[tuple[Source, str, uuid.UUID]] = [
        ("environment", "environment", env) for env in chain.environment_ids
    ]
    layers += [("environment", "environment", env) for env in chain.team_environment_ids]
    if chain.team_id is not None:
        layers.append(("team", "team", chain.team_id))
    if chain.agent_id is not None:
        layers.append(("agent", "agent", chain.agent_id))
    by_entity: dict[tuple[str, uuid.UUID], list[SkillLink]] = {}
    for link in links:  # oldest first
        by_entity.setdefault((link.entity_type, link.entity_id), []).append(link)
    out: list[_Attachment] = []
    for source, entity_type, entity_id in layers:
        if entity_type == "team":
            out += _own_skill_ids("team", entity_id, chain.team)
        if entity_type == "agent":
            out += _own_skill_ids("agent", entity_id, chain.agent)
        out += [
            _Attachment(source, entity_id, link.skill_id, dict(link.override))
            for link in by_entity.get((entity_type, entity_id), [])
        ]
    return out


def resolve_skills(snapshot: Snapshot, chain: Hierarchy) -> list[ResolvedSkill]:
    """The enabled skills of `chain` (the snapshot's own or one of its team's members),
    inherited ones first."""
    resolved: dict[uuid.UUID, ResolvedSkill] = {}
    for attachment in _attachments(chain, snapshot.skill_links):
        row = snapshot.skills.get(attachment.skill_id)
        if row is None:  # disabled, deleted, or not the organization's
            continue
        earlier = resolved.pop(attachment.skill_id, None)
        override = {**(earlier.configuration_override if earlier else {}), **attachment.override}
        resolved[attachment.skill_id] = ResolvedSkill(
            **row
            | {
                "configuration": {**row["configuration"], **override},
                "source": attachment.source,
                "source_id": attachment.source_id,
                "inherited": attachment.source != "agent",
                "configuration_override": override,
            }
        )
    return list(resolved.values())


async def resolve_agent_skills(db: Queryable, org: str, agent_id: uuid.UUID) -> list[ResolvedSkill]:
    """The agent's enabled skills, inherited ones first; 404 when it is not in the org."""
    snapshot = await load_snapshot(db, org, agent_id=agent_id)
    if snapshot.chain is None:
        raise not_found("Agent", agent_id)
    return resolve_skills(snapshot, snapshot.chain)


async def resolve_team_skills(db: Queryable, org: str, team_id: uuid.UUID) -> list[ResolvedSkill]:
    """The team's enabled skills; 404 when there is no such team."""
    snapshot = await load_snapshot(db, org, team_id=team_id)
    if snapshot.chain is None:
        raise not_found("Team", team_id)
    return resolve_skills(snapshot, snapshot.chain)


def tool_specs_for(skills: list[ResolvedSkill]) -> list[ToolSpec]:
    """Tool specs of resolved skills, with unique names; a skill whose merged configuration is
    not valid for its type is a 400 naming it."""
    for skill in skills:
        errors = validate_config(skill.type, skill.configuration)
        if errors:
            raise Refused(
                f"Skill '{skill.name}' has an invalid configuration: {'; '.join(errors)}",
                details={"skill_id": str(skill.id), "errors": errors},
            )
    return tools_for_skills(
        (str(skill.id), skill.name, skill.type, skill.configuration) for skill in skills
    )


async def tools_for_agent(db: Queryable, org: str, agent_id: uuid.UUID) -> list[ToolSpec]:
    """The tools an execution of the agent offers the model: its resolved, enabled skills as
    tool specs with unique names (`configuration` holds no secret values)."""
    return tool_specs_for(await resolve_agent_skills(db, org, agent_id))
