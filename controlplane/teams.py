"""Teams: agents that work together under a coordination mode (reference §3.3, §7.2).

Membership has one source of truth, `agents.team_id` (an agent is on one team at a time, and
adding it to a team takes it off its old one); `configuration.member_ids` only orders the
members (sequential teams run them in that order) and is answered as the members there are.

The rules of a team, checked on every write: every member is an agent of the organization (400
naming the others), a claude_code team has only claude_code members (400 naming the others),
its model (`configuration.llm.model`) is in the catalogue and suits its runtime.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from controlplane.crud import Table
from controlplane.db import Conn, Queryable, conflict_on_duplicate
from controlplane.errors import Refused, not_found
from controlplane.models import check_runtime_model
from controlplane.projects import default_project_id
from workflows.contracts import TeamMember, ToolSpec


def members_sql(team: str) -> str:
    """The members of the team row `team` (a table name or alias in the outer query), with the
    key that orders them: MEMBER_ORDER."""
    return (
        "SELECT a.id, a.name, a.description, a.runtime, a.model_id, a.status, a.configuration, "
        "a.created_at, m.ord FROM agents a LEFT JOIN jsonb_array_elements_text(CASE WHEN "
        f"jsonb_typeof({team}.configuration -> 'member_ids') = 'array' "
        f"THEN {team}.configuration -> 'member_ids' ELSE '[]' END) "
        "WITH ORDINALITY AS m(agent_id, ord) ON m.agent_id = a.id::text "
        f"WHERE a.team_id = {team}.id AND a.organization_id = {team}.organization_id"
    )


# Members in their order: `configuration.member_ids` first, then anyone who joined otherwise
# (e.g. through an agent's own `team_id`), oldest first.
MEMBER_ORDER = "m.ord NULLS LAST, m.created_at, m.id"
COLUMNS = (
    "id, organization_id, name, description, status, runtime, coordination_type, configuration, "
    "model_id, skill_ids, skill_configurations, environment_ids, execution_environment, "
    "created_at, updated_at, last_active_at, "
    "(SELECT coalesce(jsonb_agg(jsonb_build_object('id', p.id, 'name', p.name) "
    "ORDER BY p.created_at, p.id), '[]') FROM project_teams pt JOIN projects p "
    "ON p.id = pt.project_id AND p.organization_id = teams.organization_id "
    "WHERE pt.team_id = teams.id) AS projects, "
    "(SELECT coalesce(jsonb_agg(jsonb_build_object('id', e.id, 'name', e.name) "
    "ORDER BY x.ord), '[]') FROM jsonb_array_elements_text(teams.environment_ids) "
    "WITH ORDINALITY AS x(env_id, ord) JOIN environments e "
    "ON e.id = x.env_id::uuid AND e.organization_id = teams.organization_id) AS environments, "
    "(SELECT coalesce(jsonb_agg(jsonb_build_object('id', m.id, 'name', m.name, "
    "'description', m.description, 'runtime', m.runtime, 'model_id', m.model_id, "
    f"'status', m.status) ORDER BY {MEMBER_ORDER}), '[]') "
    f"FROM ({members_sql('teams')}) m) AS agents"
)
TEAMS = Table("teams", "Team", COLUMNS)
WRITABLE = (
    "name",
    "description",
    "status",
    "runtime",
    "coordination_type",
    "configuration",
    "model_id",
    "skill_ids",
    "skill_configurations",
    "environment_ids",
    "execution_environment",
)
LEADER_PROMPT = (
    "You are the leader of the team '{name}', coordinating specialised AI agents. Give a "
    "member a task with the delegate_task tool (several calls in one answer run at the same "
    "time); each member answers with its result. Then answer the user yourself, using what "
    "the members found."
)


def duplicate_name(name: str) -> str:
    return f"A team named '{name}' already exists in your organization"


def _member_ids(raw: Sequence[object]) -> list[uuid.UUID]:
    return list(dict.fromkeys(uuid.UUID(str(ident)) for ident in raw))


def model_of(configuration: dict[str, Any]) -> str | None:
    llm = configuration.get("llm")
    model = llm.get("model") if isinstance(llm, dict) else None
    return str(model) if model else None


async def check_team(
    db: Queryable,
    org: str,
    *,
    runtime: str,
    configuration: dict[str, Any],
    member_ids: Sequence[uuid.UUID] | None,
    environment_ids: Sequence[uuid.UUID] | None,
    team_id: uuid.UUID | None = None,
) -> str | None:
    """Every problem with the team-to-be in one refusal (400); returns its model's stored value.
    `member_ids` None: the members stay (a claude_code team's current members are checked)."""
    errors: list[str] = []
    details: dict[str, Any] = {}
    if member_ids is None and team_id is not None:
        rows = await db.fetch(
            "SELECT id, name, runtime FROM agents WHERE team_id = $1 AND organization_id = $2",
            team_id,
            org,
        )
    else:
        rows = await db.fetch(
            "SELECT id, name, runtime FROM agents WHERE organization_id = $1 AND id = ANY($2)",
            org,
            list(member_ids or []),
        )
        found = {row["id"] for row in rows}
        missing = [str(i) for i in member_ids or [] if i not in found]
        if missing:
            errors.append(f"Not agents of your organization: {', '.join(missing)}")
            details["missing_agent_ids"] = missing
    if runtime == "claude_code":
        others = [row["name"] for row in rows if row["runtime"] != "claude_code"]
        if others:
            errors.append(
                "A claude_code team needs claude_code members; these are not: " + ", ".join(others)
            )
            details["non_claude_code_members"] = others
    model_value = model_of(configuration)
    if model_value is not None:
        check = await check_runtime_model(db, org, runtime, model_value)
        errors.extend(check.errors)
        model_value = check.model.value if check.model is not None else model_value
    if environment_ids:
        rows = await db.fetch(
            "SELECT id FROM environments WHERE organization_id = $1 AND id = ANY($2::uuid[])",
            org,
            list(environment_ids),
        )
        known = {row["id"] for row in rows}
        unknown = [str(i) for i in environment_ids if i not in known]
        errors.extend(f"Environment '{ident}' not found" for ident in unknown)
        if unknown:
            details["missing_environment_ids"] = unknown
    if errors:
        raise Refused(f"Invalid team: {'; '.join(errors)}", details={"errors": errors, **details})
    return model_value


async def set_members(
    conn: Conn, org: str, team_id: uuid.UUID, member_ids: Sequence[uuid.UUID]
) -> None:
    """Make exactly these agents the team's members (taking them off any other team)."""
    await conn.execute(
        "UPDATE agents SET team_id = NULL, updated_at = now() "
        "WHERE team_id = $1 AND organization_id = $2 AND id <> ALL($3::uuid[])",
        team_id,
        org,
        list(member_ids),
    )
    await conn.execute(
        "UPDATE agents SET team_id = $1, updated_at = now() "
        "WHERE organization_id = $2 AND id = ANY($3::uuid[]) AND team_id IS DISTINCT FROM $1",
        team_id,
        org,
        list(member_ids),
    )


async def create_team(
    db: asyncpg.Pool[Any], org: str, actor: str, values: dict[str, Any]
) -> asyncpg.Record:
    """Record a team (checked by `check_team` first) with its members; it joins the
    organization's Default project, as agents do."""
    member_ids = _member_ids(values["configuration"].get("member_ids", []))
    values["configuration"]["member_ids"] = [str(i) for i in member_ids]
    values["model_id"] = await check_team(
        db,
        org,
        runtime=values["runtime"],
        configuration=values["configuration"],
        member_ids=member_ids,
        environment_ids=[uuid.UUID(i) for i in values["environment_ids"]],
    )
    project_id = await default_project_id(db, org)
    team_id = uuid.uuid4()
    async with db.acquire() as conn, conn.transaction():
        with conflict_on_duplicate(duplicate_name(values["name"])):
            await conn.execute(
                "INSERT INTO teams (id, organization_id, name, description, status, runtime, "
                "coordination_type, configuration, model_id, skill_ids, skill_configurations, "
                "environment_ids, execution_environment, created_by) VALUES ($1, $2, $3, $4, $5, "
                "$6, $7, $8, $9, $10, $11, $12, $13, $14)",
                team_id,
                org,
                values["name"],
                values["description"],
                values["status"],
                values["runtime"],
                values["coordination_type"],
                values["configuration"],
                values["model_id"],
                values["skill_ids"],
                values["skill_configurations"],
                values["environment_ids"],
                values["execution_environment"],
                actor,
            )
        await set_members(conn, org, team_id, member_ids)
        await conn.execute(
            "INSERT INTO project_teams (id, project_id, team_id, added_by) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            uuid.uuid4(),
            project_id,
            team_id,
            actor,
        )
        return await TEAMS.get(conn, org, team_id)


async def update_team(
    db: asyncpg.Pool[Any], org: str, team_id: uuid.UUID, changes: dict[str, Any]
) -> asyncpg.Record:
    """Apply a PATCH: a new `configuration.member_ids` replaces the members; a changed runtime,
    model, membership or environments is checked like at creation, under the team's lock."""
    async with db.acquire() as conn, conn.transaction():
        member_ids: list[uuid.UUID] | None = None

        async def check(current: asyncpg.Record, changes: dict[str, Any]) -> None:
            nonlocal member_ids
            configuration = changes.get("configuration", current["configuration"])
            if "configuration" in changes:
                if "member_ids" in configuration:
                    member_ids = _member_ids(configuration["member_ids"])
                    configuration["member_ids"] = [str(i) for i in member_ids]
                else:  # the members stay, in their order
                    configuration["member_ids"] = current["configuration"].get("member_ids", [])
            environment_ids = changes.get("environment_ids")
            changes["model_id"] = await check_team(
                conn,
                org,
                runtime=changes.get("runtime", current["runtime"]),
                configuration=configuration,
                member_ids=member_ids,
                environment_ids=[uuid.UUID(i) for i in environment_ids]
                if environment_ids
                else None,
                team_id=team_id,
            )
            if member_ids is not None:
                await set_members(conn, org, team_id, member_ids)

        name = changes.get("name", "that name")
        return await TEAMS.patch(
            conn, org, team_id, changes, WRITABLE, duplicate=duplicate_name(name), check=check
        )


async def add_member(
    db: asyncpg.Pool[Any], org: str, team_id: uuid.UUID, agent_id: uuid.UUID
) -> asyncpg.Record:
    """Put the agent on the team (last in order), taking it off any other team."""
    async with db.acquire() as conn, conn.transaction():
        team = await conn.fetchrow(
            "SELECT runtime, configuration FROM teams WHERE id = $1 AND organization_id = $2 "
            "FOR UPDATE",
            team_id,
            org,
        )
        if team is None:
            raise not_found("Team", team_id)
        agent = await conn.fetchrow(
            "SELECT name, runtime FROM agents WHERE id = $1 AND organization_id = $2",
            agent_id,
            org,
        )
        if agent is None:
            raise not_found("Agent", agent_id)
        if team["runtime"] == "claude_code" and agent["runtime"] != "claude_code":
            raise Refused(
                "A claude_code team needs claude_code members; this one is not: " + agent["name"],
                details={"non_claude_code_members": [agent["name"]]},
            )
        configuration = dict(team["configuration"])
        order = [i for i in configuration.get("member_ids") or [] if i != str(agent_id)]
        configuration["member_ids"] = [*order, str(agent_id)]
        await conn.execute(
            "UPDATE teams SET configuration = $2, updated_at = now() WHERE id = $1",
            team_id,
            configuration,
        )
        await conn.execute(
            "UPDATE agents SET team_id = $1, updated_at = now() WHERE id = $2", team_id, agent_id
        )
        return await TEAMS.get(conn, org, team_id)


async def remove_member(
    db: asyncpg.Pool[Any], org: str, team_id: uuid.UUID, agent_id: uuid.UUID
) -> asyncpg.Record:
    async with db.acquire() as conn, conn.transaction():
        team = await conn.fetchrow(
            "SELECT configuration FROM teams WHERE id = $1 AND organization_id = $2 FOR UPDATE",
            team_id,
            org,
        )
        if team is None:
            raise not_found("Team", team_id)
        removed = await conn.fetchval(
            "UPDATE agents SET team_id = NULL, updated_at = now() "
            "WHERE id = $1 AND organization_id = $2 AND team_id = $3 RETURNING id",
            agent_id,
            org,
            team_id,
        )
        if removed is None:
            raise not_found("Member", agent_id)
        configuration = dict(team["configuration"])
        configuration["member_ids"] = [
            i for i in configuration.get("member_ids") or [] if i != str(agent_id)
        ]
        await conn.execute(
            "UPDATE teams SET configuration = $2, updated_at = now() WHERE id = $1",
            team_id,
            configuration,
        )
        return await TEAMS.get(conn, org, team_id)


async def delete_team(db: asyncpg.Pool[Any], org: str, team_id: uuid.UUID) -> None:
    """Delete the team and what hangs on it by id (its members stay, teamless; its projects'
    links go by foreign key): its policy and skill associations and its context."""
    async with db.acquire() as conn, conn.transaction():
        await TEAMS.delete(conn, org, team_id)
        # entity_id is a uuid in skill_associations, text (uuids and role names) elsewhere.
        for table, ident in (
            ("skill_associations", team_id),
            ("policy_associations", str(team_id)),
            ("entity_contexts", str(team_id)),
        ):
            await conn.execute(
                f"DELETE FROM {table} WHERE organization_id = $1 AND entity_type = 'team' "
                "AND entity_id = $2",
                org,
                ident,
            )


# ---- what a run needs ----------------------------------------------------------------------


@dataclass
class TeamForRun:
    id: uuid.UUID
    name: str
    runtime: str
    coordination_type: str
    model_id: str | None
    instructions: str | None
    one_shot: bool
    max_tokens: int
    members: list[TeamMember]


def instructions_of(configuration: dict[str, Any]) -> str | None:
    raw = configuration.get("instructions")
    if isinstance(raw, list):
        raw = "\n".join(f"- {line}" for line in raw if line)
    return str(raw) if raw else None


def team_for_run(team: Mapping[str, Any], members: Sequence[Mapping[str, Any]]) -> TeamForRun:
    """What a run of the team needs, from its row and its members' rows in their order
    (records or their JSON form)."""
    configuration = team["configuration"] or {}
    llm = configuration.get("llm") if isinstance(configuration.get("llm"), dict) else {}
    return TeamForRun(
        id=uuid.UUID(str(team["id"])),
        name=team["name"],
        runtime=team["runtime"],
        coordination_type=team["coordination_type"],
        model_id=team["model_id"],
        instructions=instructions_of(configuration),
        one_shot=bool(configuration.get("one_shot", False)),
        max_tokens=int((llm or {}).get("max_tokens") or 4096),
        members=[
            TeamMember(
                agent_id=str(row["id"]),
                name=row["name"],
                description=row["description"],
                system_prompt=(row["configuration"] or {}).get("system_prompt"),
            )
            for row in members
        ],
    )


def leader_prompt(team: TeamForRun) -> str:
    """The leader's system prompt: the team's instructions, its role, and who is on the team."""
    roster = "\n".join(
        f"- {member.name} (id {member.agent_id})"
        + (f": {member.description}" if member.description else "")
        for member in team.members
    )
    parts = [team.instructions] if team.instructions else []
    parts += [LEADER_PROMPT.format(name=team.name), f"Members:\n{roster}"]
    return "\n\n".join(parts)


def team_member_tools(
    team: TeamForRun, tools_of: Callable[[str], list[ToolSpec]]
) -> list[ToolSpec]:
    """The members' tools (`tools_of` a member's agent id), once each by name (for a
    claude_code leader, whose subagents run them inside its call); each member's subagent is
    told which of them are its own."""
    tools: dict[str, ToolSpec] = {}
    for member in team.members:
        own = tools_of(member.agent_id)
        member.tool_names = [tool.name for tool in own]
        for tool in own:
            tools.setdefault(tool.name, tool)
    return list(tools.values())
