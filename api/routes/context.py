"""`/api/v1/context` (reference §3.15, §8): the knowledge, resource and policy ids attached to an
organization (its id is the organization's slug), project, environment, team or agent, their
resolution along the inheritance chain, and the environment's and team's own views
(`/environments/{id}/context`, `/teams/{id}/context`: knowledge and resources only). A
context row is created empty on first read; PUT replaces it whole; DELETE resets it to empty
and answers the empty context."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from pydantic import BaseModel, Field

from api.routing import Call, Router
from controlplane.context import EntityType, ResolvedContext, entity_id_for, resolve_context
from controlplane.db import Queryable

router = Router("context")

Ident = Annotated[str, Field(min_length=1, max_length=500)]
IdList = Annotated[list[Ident], Field(max_length=1000)]
COLUMNS = (
    "id, organization_id, entity_type, entity_id, knowledge_uuids, resource_ids, policy_ids, "
    "created_at, updated_at"
)


class ContextIn(BaseModel):
    """The whole context: lists left out become empty."""

    knowledge_uuids: IdList = Field(default_factory=list)
    resource_ids: IdList = Field(default_factory=list)
    policy_ids: IdList = Field(default_factory=list)


class EnvironmentContextIn(BaseModel):
    """An environment's knowledge and resources (its policy ids are left as they are)."""

    knowledge_uuids: IdList = Field(default_factory=list)
    resource_ids: IdList = Field(default_factory=list)


class ContextOut(BaseModel):
    id: uuid.UUID
    entity_type: EntityType
    entity_id: str
    organization_id: str
    knowledge_uuids: list[str]
    resource_ids: list[str]
    policy_ids: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ContextOut:
        return cls(**dict(row))


class ContextReset(ContextOut):
    deleted: bool = True


class EnvironmentContextOut(BaseModel):
    id: uuid.UUID
    environment_id: uuid.UUID
    organization_id: str
    knowledge_uuids: list[str]
    resource_ids: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> EnvironmentContextOut:
        data = dict(row)
        return cls(**data, environment_id=uuid.UUID(data["entity_id"]))


class EnvironmentContextReset(EnvironmentContextOut):
    deleted: bool = True


class TeamContextOut(BaseModel):
    id: uuid.UUID
    team_id: uuid.UUID
    organization_id: str
    knowledge_uuids: list[str]
    resource_ids: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> TeamContextOut:
        data = dict(row)
        return cls(**data, team_id=uuid.UUID(data["entity_id"]))


class TeamContextReset(TeamContextOut):
    deleted: bool = True


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


async def _read(db: Queryable, org: str, kind: str, ident: str) -> asyncpg.Record:
    """The entity's context row, created empty when it has none."""
    select = (
        f"SELECT {COLUMNS} FROM entity_contexts "
        "WHERE organization_id = $1 AND entity_type = $2 AND entity_id = $3"
    )
    row: asyncpg.Record | None = await db.fetchrow(select, org, kind, ident)
    if row is None:
        await db.execute(
            "INSERT INTO entity_contexts (id, organization_id, entity_type, entity_id) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            uuid.uuid4(),
            org,
            kind,
            ident,
        )
        row = await db.fetchrow(select, org, kind, ident)
    assert row is not None
    return row


async def _write(
    db: Queryable, org: str, kind: str, ident: str, values: dict[str, list[str]]
) -> asyncpg.Record:
    """Replace the lists in `values` (and only those), creating the row if needed."""
    names = list(values)
    columns = ", ".join(names)
    params = ", ".join(f"${n}" for n in range(5, 5 + len(names)))
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in names)
    row: asyncpg.Record | None = await db.fetchrow(
        f"INSERT INTO entity_contexts (id, organization_id, entity_type, entity_id, {columns}) "
        f"VALUES ($1, $2, $3, $4, {params}) "
        "ON CONFLICT (organization_id, entity_type, entity_id) "
        f"DO UPDATE SET {updates}, updated_at = now() RETURNING {COLUMNS}",
        uuid.uuid4(),
        org,
        kind,
        ident,
        *(_unique(values[name]) for name in names),
    )
    assert row is not None
    return row


async def _entity(call: Call) -> tuple[EntityType, str]:
    return await entity_id_for(call.db, call.org, call.path["entity_type"], call.path["entity_id"])


async def _environment(call: Call) -> str:
    _, ident = await entity_id_for(call.db, call.org, "environment", call.path["environment_id"])
    return ident


async def _team(call: Call) -> str:
    _, ident = await entity_id_for(call.db, call.org, "team", call.path["team_id"])
    return ident


