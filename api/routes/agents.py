"""`/api/v1/agents` (reference §3.2): agent CRUD. The system prompt lives in
`configuration.system_prompt`, as in Kubiya, and is also returned as `system_prompt`.
A new agent joins the organization's Default project."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import AliasChoices, BaseModel, Field

from api.errors import ApiError, not_found
from api.pagination import ListQuery, Page, fetch_page, page_of
from api.routing import Call, Router
from api.schemas import Deleted, PatchBody
from controlplane.db import conflict_on_duplicate, patch_assignments
from controlplane.environments import ExecutionEnvironmentIn
from controlplane.models import (
    RuntimeId,
    check_runtime_model,
    config_errors,
    default_model_row,
)
from controlplane.projects import default_project_id

router = Router("agents")

AgentStatus = Literal["idle", "running", "paused", "completed", "failed", "stopped"]
# Fields of `configuration` that a PATCH sending a new configuration keeps unless it sets them.
KEPT_CONFIGURATION = ("system_prompt", "one_shot")
ONE_SHOT_DOC = (
    "false (default): after each turn the execution waits for the next message "
    "(human in the loop) until it is marked done; true: the execution completes after one turn"
)
COLUMNS = (
    "id, organization_id, name, description, status, capabilities, configuration, model_id, "
    "llm_config, runtime, runner_name, team_id, created_at, updated_at, last_active_at, state, "
    "error_message, skill_ids, skill_configurations, environment_ids, execution_environment, "
    "(SELECT coalesce(jsonb_agg(jsonb_build_object('id', p.id, 'name', p.name) "
    "ORDER BY p.created_at, p.id), '[]') FROM project_agents pa JOIN projects p "
    "ON p.id = pa.project_id AND p.organization_id = agents.organization_id "
    "WHERE pa.agent_id = agents.id) AS projects, "
    "(SELECT coalesce(jsonb_agg(jsonb_build_object('id', e.id, 'name', e.name) "
    "ORDER BY x.ord), '[]') FROM jsonb_array_elements_text(agents.environment_ids) "
    "WITH ORDINALITY AS x(env_id, ord) JOIN environments e "
    "ON e.id = x.env_id::uuid AND e.organization_id = agents.organization_id) AS environments"
)


# Sanity bounds, far above what any model or turn needs.
MAX_TURN_SECONDS = 24 * 3600
MAX_OUTPUT_TOKENS = 1_000_000


class AgentConfiguration(BaseModel, extra="allow"):
    """Free-form agent configuration; these keys have a meaning."""

    system_prompt: str | None = Field(None, description="The agent's system prompt")
    one_shot: bool = Field(False, description=ONE_SHOT_DOC)
    timeout: float | None = Field(
        None, gt=0, le=MAX_TURN_SECONDS, description="Seconds per turn (claude_code)"
    )
    max_tokens: int | None = Field(
        None, gt=0, le=MAX_OUTPUT_TOKENS, description="Output tokens per model call"
    )


CONFIGURATION_DOC = (
    "Agent configuration. `system_prompt` is stored here; `one_shot`: " + ONE_SHOT_DOC + "."
)
MODEL_DOC = (
    "A model id or value (alias `model`); default: the organization's default model. "
    "Stored as the model's value."
)


class AgentCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    system_prompt: str | None = Field(None, description="Stored as configuration.system_prompt")
    capabilities: list[str] = Field(default_factory=list)
    configuration: AgentConfiguration = Field(
        default_factory=AgentConfiguration, description=CONFIGURATION_DOC
    )
    model_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        validation_alias=AliasChoices("model_id", "model"),
        description=MODEL_DOC,
    )
    llm_config: dict[str, Any] = Field(default_factory=dict)
    runtime: RuntimeId = "default"
    runner_name: str | None = None
    team_id: uuid.UUID | None = None
    environment_ids: list[uuid.UUID] = Field(
        default_factory=list, description="Environments of the organization"
    )
    skill_ids: list[uuid.UUID] = Field(default_factory=list)
    skill_configurations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    execution_environment: ExecutionEnvironmentIn | None = None


class AgentUpdate(PatchBody):
    required_if_sent = (
        "name",
        "capabilities",
        "configuration",
        "model_id",
        "llm_config",
        "runtime",
        "environment_ids",
        "skill_ids",
        "skill_configurations",
        "execution_environment",
        "status",
        "state",
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = None
    system_prompt: str | None = Field(None, description="null removes the system prompt")
    capabilities: list[str] | None = None
    configuration: AgentConfiguration | None = Field(
        None,
        description=CONFIGURATION_DOC + " Replaces the stored configuration, but keeps "
        "system_prompt and one_shot unless they are sent.",
    )
    model_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        validation_alias=AliasChoices("model_id", "model"),
        description=MODEL_DOC,
    )
    llm_config: dict[str, Any] | None = None
    runtime: RuntimeId | None = None
    runner_name: str | None = None
    team_id: uuid.UUID | None = None
    environment_ids: list[uuid.UUID] | None = None
    skill_ids: list[uuid.UUID] | None = None
    skill_configurations: dict[str, dict[str, Any]] | None = None
    execution_environment: ExecutionEnvironmentIn | None = None
    status: AgentStatus | None = None
    state: dict[str, Any] | None = None


class Ref(BaseModel):
    id: uuid.UUID
    name: str


class AgentOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    name: str
    description: str | None
    system_prompt: str | None
    status: AgentStatus
    capabilities: list[str]
    configuration: dict[str, Any]
    model_id: str | None
    llm_config: dict[str, Any]
    runtime: RuntimeId
    runner_name: str | None
    team_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    last_active_at: datetime | None
    state: dict[str, Any]
    error_message: str | None
    projects: list[Ref]
    environments: list[Ref]
    environment_ids: list[uuid.UUID]
    skill_ids: list[uuid.UUID]
    skills: list[dict[str, Any]]
    skill_configurations: dict[str, dict[str, Any]]
    execution_environment: dict[str, Any]

    @staticmethod
    def fields(row: asyncpg.Record) -> dict[str, Any]:
        data = dict(row)
        data["system_prompt"] = data["configuration"].get("system_prompt")
        data["skills"] = []
        return data

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> AgentOut:
        return cls.model_validate(cls.fields(row))


class AgentQuery(ListQuery):
    status_filter: AgentStatus | None = None


def _invalid(errors: list[str], **details: Any) -> ApiError:
    return ApiError(
        400,
        f"Invalid agent: {'; '.join(errors)}",
        details={"errors": errors, **details},
    )


async def _environment_errors(call: Call, environment_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """The ids that are not environments of the organization."""
    if not environment_ids:
        return []
    rows = await call.db.fetch(
        "SELECT id FROM environments WHERE organization_id = $1 AND id = ANY($2::uuid[])",
        call.org,
        environment_ids,
    )
    found = {row["id"] for row in rows}
    return [ident for ident in environment_ids if ident not in found]


async def _check(
    call: Call,
    *,
    runtime: str,
    model_id: str | None,
    check_model: bool,
    configuration: dict[str, Any],
    environment_ids: list[uuid.UUID] | None,
    team_id: uuid.UUID | None,
) -> str | None:
    """Every problem with the agent-to-be in one 400; returns the model's stored value."""
    errors: list[str] = []
    value = model_id
    if check_model:
        if model_id is None:
            default = await default_model_row(call.db, call.org)
            if default is None:
                errors.append("No model given and the catalogue has no default model")
            else:
                model_id = default["value"]
        check = await check_runtime_model(call.db, call.org, runtime, model_id, configuration)
        errors.extend(check.errors)
        value = check.model.value if check.model is not None else model_id
    else:
        errors.extend(config_errors(configuration))
    missing = await _environment_errors(call, environment_ids or [])
    errors.extend(f"Environment '{ident}' not found" for ident in missing)
    if team_id is not None and not await call.db.fetchval(
        "SELECT 1 FROM teams WHERE id = $1 AND organization_id = $2", team_id, call.org
    ):
        errors.append(f"Team '{team_id}' not found")
    if errors:
        extra = {"missing_environment_ids": [str(i) for i in missing]} if missing else {}
        raise _invalid(errors, **extra)
    return value


