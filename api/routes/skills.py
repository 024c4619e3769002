"""`/api/v1/skills` and its 0.3 name `/api/v1/toolsets` (reference §3.10): the catalogue of
built-in skill types, the organization's skills, their associations with agents, teams and
environments, and the skills an agent or team resolves to. Every route is served under both
names from one implementation (`skills` becomes `toolsets` throughout the path).

Skills are written by admin keys only: a skill decides what runs on the workers (a shell's
command lists, an MCP server's command). Attaching an existing skill is a member's write."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import AliasChoices, BaseModel, Field, RootModel, field_validator

from api.errors import ApiError, not_found
from api.pagination import ListQuery, Page, fetch_page
from api.routing import Call, Handler, Router
from api.schemas import Deleted, PatchBody
from controlplane.context import entity_id_for
from controlplane.db import conflict_on_duplicate, patch_assignments
from controlplane.skills import (
    ASSOCIATION_ENTITIES,
    AssociationEntity,
    ResolvedSkill,
    SkillOut,
    resolve_agent_skills,
    resolve_team_skills,
)
from controlplane.snapshot import SKILL_COLUMNS
from controlplane.tool_catalogue import (
    SKILL_TYPES,
    ConfigIssue,
    SkillTypeInfo,
    config_issues,
    stored_config,
    tool_specs,
)

router = Router("skills")

TYPE_DOC = "One of the catalogue's types: " + ", ".join(SKILL_TYPES)


def _alias(handler: Handler) -> Handler:
    """The same handler under another name, so the OpenAPI operation ids stay unique."""

    async def alias(call: Call, **kwargs: Any) -> Any:
        return await handler(call, **kwargs)

    functools.update_wrapper(alias, handler)
    name = handler.__name__.replace("skill", "toolset")
    alias.__name__ = alias.__qualname__ = name if name != handler.__name__ else f"{name}_toolsets"
    return alias


def route(method: str, path: str, **kw: Any) -> Callable[[Handler], Handler]:
    """Register at `path` (under /api/v1/skills) and at its /api/v1/toolsets twin."""

    def register(handler: Handler) -> Handler:
        router.route(method, path, **kw)(handler)
        router.route(method, path.replace("skills", "toolsets"), **kw)(_alias(handler))
        return handler

    return register


# --- the catalogue ------------------------------------------------------------------------------


class SkillTypeOut(BaseModel):
    type: str
    name: str
    description: str
    icon: str
    risk_level: str
    tools: list[str]


class SkillVariantOut(BaseModel):
    id: str
    name: str
    type: str
    description: str
    icon: str
    configuration: dict[str, Any]


class ToolDefinition(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]


class SkillDefinition(BaseModel):
    type: str
    name: str
    description: str
    icon: str
    risk_level: str
    tools: list[ToolDefinition] = Field(description="The tools, with the default configuration")
    config_schema: dict[str, Any]
    default_configuration: dict[str, Any]
    variants: list[SkillVariantOut]


class SkillTypeList(RootModel[list[SkillTypeOut]]):
    pass


class SkillVariantList(RootModel[list[SkillVariantOut]]):
    pass


class SkillDefinitionList(RootModel[list[SkillDefinition]]):
    pass


class ConfigurationBody(RootModel[dict[str, Any]]):
    """A configuration, or `{"configuration": {...}}`."""


class ValidateBody(BaseModel):
    type: str = Field(validation_alias=AliasChoices("type", "skill_type"), description=TYPE_DOC)
    configuration: dict[str, Any] = Field(default_factory=dict)


class Validation(BaseModel):
    valid: bool
    errors: list[str]


def _variants(info: SkillTypeInfo) -> list[SkillVariantOut]:
    return [
        SkillVariantOut(
            id=variant.id,
            name=variant.name,
            type=info.type,
            description=variant.description,
            icon=info.icon,
            configuration=dict(variant.configuration),
        )
        for variant in info.variants
    ]


def _definition(info: SkillTypeInfo) -> SkillDefinition:
    specs = tool_specs("", info.name, info.type, {}) if info.tools else []
    described = {tool.name: tool.description for tool in info.tools}
    return SkillDefinition(
        type=info.type,
        name=info.name,
        description=info.description,
        icon=info.icon,
        risk_level=info.risk_level,
        tools=[
            ToolDefinition(
                name=spec.name,
                description=described.get(spec.name, spec.description),
                input_schema=spec.input_schema,
            )
            for spec in specs
        ],
        config_schema=info.config_schema(),
        default_configuration=info.default_configuration(),
        variants=_variants(info),
    )


def _type_info(call: Call) -> SkillTypeInfo:
    skill_type = call.path["skill_type"]
    info = SKILL_TYPES.get(skill_type)
    if info is None:
        raise not_found("Skill type", skill_type)
    return info


def _messages(issues: list[ConfigIssue]) -> list[str]:
    return [f"{i.field}: {i.message}" if i.field else i.message for i in issues]


@route("GET", "/api/v1/skills/types")
async def list_skill_types(call: Call) -> SkillTypeList:
    """The built-in skill types and the tools each gives."""
    return SkillTypeList(
        [
            SkillTypeOut(
                type=info.type,
                name=info.name,
                description=info.description,
                icon=info.icon,
                risk_level=info.risk_level,
                tools=[tool.name for tool in info.tools],
            )
            for info in SKILL_TYPES.values()
        ]
    )


@route("GET", "/api/v1/skills/templates")
async def list_skill_templates(call: Call) -> SkillVariantList:
    """Ready-made configurations of every type, to create skills from."""
    return SkillVariantList([v for info in SKILL_TYPES.values() for v in _variants(info)])


@route("GET", "/api/v1/skills/definitions")
async def list_skill_definitions(call: Call) -> SkillDefinitionList:
    """Every type with its tools, configuration schema, defaults and variants."""
    return SkillDefinitionList([_definition(info) for info in SKILL_TYPES.values()])


@route("GET", "/api/v1/skills/definitions/{skill_type}")
async def get_skill_definition(call: Call) -> SkillDefinition:
    """One type's definition; 404 for a type not in the catalogue."""
    return _definition(_type_info(call))


