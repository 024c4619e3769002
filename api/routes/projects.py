"""`/api/v1/projects` (reference §3.8). goals, policy_ids, default_model and
restrict_to_environment live inside `settings`, as in Kubiya."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field, field_validator, model_validator

from api.errors import not_found
from api.pagination import ListQuery, Page, fetch_page, page_of
from api.routing import Call, Router
from api.schemas import Deleted, PatchBody
from controlplane.db import conflict_on_duplicate, patch_assignments
from controlplane.projects import default_project_id

router = Router("projects")

ProjectStatus = Literal["active", "archived", "draft"]
Visibility = Literal["private", "org"]
SETTINGS_FIELDS = ("goals", "policy_ids", "default_model", "restrict_to_environment")
# agent_count and team_count are kept by triggers on the membership tables (migration 0016).
COLUMNS = (
    "id, organization_id, name, key, description, settings, status, visibility, owner_id, "
    "owner_email, created_at, updated_at, archived_at, agent_count, team_count"
)


def lift_settings_fields(data: Any) -> Any:
    """goals, policy_ids, default_model and restrict_to_environment may also be sent inside
    `settings`, where they are stored; they are validated like the top-level fields, which win."""
    if isinstance(data, dict) and isinstance(data.get("settings"), dict):
        settings = dict(data["settings"])
        lifted = {name: settings.pop(name) for name in SETTINGS_FIELDS if name in settings}
        data = {**lifted, **data, "settings": settings}
    return data


class ProjectCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    key: str = Field(min_length=1, max_length=50, pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    description: str | None = None
    goals: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    visibility: Visibility = "private"
    restrict_to_environment: bool = False
    policy_ids: list[str] = Field(default_factory=list)
    default_model: str | None = None

    @model_validator(mode="before")
    @classmethod
    def lift(cls, data: Any) -> Any:
        return lift_settings_fields(data)

    @field_validator("key")
    @classmethod
    def uppercase_key(cls, value: str) -> str:
        return value.upper()


class ProjectUpdate(PatchBody):
    required_if_sent = (
        "name",
        "key",
        "settings",
        "status",
        "visibility",
        "policy_ids",
        "restrict_to_environment",
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    key: str | None = Field(None, min_length=1, max_length=50, pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    description: str | None = None
    goals: str | None = None
    settings: dict[str, Any] | None = None
    status: ProjectStatus | None = None
    visibility: Visibility | None = None
    restrict_to_environment: bool | None = None
    policy_ids: list[str] | None = None
    default_model: str | None = None

    @model_validator(mode="before")
    @classmethod
    def lift(cls, data: Any) -> Any:
        return lift_settings_fields(data)

    @field_validator("key")
    @classmethod
    def uppercase_key(cls, value: str | None) -> str | None:
        return value.upper() if value is not None else None


class ProjectOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    name: str
    key: str
    description: str | None
    goals: str | None
    settings: dict[str, Any]
    status: ProjectStatus
    visibility: Visibility
    owner_id: str | None
    owner_email: str | None
    restrict_to_environment: bool
    policy_ids: list[str]
    default_model: str | None
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None
    agent_count: int
    team_count: int

    @staticmethod
    def fields(row: asyncpg.Record) -> dict[str, Any]:
        data = dict(row)
        settings = data["settings"]
        data["goals"] = settings.get("goals")
        data["policy_ids"] = settings.get("policy_ids", [])
        data["default_model"] = settings.get("default_model")
        data["restrict_to_environment"] = settings.get("restrict_to_environment", False)
        return data

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ProjectOut:
        return cls.model_validate(cls.fields(row))


class ProjectQuery(ListQuery):
    status_filter: ProjectStatus | None = None


async def _insert(call: Call, body: ProjectCreate) -> ProjectOut:
    settings = dict(body.settings)
    for name in SETTINGS_FIELDS:
        settings[name] = getattr(body, name)
    with conflict_on_duplicate(f"A project named '{body.name}' or keyed '{body.key}' exists"):
        row = await call.db.fetchrow(
            f"INSERT INTO projects (id, organization_id, name, key, description, settings, "
            f"visibility, owner_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}",
            uuid.uuid4(),
            call.org,
            body.name,
            body.key,
            body.description,
            settings,
            body.visibility,
            call.principal.actor,
        )
    assert row is not None
    return ProjectOut.from_row(row)


async def _get(call: Call, project_id: uuid.UUID) -> ProjectOut:
    row = await call.db.fetchrow(
        f"SELECT {COLUMNS} FROM projects WHERE id = $1 AND organization_id = $2",
        project_id,
        call.org,
    )
    if row is None:
        raise not_found("Project", project_id)
    return ProjectOut.from_row(row)


@router.post("/api/v1/projects", status=201)
async def create_project(call: Call, body: ProjectCreate) -> ProjectOut:
    """Create a project; `key` is upper-cased and unique in the organization."""
    return await _insert(call, body)


@router.get("/api/v1/projects")
async def list_projects(call: Call, query: ProjectQuery) -> Page[ProjectOut]:
    """The organization's projects, oldest first."""
    rows, total = await fetch_page(
        call.db,
        table="projects",
        columns=COLUMNS,
        where="organization_id = $1",
        args=[call.org],
        query=query,
        filters={"status": query.status_filter},
        counted="projects",
    )
    return page_of(ProjectOut, [ProjectOut.fields(row) for row in rows], total, query)