def _configuration(sent: AgentConfiguration) -> dict[str, Any]:
    config = sent.model_dump(exclude_unset=True)
    config.setdefault("one_shot", False)
    return config


def _set_prompt(config: dict[str, Any], prompt: str | None) -> None:
    if prompt is None:
        config.pop("system_prompt", None)
    else:
        config["system_prompt"] = prompt


async def _get(call: Call, agent_id: uuid.UUID) -> AgentOut:
    row = await call.db.fetchrow(
        f"SELECT {COLUMNS} FROM agents WHERE id = $1 AND organization_id = $2",
        agent_id,
        call.org,
    )
    if row is None:
        raise not_found("Agent", agent_id)
    return AgentOut.from_row(row)


@router.post("/api/v1/agents", status=201)
async def create_agent(call: Call, body: AgentCreate) -> AgentOut:
    """Create an agent; its runtime/model pair, environments and team are checked (400 lists
    every problem) and it joins the organization's Default project."""
    configuration = _configuration(body.configuration)
    if "system_prompt" in body.model_fields_set:
        _set_prompt(configuration, body.system_prompt)
    else:
        _set_prompt(configuration, configuration.get("system_prompt"))
    environment_ids = list(dict.fromkeys(body.environment_ids))
    model_value = await _check(
        call,
        runtime=body.runtime,
        model_id=body.model_id,
        check_model=True,
        configuration=configuration,
        environment_ids=environment_ids,
        team_id=body.team_id,
    )
    project_id = await default_project_id(call.db, call.org)
    agent_id = uuid.uuid4()
    async with call.db.acquire() as conn, conn.transaction():
        with conflict_on_duplicate(f"An agent named '{body.name}' exists"):
            await conn.execute(
                "INSERT INTO agents (id, organization_id, name, description, capabilities, "
                "configuration, model_id, llm_config, runtime, runner_name, team_id, skill_ids, "
                "skill_configurations, environment_ids, execution_environment, created_by) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                agent_id,
                call.org,
                body.name,
                body.description,
                body.capabilities,
                configuration,
                model_value,
                body.llm_config,
                body.runtime,
                body.runner_name,
                body.team_id,
                [str(i) for i in dict.fromkeys(body.skill_ids)],
                body.skill_configurations,
                [str(i) for i in environment_ids],
                _execution_environment(body.execution_environment),
                call.principal.actor,
            )
        await conn.execute(
            "INSERT INTO project_agents (id, project_id, agent_id, added_by) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            uuid.uuid4(),
            project_id,
            agent_id,
            call.principal.actor,
        )
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM agents WHERE id = $1", agent_id)
    assert row is not None
    return AgentOut.from_row(row)