@route("GET", "/api/v1/skills/definitions/{skill_type}/variants")
async def list_skill_variants(call: Call) -> SkillVariantList:
    """One type's ready-made configurations."""
    return SkillVariantList(_variants(_type_info(call)))


@route("POST", "/api/v1/skills/definitions/{skill_type}/validate", role="viewer")
async def validate_skill_definition(call: Call, body: ConfigurationBody) -> Validation:
    """Whether a configuration is valid for the type; every problem is listed."""
    info = _type_info(call)
    configuration = body.root
    if set(configuration) == {"configuration"} and isinstance(configuration["configuration"], dict):
        configuration = configuration["configuration"]
    errors = _messages(config_issues(info.type, configuration))
    return Validation(valid=not errors, errors=errors)


@route("POST", "/api/v1/skills/validate", role="viewer")
async def validate_skill(call: Call, body: ValidateBody) -> Validation:
    """Whether `configuration` is valid for `type` (an unknown type is one of the errors)."""
    errors = _messages(config_issues(body.type, body.configuration))
    return Validation(valid=not errors, errors=errors)


# --- skills ---------------------------------------------------------------------------------------


def _known_type(value: str | None) -> str | None:
    if value is not None and value not in SKILL_TYPES:
        raise ValueError(f"Unknown skill type '{value}'; known: {', '.join(SKILL_TYPES)}")
    return value


class SkillCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    type: str = Field(validation_alias=AliasChoices("type", "skill_type"), description=TYPE_DOC)
    description: str | None = None
    icon: str = Field("Wrench", min_length=1, max_length=100)
    enabled: bool = True
    configuration: dict[str, Any] = Field(
        default_factory=dict, description="The type's fields (see /skills/definitions)"
    )

    check_type = field_validator("type")(_known_type)


