"""`/api/v1/teams` (reference §3.3): team CRUD and membership. The rules of a team and what a
write does to its members are the domain's (controlplane/teams.py); executing a team is
api/routes/execute.py's, its context api/routes/context.py's."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field

from api.pagination import ListQuery, Page
from api.routing import Call, Router
from api.schemas import Deleted, PatchBody
from controlplane import teams
from controlplane.environments import ExecutionEnvironmentIn
from controlplane.models import RuntimeId

router = Router("teams")

TeamStatus = Literal["active", "inactive", "archived", "idle"]
CoordinationType = Literal["leader", "sequential", "parallel"]
COORDINATION_DOC = (
    "leader (default): the team's model leads and delegates to members with delegate_task; "
    "sequential: members in order, each given the answers before it; parallel: all members at "
    "once, then the team's model (if it has one) sums up"
)
MAX_OUTPUT_TOKENS = 1_000_000


class TeamLlm(BaseModel, extra="allow"):
    """The leader's model and its settings (Agno's `llm`)."""

    model: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="A model id or value; default: the organization's default model",
    )
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0, le=MAX_OUTPUT_TOKENS)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    stop: list[str] = Field(default_factory=list)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)


class TeamReasoning(BaseModel, extra="allow"):
    enabled: bool = False
    model: str | None = None
    agent_id: uuid.UUID | None = None
    min_steps: int = Field(1, ge=1, le=1000)
    max_steps: int = Field(10, ge=1, le=1000)


class TeamConfiguration(BaseModel, extra="allow"):
    """Agno-style team configuration (reference §3.3); these keys have a meaning here."""

    member_ids: list[uuid.UUID] = Field(
        default_factory=list,
        description="The members, in order: agents of your organization. An agent is on one "
        "team at a time; listing it here takes it off its old team.",
    )
    instructions: str | list[str] | None = Field(None, description="The leader's instructions")
    llm: TeamLlm = Field(default_factory=TeamLlm)
    one_shot: bool = Field(
        False,
        description="false (default): after each answer the execution waits for the next "
        "message until it is marked done; true: it completes after one answer",
    )
    reasoning: TeamReasoning | None = None
    tools: list[Any] = Field(default_factory=list)
    knowledge_base: dict[str, Any] = Field(default_factory=dict)
    session: dict[str, Any] = Field(default_factory=dict)
    dependencies: dict[str, Any] = Field(default_factory=dict)
    markdown: bool = True
    add_datetime_to_instructions: bool = False
    structured_outputs: bool = False
    response_model: str | None = None
    debug_mode: bool = False
    monitoring: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)


class TeamCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    status: TeamStatus = "active"
    runtime: RuntimeId = "default"
    coordination_type: CoordinationType = Field("leader", description=COORDINATION_DOC)
    configuration: TeamConfiguration = Field(default_factory=TeamConfiguration)
    skill_ids: list[uuid.UUID] = Field(default_factory=list)
    skill_configurations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    environment_ids: list[uuid.UUID] = Field(
        default_factory=list, description="Environments of the organization"
    )
    execution_environment: ExecutionEnvironmentIn | None = None


class TeamUpdate(PatchBody):
    required_if_sent = (
        "name",
        "status",
        "runtime",
        "coordination_type",
        "configuration",
        "skill_ids",
        "skill_configurations",
        "environment_ids",
        "execution_environment",
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = None
    status: TeamStatus | None = None
    runtime: RuntimeId | None = None
    coordination_type: CoordinationType | None = Field(None, description=COORDINATION_DOC)
    configuration: TeamConfiguration | None = Field(
        None,
        description="Replaces the stored configuration; `member_ids`, when sent, replaces the "
        "members",
    )
    skill_ids: list[uuid.UUID] | None = None
    skill_configurations: dict[str, dict[str, Any]] | None = None
    environment_ids: list[uuid.UUID] | None = None
    execution_environment: ExecutionEnvironmentIn | None = None


class Ref(BaseModel):
    id: uuid.UUID
    name: str


class Member(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    runtime: str
    model_id: str | None
    status: str


class TeamOut(BaseModel):
    """TeamWithAgentsResponse: the team, and its members in order as `agents`."""

    id: uuid.UUID
    organization_id: str
    name: str
    description: str | None
    status: TeamStatus
    runtime: RuntimeId
    coordination_type: CoordinationType
    configuration: dict[str, Any]
    model_id: str | None = Field(description="The stored value of configuration.llm.model")
    created_at: datetime
    updated_at: datetime
    last_active_at: datetime | None
    projects: list[Ref]
    environments: list[Ref]
    environment_ids: list[uuid.UUID]
    skill_ids: list[uuid.UUID]
    skills: list[dict[str, Any]]
    skill_configurations: dict[str, dict[str, Any]]
    execution_environment: dict[str, Any]
    agents: list[Member]

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> TeamOut:
        data = dict(row)
        # The members there are, in their order (controlplane/teams.py).
        data["configuration"] = {
            **data["configuration"],
            "member_ids": [agent["id"] for agent in data["agents"]],
        }
        return cls(**data, skills=[])


class TeamQuery(ListQuery):
    status_filter: TeamStatus | None = None
    coordination_type: CoordinationType | None = None


def _values(body: TeamCreate | TeamUpdate) -> dict[str, Any]:
    """The columns a body sets, in their stored form."""
    values = body.model_dump(exclude_unset=not isinstance(body, TeamCreate))
    if body.configuration is not None:
        values["configuration"] = body.configuration.model_dump(mode="json", exclude_none=True)
        if "member_ids" not in body.configuration.model_fields_set:
            # Not sent: the members stay (an empty default would remove them all).
            values["configuration"].pop("member_ids")
    for key in ("skill_ids", "environment_ids"):
        if values.get(key) is not None:
            values[key] = [str(i) for i in dict.fromkeys(values[key])]
    if "execution_environment" in values:
        environment = body.execution_environment
        values["execution_environment"] = (
            environment.model_dump(exclude_none=True) if environment is not None else {}
        )
    return values


@router.post("/api/v1/teams", status=201)
async def create_team(call: Call, body: TeamCreate) -> TeamOut:
    """Create a team with its members (each an agent of your organization; a claude_code team
    only claude_code ones: 400 names the others); it joins the Default project."""
    row = await teams.create_team(call.db, call.org, call.principal.actor, _values(body))
    return TeamOut.from_row(row)


@router.get("/api/v1/teams")
async def list_teams(call: Call, query: TeamQuery) -> Page[TeamOut]:
    """The organization's teams with their members, oldest first."""
    rows, total = await teams.TEAMS.page(
        call.db,
        call.org,
        limit=query.limit,
        offset=query.start,
        filters={"status": query.status_filter, "coordination_type": query.coordination_type},
    )
    items = [TeamOut.from_row(row) for row in rows]
    return Page[TeamOut](items=items, total=total, limit=query.limit, offset=query.start)


