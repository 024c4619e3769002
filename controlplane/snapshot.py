"""What a run of an agent or a team reads, in one statement: the agent (or the team and its
members), the team, the environments along the hierarchy (controlplane/hierarchy.py), the
projects, the context rows, the skills and their associations, the policies and their
associations, the worker queue and the model.

The resolvers (context, skills, execution environment, policies) are pure functions of a
`Snapshot`; starting an execution and the routes that resolve one of them load it the same way,
so each concept is resolved once, by one function. Nothing in it reads a secret's value.

The statement reads a little more than one resolution needs (the rows of every layer, however
many of them a resolution uses); that is the price of one round trip instead of a dozen.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controlplane.db import Queryable, sql_array, sql_uuid
from controlplane.hierarchy import EnvironmentLayer, Hierarchy, agent_chain, team_chain
from controlplane.models import default_model_sql, model_sql
from controlplane.teams import MEMBER_ORDER, members_sql


@dataclass(frozen=True)
class ContextRow:
    """An entity's own context lists."""

    knowledge_uuids: list[str]
    resource_ids: list[str]
    policy_ids: list[str]


@dataclass(frozen=True)
class SkillLink:
    """A skill association (`skill_associations`)."""

    entity_type: str
    entity_id: uuid.UUID
    skill_id: uuid.UUID
    override: dict[str, Any]


@dataclass(frozen=True)
class PolicyRow:
    id: uuid.UUID
    name: str
    description: str | None
    content: str
    enabled: bool
    version: int


@dataclass(frozen=True)
class PolicyLink:
    """An enabled policy association of a layer, with its policy (enabled or not)."""

    policy: PolicyRow
    entity_type: str
    entity_id: str
    priority: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class QueueRow:
    id: uuid.UUID
    name: str
    status: str
    environment_id: uuid.UUID


@dataclass
class Snapshot:
    """The rows loaded for one agent or team. `chain` is None when the organization has no such
    agent or team (the queue and the rest are loaded all the same)."""

    organization_id: str
    chain: Hierarchy | None
    # A team's members, each with its own hierarchy (without projects: only their skills are
    # resolved), in the team's order; none for an agent.
    members: list[Hierarchy] = field(default_factory=list)
    # Projects of the chain -> their `settings.policy_ids` as stored.
    project_policy_ids: dict[uuid.UUID, Any] = field(default_factory=dict)
    # (entity_type, entity_id as text) -> the entity's own context.
    contexts: dict[tuple[str, str], ContextRow] = field(default_factory=dict)
    # Skill associations of every environment, team and agent above, oldest first.
    skill_links: list[SkillLink] = field(default_factory=list)
    # The enabled skills those associations and the rows' `skill_ids` name, as SkillOut fields.
    skills: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    # Enabled associations of the run's policy layers (the queue's environment, the chain's
    # environments, team and agent, the role), ordered by policy name then id.
    policy_links: list[PolicyLink] = field(default_factory=list)
    # The policies the projects and contexts list by id (enabled or not).
    policies: dict[uuid.UUID, PolicyRow] = field(default_factory=dict)
    queue: QueueRow | None = None
    # The role whose policy associations were loaded (the caller's), if any.
    role: str | None = None
    # The catalogue row of the subject's model (its `model_id`, else the default), as JSON.
    model: dict[str, Any] | None = None

    @property
    def agent(self) -> dict[str, Any] | None:
        return self.chain.agent if self.chain is not None else None

    @property
    def team(self) -> dict[str, Any] | None:
        return self.chain.team if self.chain is not None else None


# A skill as the API answers it (SkillOut's fields).
SKILL_COLUMNS = (
    "id, organization_id, name, skill_type AS type, description, icon, enabled, configuration, "
    "created_at, updated_at"
)
POLICY_COLUMNS = (
    "p.id, p.name, p.description, p.policy_content, p.enabled AS policy_enabled, p.version"
)


def policy_links_sql(keys: str) -> str:
    """SQL: the enabled associations of the (entity_type, entity_id) rows of `keys` (a FROM
    item named k) in organization $1, each with its policy; associations of environments that
    no longer exist are left out."""
    return (
        f"SELECT {POLICY_COLUMNS}, a.entity_type AS source_type, a.entity_id AS source_id, "
        "a.priority, a.metadata AS association_metadata "
        f"FROM {keys} JOIN policy_associations a ON a.organization_id = $1 "
        "AND a.entity_type = k.entity_type AND a.entity_id = k.entity_id AND a.enabled "
        "JOIN policies p ON p.id = a.policy_id AND p.organization_id = a.organization_id "
        "WHERE a.entity_type <> 'environment' OR EXISTS (SELECT 1 FROM environments e "
        f"WHERE e.organization_id = a.organization_id AND e.id = {sql_uuid('a.entity_id')})"
    )


def _elements(jsonb: str) -> str:
    return f"jsonb_array_elements_text({sql_array(jsonb)})"