class SkillUpdate(PatchBody):
    required_if_sent = ("name", "type", "icon", "enabled", "configuration")

    name: str | None = Field(None, min_length=1, max_length=200)
    type: str | None = Field(
        None, validation_alias=AliasChoices("type", "skill_type"), description=TYPE_DOC
    )
    description: str | None = None
    icon: str | None = Field(None, min_length=1, max_length=100)
    enabled: bool | None = None
    configuration: dict[str, Any] | None = Field(None, description="Replaces the stored one")

    check_type = field_validator("type")(_known_type)


class SkillQuery(ListQuery):
    type: str | None = Field(None, description="Only skills of this type")
    enabled: bool | None = None


def _checked_config(
    skill_type: str, configuration: dict[str, Any], field: str = "configuration"
) -> dict[str, Any]:
    """The configuration to store; 422 listing every problem, each under `field`."""
    issues = config_issues(skill_type, configuration)
    if issues:
        raise ApiError(
            422,
            f"Invalid {field} for a {skill_type} skill: {'; '.join(_messages(issues))}",
            details={
                "validation_errors": [
                    {
                        "field": f"{field}.{issue.field}" if issue.field else field,
                        "message": issue.message,
                        "type": issue.type,
                        "location": "body",
                    }
                    for issue in issues
                ]
            },
        )
    return stored_config(skill_type, configuration)


async def _get_skill(call: Call, skill_id: uuid.UUID) -> SkillOut:
    row = await call.db.fetchrow(
        f"SELECT {SKILL_COLUMNS} FROM skills WHERE id = $1 AND organization_id = $2",
        skill_id,
        call.org,
    )
    if row is None:
        raise not_found("Skill", skill_id)
    return SkillOut.from_row(row)


# --- associations -----------------------------------------------------------------------------


class AssociationIn(BaseModel):
    skill_id: uuid.UUID
    configuration_override: dict[str, Any] | None = Field(
        None, description="Merged over the skill's configuration for this entity"
    )


class AssociateIn(AssociationIn):
    entity_type: str = Field(description="agent, team or environment")
    entity_id: str


class AssociationOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    skill_id: uuid.UUID
    entity_type: AssociationEntity
    entity_id: uuid.UUID
    configuration_override: dict[str, Any]
    configuration: dict[str, Any] = Field(description="The skill's, with the override merged")
    created_at: datetime
    skill: SkillOut

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> AssociationOut:
        skill = SkillOut(
            id=row["skill_id"],
            organization_id=row["organization_id"],
            name=row["name"],
            type=row["type"],
            description=row["description"],
            icon=row["icon"],
            enabled=row["enabled"],
            configuration=row["configuration"],
            created_at=row["skill_created_at"],
            updated_at=row["skill_updated_at"],
        )
        return cls(
            id=row["id"],
            organization_id=row["organization_id"],
            skill_id=row["skill_id"],
            entity_type=row["entity_type"],
            entity_id=row["entity_id"],
            configuration_override=row["configuration_override"],
            configuration={**row["configuration"], **row["configuration_override"]},
            created_at=row["created_at"],
            skill=skill,
        )


ASSOCIATION_TABLE = "skill_associations a JOIN skills s ON s.id = a.skill_id"
ASSOCIATION_COLUMNS = (
    "a.id, a.organization_id, a.skill_id, a.entity_type, a.entity_id, a.configuration_override, "
    "a.created_at, s.name, s.skill_type AS type, s.description, s.icon, s.enabled, "
    "s.configuration, s.created_at AS skill_created_at, s.updated_at AS skill_updated_at"
)


class ResolvedSkillList(RootModel[list[ResolvedSkill]]):
    pass