def _execution_environment(value: ExecutionEnvironmentIn | None) -> dict[str, Any]:
    return value.model_dump(exclude_none=True) if value is not None else {}


@router.get("/api/v1/agents")
async def list_agents(call: Call, query: AgentQuery) -> Page[AgentOut]:
    """The organization's agents, oldest first."""
    rows, total = await fetch_page(
        call.db,
        table="agents",
        columns=COLUMNS,
        where="organization_id = $1",
        args=[call.org],
        query=query,
        filters={"status": query.status_filter},
        counted="agents",
    )
    return page_of(AgentOut, [AgentOut.fields(row) for row in rows], total, query)


@router.get("/api/v1/agents/{agent_id}")
async def get_agent(call: Call) -> AgentOut:
    """One agent, with its projects and environments."""
    return await _get(call, call.path_uuid("agent_id", "Agent"))


@router.patch("/api/v1/agents/{agent_id}")
async def update_agent(call: Call, body: AgentUpdate) -> AgentOut:
    """Change the fields sent (`status` and `state` too). A changed runtime or model is checked
    like at creation, and so are changed environments and team."""
    agent_id = call.path_uuid("agent_id", "Agent")
    current = await _get(call, agent_id)
    changes = body.changes()
    configuration = dict(current.configuration)
    if body.configuration is not None:
        sent = body.configuration.model_dump(exclude_unset=True)
        kept = {
            k: configuration[k] for k in KEPT_CONFIGURATION if k in configuration and k not in sent
        }
        configuration = {**sent, **kept}
        configuration.setdefault("one_shot", False)
        _set_prompt(configuration, configuration.get("system_prompt"))
    if "system_prompt" in changes:
        _set_prompt(configuration, changes.pop("system_prompt"))
    if configuration != current.configuration:
        changes["configuration"] = configuration
    else:
        changes.pop("configuration", None)
    check_model = "runtime" in changes or "model_id" in changes
    environment_ids = None
    if body.environment_ids is not None:
        environment_ids = list(dict.fromkeys(body.environment_ids))
        changes["environment_ids"] = [str(i) for i in environment_ids]
    model_value = await _check(
        call,
        runtime=changes.get("runtime", current.runtime),
        model_id=changes.get("model_id", current.model_id),
        check_model=check_model,
        configuration=configuration,
        environment_ids=environment_ids,
        team_id=changes.get("team_id"),
    )
    if "model_id" in changes:
        changes["model_id"] = model_value
    if body.skill_ids is not None:
        changes["skill_ids"] = [str(i) for i in dict.fromkeys(body.skill_ids)]
    if "execution_environment" in changes:
        changes["execution_environment"] = _execution_environment(body.execution_environment)
    assignments, values = patch_assignments(
        changes,
        [
            "name",
            "description",
            "capabilities",
            "configuration",
            "model_id",
            "llm_config",
            "runtime",
            "runner_name",
            "team_id",
            "environment_ids",
            "skill_ids",
            "skill_configurations",
            "execution_environment",
            "status",
            "state",
        ],
        first_param=3,
    )
    with conflict_on_duplicate("Another agent has that name"):
        row = await call.db.fetchrow(
            f"UPDATE agents SET {assignments} WHERE id = $1 AND organization_id = $2 "
            f"RETURNING {COLUMNS}",
            agent_id,
            call.org,
            *values,
        )
    if row is None:
        raise not_found("Agent", agent_id)
    return AgentOut.from_row(row)


@router.delete("/api/v1/agents/{agent_id}")
async def delete_agent(call: Call) -> Deleted:
    """Delete an agent and its project memberships."""
    agent_id = call.path_uuid("agent_id", "Agent")
    async with call.db.acquire() as conn, conn.transaction():
        deleted = await conn.fetchval(
            "DELETE FROM agents WHERE id = $1 AND organization_id = $2 RETURNING id",
            agent_id,
            call.org,
        )
        if deleted is None:
            raise not_found("Agent", agent_id)
        await conn.execute("DELETE FROM project_agents WHERE agent_id = $1", agent_id)
    return Deleted(id=agent_id)