# $1 organization, $2 agent id, $3 team id (exactly one of the two), $4 worker queue id,
# $5 role of the caller (the last two may be NULL).
SNAPSHOT_SQL = f"""
WITH agent AS (
    SELECT a.* FROM agents a WHERE a.id = $2::uuid AND a.organization_id = $1
), team AS (
    SELECT t.* FROM teams t
    WHERE t.organization_id = $1 AND t.id = coalesce($3::uuid, (SELECT team_id FROM agent))
), members AS (
    SELECT to_jsonb(a) AS row, a.id, a.environment_ids, a.skill_ids, m.ord, m.created_at
    FROM team t CROSS JOIN LATERAL ({members_sql("t")}) m JOIN agents a ON a.id = m.id
    WHERE $3::uuid IS NOT NULL
), env_refs AS (
    SELECT x AS raw, true AS subject FROM agent, {_elements("agent.environment_ids")} x
    UNION ALL SELECT x, true FROM team, {_elements("team.environment_ids")} x
    UNION ALL SELECT x, false FROM members, {_elements("members.environment_ids")} x
), env_rows AS (
    SELECT e.id, e.name, e.execution_environment, bool_or(r.subject) AS subject
    FROM env_refs r JOIN environments e ON e.id = {sql_uuid("r.raw")} AND e.organization_id = $1
    GROUP BY e.id
), projects AS (
    SELECT p.id, p.settings -> 'policy_ids' AS policy_ids, l.added_at
    FROM project_agents l JOIN projects p ON p.id = l.project_id
    WHERE l.agent_id = $2::uuid AND p.organization_id = $1
    UNION ALL
    SELECT p.id, p.settings -> 'policy_ids', l.added_at
    FROM project_teams l JOIN projects p ON p.id = l.project_id
    WHERE l.team_id = $3::uuid AND p.organization_id = $1
), context_keys AS (
    SELECT 'organization' AS entity_type, $1 AS entity_id
    UNION ALL SELECT 'project', id::text FROM projects
    UNION ALL SELECT 'environment', id::text FROM env_rows
    UNION ALL SELECT 'team', id::text FROM team
    UNION ALL SELECT 'agent', id::text FROM agent
), contexts AS (
    SELECT c.entity_type, c.entity_id, c.knowledge_uuids, c.resource_ids, c.policy_ids
    FROM context_keys k JOIN entity_contexts c ON c.organization_id = $1
        AND c.entity_type = k.entity_type AND c.entity_id = k.entity_id
), skill_keys AS (
    SELECT 'environment' AS entity_type, id AS entity_id FROM env_rows
    UNION ALL SELECT 'team', id FROM team
    UNION ALL SELECT 'agent', id FROM agent
    UNION ALL SELECT 'agent', id FROM members
), skill_links AS (
    SELECT s.id, s.entity_type, s.entity_id, s.skill_id, s.configuration_override, s.created_at
    FROM skill_keys k JOIN skill_associations s ON s.organization_id = $1
        AND s.entity_type = k.entity_type AND s.entity_id = k.entity_id
), skill_refs AS (
    SELECT skill_id AS id FROM skill_links
    UNION SELECT {sql_uuid("x")} FROM agent, {_elements("agent.skill_ids")} x
    UNION SELECT {sql_uuid("x")} FROM team, {_elements("team.skill_ids")} x
    UNION SELECT {sql_uuid("x")} FROM members, {_elements("members.skill_ids")} x
), skill_rows AS (
    SELECT {SKILL_COLUMNS} FROM skills
    WHERE organization_id = $1 AND enabled AND id IN (SELECT id FROM skill_refs)
), queue AS (
    SELECT q.id, q.name, q.status, q.environment_id FROM worker_queues q
    WHERE q.id = $4::uuid AND q.organization_id = $1
), policy_keys AS (
    SELECT 'environment' AS entity_type, environment_id::text AS entity_id FROM queue
    UNION SELECT 'environment', id::text FROM env_rows WHERE subject
    UNION SELECT 'team', id::text FROM team
    UNION SELECT 'agent', id::text FROM agent
    UNION SELECT 'role', $5::text WHERE $5::text IS NOT NULL
), policy_links AS ({policy_links_sql("policy_keys k")}
), listed_refs AS (
    SELECT x AS raw FROM projects, {_elements("projects.policy_ids")} x
    UNION SELECT unnest(policy_ids) FROM contexts
), listed AS (
    SELECT {POLICY_COLUMNS} FROM policies p
    WHERE p.organization_id = $1 AND p.id IN (SELECT {sql_uuid("raw")} FROM listed_refs)
), wanted AS (
    SELECT nullif(coalesce(
        (SELECT model_id FROM agent), (SELECT model_id FROM team WHERE $3::uuid IS NOT NULL)
    ), '') AS model_id
)
SELECT
    (SELECT to_jsonb(a) FROM agent a) AS agent,
    (SELECT to_jsonb(t) FROM team t) AS team,
    (SELECT jsonb_agg(m.row ORDER BY {MEMBER_ORDER}) FROM members m) AS members,
    (SELECT jsonb_agg(to_jsonb(e)) FROM env_rows e) AS environments,
    (SELECT jsonb_agg(to_jsonb(p) ORDER BY p.added_at, p.id) FROM projects p) AS projects,
    (SELECT jsonb_agg(to_jsonb(c)) FROM contexts c) AS contexts,
    (SELECT jsonb_agg(to_jsonb(s) ORDER BY s.created_at, s.id) FROM skill_links s)
        AS skill_links,
    (SELECT jsonb_agg(to_jsonb(s)) FROM skill_rows s) AS skills,
    (SELECT jsonb_agg(to_jsonb(l) ORDER BY l.name, l.id) FROM policy_links l) AS policy_links,
    (SELECT jsonb_agg(to_jsonb(p)) FROM listed p) AS policies,
    (SELECT to_jsonb(q) FROM queue q) AS queue,
    CASE WHEN w.model_id IS NULL
        THEN (SELECT to_jsonb(m) FROM ({default_model_sql("$1")}) m)
        ELSE (SELECT to_jsonb(m) FROM ({model_sql("$1", "w.model_id")}) m)
    END AS model
FROM wanted w
"""