async def _entity(call: Call, entity_type: str, raw_id: str) -> tuple[str, uuid.UUID]:
    """An entity skills attach to, checked to exist in the organization (400 / 404)."""
    if entity_type not in ASSOCIATION_ENTITIES:
        raise ApiError(
            400,
            f"Unknown entity type '{entity_type}'; expected one of "
            f"{', '.join(ASSOCIATION_ENTITIES)}",
        )
    kind, ident = await entity_id_for(call.db, call.org, entity_type, raw_id)
    return kind, uuid.UUID(ident)


async def _associate(
    call: Call, entity_type: str, raw_id: str, body: AssociationIn
) -> AssociationOut:
    kind, entity_id = await _entity(call, entity_type, raw_id)
    skill = await _get_skill(call, body.skill_id)
    override = body.configuration_override or {}
    _checked_config(skill.type, {**skill.configuration, **override}, "configuration_override")
    association_id = uuid.uuid4()
    with conflict_on_duplicate(f"Skill '{skill.id}' is already associated with this {kind}"):
        await call.db.execute(
            "INSERT INTO skill_associations (id, organization_id, skill_id, entity_type, "
            "entity_id, configuration_override, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            association_id,
            call.org,
            skill.id,
            kind,
            entity_id,
            override,
            call.principal.actor,
        )
    row = await call.db.fetchrow(
        f"SELECT {ASSOCIATION_COLUMNS} FROM {ASSOCIATION_TABLE} WHERE a.id = $1", association_id
    )
    assert row is not None
    return AssociationOut.from_row(row)


@route("POST", "/api/v1/skills/associate", status=201)
async def associate_skill(call: Call, body: AssociateIn) -> AssociationOut:
    """Attach a skill to an agent, team or environment (the official client's call)."""
    return await _associate(call, body.entity_type, body.entity_id, body)


@route("GET", "/api/v1/skills/associations/agents/{agent_id}/skills/resolved")
async def resolved_agent_skills(call: Call) -> ResolvedSkillList:
    """The agent's enabled skills: its environments' → its team's environments' → its team's →
    its own, a later layer overriding an earlier one."""
    agent_id = call.path_uuid("agent_id", "Agent")
    return ResolvedSkillList(await resolve_agent_skills(call.db, call.org, agent_id))


@route("GET", "/api/v1/skills/associations/teams/{team_id}/skills/resolved")
async def resolved_team_skills(call: Call) -> ResolvedSkillList:
    """The team's enabled skills: its environments' then its own."""
    team_id = call.path_uuid("team_id", "Team")
    return ResolvedSkillList(await resolve_team_skills(call.db, call.org, team_id))


@route("POST", "/api/v1/skills/associations/{entity_type}/{entity_id}/skills", status=201)
async def create_skill_association(call: Call, body: AssociationIn) -> AssociationOut:
    """Attach a skill to an agent, team or environment, with an optional override."""
    return await _associate(call, call.path["entity_type"], call.path["entity_id"], body)


@route("GET", "/api/v1/skills/associations/{entity_type}/{entity_id}/skills")
async def list_skill_associations(call: Call, query: ListQuery) -> Page[AssociationOut]:
    """The skills attached directly to an entity, oldest first."""
    kind, entity_id = await _entity(call, call.path["entity_type"], call.path["entity_id"])
    rows, total = await fetch_page(
        call.db,
        table=ASSOCIATION_TABLE,
        columns=ASSOCIATION_COLUMNS,
        where="a.organization_id = $1 AND a.entity_type = $2 AND a.entity_id = $3",
        args=[call.org, kind, entity_id],
        query=query,
        order="a.created_at, a.id",
    )
    items = [AssociationOut.from_row(row) for row in rows]
    return Page[AssociationOut](items=items, total=total, limit=query.limit, offset=query.start)