@router.get("/api/v1/teams/{team_id}")
async def get_team(call: Call) -> TeamOut:
    """One team with its members in order."""
    row = await teams.TEAMS.get(call.db, call.org, call.path_uuid("team_id", "Team"))
    return TeamOut.from_row(row)


@router.patch("/api/v1/teams/{team_id}")
async def update_team(call: Call, body: TeamUpdate) -> TeamOut:
    """Change the fields sent; a changed runtime, model, membership or environments is checked
    like at creation."""
    team_id = call.path_uuid("team_id", "Team")
    row = await teams.update_team(call.db, call.org, team_id, _values(body))
    return TeamOut.from_row(row)


@router.delete("/api/v1/teams/{team_id}")
async def delete_team(call: Call) -> Deleted:
    """Delete a team: its members stay as agents without a team; its project links, policy
    and skill associations and context go with it."""
    team_id = call.path_uuid("team_id", "Team")
    await teams.delete_team(call.db, call.org, team_id)
    return Deleted(id=team_id)


@router.post("/api/v1/teams/{team_id}/agents/{agent_id}")
async def add_member(call: Call) -> TeamOut:
    """Add an agent to the team (last in order), taking it off any other team."""
    team_id = call.path_uuid("team_id", "Team")
    agent_id = call.path_uuid("agent_id", "Agent")
    return TeamOut.from_row(await teams.add_member(call.db, call.org, team_id, agent_id))


@router.delete("/api/v1/teams/{team_id}/agents/{agent_id}")
async def remove_member(call: Call) -> TeamOut:
    """Take an agent off the team (404 if it is not a member)."""
    team_id = call.path_uuid("team_id", "Team")
    agent_id = call.path_uuid("agent_id", "Member")
    return TeamOut.from_row(await teams.remove_member(call.db, call.org, team_id, agent_id))