def policy_row(row: Mapping[str, Any]) -> PolicyRow:
    """A policy of POLICY_COLUMNS, from a record or its JSON form."""
    return PolicyRow(
        id=uuid.UUID(str(row["id"])),
        name=row["name"],
        description=row["description"],
        content=row["policy_content"],
        enabled=row["policy_enabled"],
        version=row["version"],
    )


def policy_link(row: Mapping[str, Any]) -> PolicyLink:
    """A row of `policy_links_sql`, from a record or its JSON form."""
    return PolicyLink(
        policy=policy_row(row),
        entity_type=row["source_type"],
        entity_id=row["source_id"],
        priority=row["priority"],
        metadata=dict(row["association_metadata"]),
    )


def _skill(row: dict[str, Any]) -> dict[str, Any]:
    """A skill row in JSON form with the types a record has (SkillOut's fields)."""
    return row | {
        "id": uuid.UUID(row["id"]),
        "created_at": datetime.fromisoformat(row["created_at"]).astimezone(UTC),
        "updated_at": datetime.fromisoformat(row["updated_at"]).astimezone(UTC),
    }


def _project_ids(rows: list[dict[str, Any]]) -> list[uuid.UUID]:
    return [uuid.UUID(row["id"]) for row in rows]


async def load_snapshot(
    db: Queryable,
    org: str,
    *,
    agent_id: uuid.UUID | None = None,
    team_id: uuid.UUID | None = None,
    queue_id: uuid.UUID | None = None,
    role: str | None = None,
) -> Snapshot:
    """Everything an agent's or a team's run (exactly one of `agent_id`, `team_id`) reads; with
    `queue_id`, the queue (and its environment's policies); with `role`, the policies attached
    to the caller's role. One statement."""
    assert (agent_id is None) != (team_id is None), "an agent or a team"
    row = await db.fetchrow(SNAPSHOT_SQL, org, agent_id, team_id, queue_id, role)
    assert row is not None  # the statement always answers one row
    environments = {
        uuid.UUID(env["id"]): EnvironmentLayer(
            uuid.UUID(env["id"]), env["name"], dict(env["execution_environment"])
        )
        for env in row["environments"] or []
    }
    projects = row["projects"] or []
    project_ids = _project_ids(projects)
    team: dict[str, Any] | None = row["team"]
    chain: Hierarchy | None = None
    members: list[Hierarchy] = []
    if agent_id is not None and row["agent"] is not None:
        chain = agent_chain(org, row["agent"], team, environments, project_ids)
    elif team_id is not None and team is not None:
        chain = team_chain(org, team, environments, project_ids)
        members = [
            agent_chain(org, member, team, environments, []) for member in row["members"] or []
        ]
    queue = row["queue"]
    return Snapshot(
        organization_id=org,
        chain=chain,
        members=members,
        project_policy_ids={uuid.UUID(p["id"]): p["policy_ids"] for p in projects},
        contexts={
            (c["entity_type"], c["entity_id"]): ContextRow(
                list(c["knowledge_uuids"]), list(c["resource_ids"]), list(c["policy_ids"])
            )
            for c in row["contexts"] or []
        },
        skill_links=[
            SkillLink(
                s["entity_type"],
                uuid.UUID(s["entity_id"]),
                uuid.UUID(s["skill_id"]),
                dict(s["configuration_override"]),
            )
            for s in row["skill_links"] or []
        ],
        skills={skill["id"]: skill for skill in map(_skill, row["skills"] or [])},
        policy_links=[policy_link(link) for link in row["policy_links"] or []],
        policies={p.id: p for p in map(policy_row, row["policies"] or [])},
        queue=QueueRow(
            uuid.UUID(queue["id"]),
            queue["name"],
            queue["status"],
            uuid.UUID(queue["environment_id"]),
        )
        if queue is not None
        else None,
        role=role,
        model=row["model"],
    )