@router.get("/api/v1/projects/default")
async def default_project(call: Call) -> ProjectOut:
    """The organization's "Default" project (key DEFAULT), created on first use."""
    return await _get(call, await default_project_id(call.db, call.org))


@router.get("/api/v1/projects/{project_id}")
async def get_project(call: Call) -> ProjectOut:
    """One project."""
    return await _get(call, call.path_uuid("project_id", "Project"))


@router.patch("/api/v1/projects/{project_id}")
async def update_project(call: Call, body: ProjectUpdate) -> ProjectOut:
    """Change the fields sent; archiving records `archived_at`."""
    project_id = call.path_uuid("project_id", "Project")
    changes = body.changes()
    async with call.db.acquire() as conn, conn.transaction():
        # The row lock keeps two PATCHes of different settings fields from losing one.
        current = await conn.fetchrow(
            "SELECT settings, archived_at FROM projects WHERE id = $1 AND organization_id = $2 "
            "FOR UPDATE",
            project_id,
            call.org,
        )
        if current is None:
            raise not_found("Project", project_id)
        # A new `settings` replaces the old one but keeps the fields stored inside it (goals,
        # policy_ids, ...) unless they are sent too: PATCH changes only what it names.
        kept = {k: v for k, v in current["settings"].items() if k in SETTINGS_FIELDS}
        settings = {**changes.pop("settings", current["settings"]), **kept}
        for name in SETTINGS_FIELDS:
            if name in changes:
                settings[name] = changes.pop(name)
        changes["settings"] = settings
        if "status" in changes:
            archived = changes["status"] == "archived"
            changes["archived_at"] = (
                (current["archived_at"] or datetime.now(UTC)) if archived else None
            )
        assignments, values = patch_assignments(
            changes,
            ["name", "key", "description", "settings", "status", "visibility", "archived_at"],
            first_param=3,
        )
        with conflict_on_duplicate("Another project has that name or key"):
            row = await conn.fetchrow(
                f"UPDATE projects SET {assignments} WHERE id = $1 AND organization_id = $2 "
                f"RETURNING {COLUMNS}",
                project_id,
                call.org,
                *values,
            )
    assert row is not None
    return ProjectOut.from_row(row)


@router.delete("/api/v1/projects/{project_id}")
async def delete_project(call: Call) -> Deleted:
    """Delete a project and its agent and team associations."""
    return await call.delete_owned("projects", "project_id", "Project")


# --- project membership of agents (reference §3.8) ---------------------------------------------


class ProjectAgentIn(BaseModel):
    agent_id: uuid.UUID
    role: str | None = Field(None, max_length=100)