NO_KNOWLEDGE: dict[str, list[str]] = {"knowledge_uuids": [], "resource_ids": []}


EMPTY: dict[str, list[str]] = {"knowledge_uuids": [], "resource_ids": [], "policy_ids": []}


@router.get("/api/v1/context/resolve/{entity_type}/{entity_id}")
async def resolve_entity_context(call: Call) -> ResolvedContext:
    """The entity's context merged along organization → projects → environments → team
    environments → team → agent: each list is the union in that order, first seen first;
    `layers` shows each layer's own lists."""
    return await resolve_context(
        call.db, call.org, call.path["entity_type"], call.path["entity_id"]
    )


@router.get("/api/v1/agents/{agent_id}/context/resolved")
async def resolved_agent_context(call: Call) -> ResolvedContext:
    """The agent's resolved context (as `/context/resolve/agent/{agent_id}`)."""
    return await resolve_context(call.db, call.org, "agent", call.path["agent_id"])


@router.get("/api/v1/context/{entity_type}/{entity_id}")
async def get_context(call: Call) -> ContextOut:
    """An entity's own context (`organization` takes the organization's id); created empty on
    first read. Entity types: organization, project, environment, team, agent."""
    kind, ident = await _entity(call)
    return ContextOut.from_row(await _read(call.db, call.org, kind, ident))


@router.put("/api/v1/context/{entity_type}/{entity_id}")
async def put_context(call: Call, body: ContextIn) -> ContextOut:
    """Replace an entity's context; lists left out become empty, duplicates are dropped."""
    kind, ident = await _entity(call)
    values: dict[str, Any] = body.model_dump()
    return ContextOut.from_row(await _write(call.db, call.org, kind, ident, values))


@router.delete("/api/v1/context/{entity_type}/{entity_id}")
async def delete_context(call: Call) -> ContextReset:
    """Reset an entity's context to empty lists; answers the empty context."""
    kind, ident = await _entity(call)
    row = await _write(call.db, call.org, kind, ident, EMPTY)
    return ContextReset(**ContextOut.from_row(row).model_dump())


@router.get("/api/v1/environments/{environment_id}/context")
async def get_environment_context(call: Call) -> EnvironmentContextOut:
    """The environment's knowledge and resources; created empty on first read."""
    ident = await _environment(call)
    return EnvironmentContextOut.from_row(await _read(call.db, call.org, "environment", ident))


@router.put("/api/v1/environments/{environment_id}/context")
async def put_environment_context(call: Call, body: EnvironmentContextIn) -> EnvironmentContextOut:
    """Replace the environment's knowledge and resources (its policy ids stay)."""
    ident = await _environment(call)
    row = await _write(call.db, call.org, "environment", ident, body.model_dump())
    return EnvironmentContextOut.from_row(row)


@router.delete("/api/v1/environments/{environment_id}/context")
async def delete_environment_context(call: Call) -> EnvironmentContextReset:
    """Empty the environment's knowledge and resources (its policy ids stay)."""
    ident = await _environment(call)
    row = await _write(call.db, call.org, "environment", ident, NO_KNOWLEDGE)
    return EnvironmentContextReset(**EnvironmentContextOut.from_row(row).model_dump())


@router.get("/api/v1/teams/{team_id}/context")
async def get_team_context(call: Call) -> TeamContextOut:
    """The team's knowledge and resources; created empty on first read."""
    return TeamContextOut.from_row(await _read(call.db, call.org, "team", await _team(call)))


@router.put("/api/v1/teams/{team_id}/context")
async def put_team_context(call: Call, body: EnvironmentContextIn) -> TeamContextOut:
    """Replace the team's knowledge and resources (its policy ids stay)."""
    row = await _write(call.db, call.org, "team", await _team(call), body.model_dump())
    return TeamContextOut.from_row(row)


@router.delete("/api/v1/teams/{team_id}/context")
async def delete_team_context(call: Call) -> TeamContextReset:
    """Empty the team's knowledge and resources (its policy ids stay)."""
    row = await _write(call.db, call.org, "team", await _team(call), NO_KNOWLEDGE)
    return TeamContextReset(**TeamContextOut.from_row(row).model_dump())


@router.get("/api/v1/teams/{team_id}/context/resolved")
async def resolved_team_context(call: Call) -> ResolvedContext:
    """The team's resolved context (as `/context/resolve/team/{team_id}`)."""
    return await resolve_context(call.db, call.org, "team", call.path["team_id"])