@route("DELETE", "/api/v1/skills/associations/{entity_type}/{entity_id}/skills/{skill_id}")
async def delete_skill_association(call: Call) -> Deleted:
    """Detach a skill from an entity; answers the association's id."""
    kind, entity_id = await _entity(call, call.path["entity_type"], call.path["entity_id"])
    skill_id = call.path_uuid("skill_id", "Skill")
    deleted = await call.db.fetchval(
        "DELETE FROM skill_associations WHERE organization_id = $1 AND entity_type = $2 "
        "AND entity_id = $3 AND skill_id = $4 RETURNING id",
        call.org,
        kind,
        entity_id,
        skill_id,
    )
    if deleted is None:
        raise not_found("Skill association", skill_id)
    return Deleted(id=deleted)


# --- skill CRUD (after the fixed paths above, which {skill_id} would also match) -----------------


@route("POST", "/api/v1/skills", status=201, role="admin")
async def create_skill(call: Call, body: SkillCreate) -> SkillOut:
    """Create a skill; its configuration is checked against its type (422 lists every problem)
    and its name is unique in the organization (409)."""
    configuration = _checked_config(body.type, body.configuration)
    with conflict_on_duplicate(f"A skill named '{body.name}' exists"):
        row = await call.db.fetchrow(
            "INSERT INTO skills (id, organization_id, name, skill_type, description, icon, "
            "enabled, configuration, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            f"RETURNING {SKILL_COLUMNS}",
            uuid.uuid4(),
            call.org,
            body.name,
            body.type,
            body.description,
            body.icon,
            body.enabled,
            configuration,
            call.principal.actor,
        )
    assert row is not None
    return SkillOut.from_row(row)


@route("GET", "/api/v1/skills")
async def list_skills(call: Call, query: SkillQuery) -> Page[SkillOut]:
    """The organization's skills, oldest first."""
    rows, total = await fetch_page(
        call.db,
        table="skills",
        columns=SKILL_COLUMNS,
        where="organization_id = $1",
        args=[call.org],
        query=query,
        filters={"skill_type": query.type, "enabled": query.enabled},
    )
    items = [SkillOut.from_row(row) for row in rows]
    return Page[SkillOut](items=items, total=total, limit=query.limit, offset=query.start)


@route("GET", "/api/v1/skills/{skill_id}")
async def get_skill(call: Call) -> SkillOut:
    """One skill."""
    return await _get_skill(call, call.path_uuid("skill_id", "Skill"))


@route("PATCH", "/api/v1/skills/{skill_id}", role="admin")
async def update_skill(call: Call, body: SkillUpdate) -> SkillOut:
    """Change the fields sent; a new type or configuration is checked like at creation."""
    skill_id = call.path_uuid("skill_id", "Skill")
    changes = body.changes()
    async with call.db.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(
            "SELECT skill_type, configuration FROM skills WHERE id = $1 AND organization_id = $2 "
            "FOR UPDATE",
            skill_id,
            call.org,
        )
        if current is None:
            raise not_found("Skill", skill_id)
        if "type" in changes or "configuration" in changes:
            skill_type = changes.pop("type", current["skill_type"])
            changes["skill_type"] = skill_type
            changes["configuration"] = _checked_config(
                skill_type, changes.get("configuration", current["configuration"])
            )
        assignments, values = patch_assignments(
            changes,
            ["name", "skill_type", "description", "icon", "enabled", "configuration"],
            first_param=3,
        )
        with conflict_on_duplicate("Another skill has that name"):
            row = await conn.fetchrow(
                f"UPDATE skills SET {assignments} WHERE id = $1 AND organization_id = $2 "
                f"RETURNING {SKILL_COLUMNS}",
                skill_id,
                call.org,
                *values,
            )
    assert row is not None
    return SkillOut.from_row(row)


@route("DELETE", "/api/v1/skills/{skill_id}", role="admin")
async def delete_skill(call: Call) -> Deleted:
    """Delete a skill and its associations."""
    return await call.delete_owned("skills", "skill_id", "Skill")