class ProjectAgentOut(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    agent_id: uuid.UUID
    agent_name: str
    role: str | None
    added_by: str | None
    added_at: datetime


class ProjectTeamIn(BaseModel):
    team_id: uuid.UUID
    role: str | None = Field(None, max_length=100)


class ProjectTeamOut(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    team_id: uuid.UUID
    team_name: str
    role: str | None
    added_by: str | None
    added_at: datetime


@dataclass(frozen=True)
class Membership:
    """A project's agents or teams: the link table, the member table and how to name them."""

    link: str  # project_agents | project_teams (code, never input)
    table: str  # agents | teams
    member: str  # agent | team
    kind: str  # for messages: Agent | Team

    @property
    def columns(self) -> str:
        m = self.member
        return f"l.id, l.project_id, l.{m}_id, e.name AS {m}_name, l.role, l.added_by, l.added_at"

    @property
    def joined(self) -> str:
        return f"{self.link} l JOIN {self.table} e ON e.id = l.{self.member}_id"

    async def add(self, call: Call, member_id: uuid.UUID, role: str | None) -> dict[str, Any]:
        """Add a member of the organization to the project in the path (once)."""
        project = await _get(call, call.path_uuid("project_id", "Project"))
        found = await call.db.fetchval(
            f"SELECT id FROM {self.table} WHERE id = $1 AND organization_id = $2",
            member_id,
            call.org,
        )
        if found is None:
            raise not_found(self.kind, member_id)
        with conflict_on_duplicate(f"The {self.member} is already in this project"):
            await call.db.execute(
                f"INSERT INTO {self.link} (id, project_id, {self.member}_id, role, added_by) "
                "VALUES ($1, $2, $3, $4, $5)",
                uuid.uuid4(),
                project.id,
                member_id,
                role,
                call.principal.actor,
            )
        row = await call.db.fetchrow(
            f"SELECT {self.columns} FROM {self.joined} "
            f"WHERE l.project_id = $1 AND l.{self.member}_id = $2",
            project.id,
            member_id,
        )
        return dict(row or {})

    async def page(self, call: Call, query: ListQuery) -> tuple[list[dict[str, Any]], int]:
        """The project's members, in the order they joined."""
        project = await _get(call, call.path_uuid("project_id", "Project"))
        rows, total = await fetch_page(
            call.db,
            table=self.joined,
            columns=self.columns,
            where="l.project_id = $1 AND e.organization_id = $2",
            args=[project.id, call.org],
            query=query,
            order="l.added_at, l.id",
        )
        return [dict(row) for row in rows], total

    async def remove(self, call: Call) -> uuid.UUID:
        project = await _get(call, call.path_uuid("project_id", "Project"))
        member_id = call.path_uuid(f"{self.member}_id", self.kind)
        removed = await call.db.fetchval(
            f"DELETE FROM {self.link} WHERE project_id = $1 AND {self.member}_id = $2 RETURNING id",
            project.id,
            member_id,
        )
        if removed is None:
            raise not_found(f"{self.kind} in project", member_id)
        return member_id


AGENTS = Membership("project_agents", "agents", "agent", "Agent")
TEAMS = Membership("project_teams", "teams", "team", "Team")


@router.post("/api/v1/projects/{project_id}/agents", status=201)
async def add_project_agent(call: Call, body: ProjectAgentIn) -> ProjectAgentOut:
    """Add an agent of the organization to the project (once)."""
    return ProjectAgentOut.model_validate(await AGENTS.add(call, body.agent_id, body.role))


@router.get("/api/v1/projects/{project_id}/agents")
async def list_project_agents(call: Call, query: ListQuery) -> Page[ProjectAgentOut]:
    """The project's agents, in the order they joined."""
    rows, total = await AGENTS.page(call, query)
    items = [ProjectAgentOut.model_validate(row) for row in rows]
    return Page[ProjectAgentOut](items=items, total=total, limit=query.limit, offset=query.start)


@router.delete("/api/v1/projects/{project_id}/agents/{agent_id}")
async def remove_project_agent(call: Call) -> Deleted:
    """Take an agent out of the project."""
    return Deleted(id=await AGENTS.remove(call))


@router.post("/api/v1/projects/{project_id}/teams", status=201)
async def add_project_team(call: Call, body: ProjectTeamIn) -> ProjectTeamOut:
    """Add a team of the organization to the project (once)."""
    return ProjectTeamOut.model_validate(await TEAMS.add(call, body.team_id, body.role))


@router.get("/api/v1/projects/{project_id}/teams")
async def list_project_teams(call: Call, query: ListQuery) -> Page[ProjectTeamOut]:
    """The project's teams, in the order they joined."""
    rows, total = await TEAMS.page(call, query)
    items = [ProjectTeamOut.model_validate(row) for row in rows]
    return Page[ProjectTeamOut](items=items, total=total, limit=query.limit, offset=query.start)


@router.delete("/api/v1/projects/{project_id}/teams/{team_id}")
async def remove_project_team(call: Call) -> Deleted:
    """Take a team out of the project."""
    return Deleted(id=await TEAMS.remove(call))
