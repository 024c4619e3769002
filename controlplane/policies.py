"""Who may see and do what by policy: resolution of an entity's policies, their evaluation, and
the checks made before an execution starts and before every tool call.

Resolution follows the hierarchy (controlplane/hierarchy.py). An agent's policies are the
associations of its environments, its team's environments, its team and itself, plus the
policies its projects (`settings.policy_ids`) and resolved context (`policy_ids`) list by id. A
run adds its queue's environment and the role of the key that started it (`role`
associations). Each association has a priority (by default environment 300, team 200, agent
100, role 100); a policy attached at several levels counts once, at its highest priority.

Everything an evaluation reads comes from the control plane's rows, never from what a worker or
a client claims: the policy input of a tool call is built here from the execution row.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from controlplane import outbox
from controlplane.context import context_of
from controlplane.db import Queryable
from controlplane.environments import environment_of
from controlplane.errors import not_found
from controlplane.hierarchy import Hierarchy
from controlplane.policy_engine import PolicyEngine, PolicyResult, PolicySource, decide
from controlplane.snapshot import (
    POLICY_COLUMNS,
    PolicyLink,
    PolicyRow,
    Snapshot,
    load_snapshot,
    policy_link,
    policy_links_sql,
    policy_row,
)
from workflows.contracts import TERMINAL_STATES

DEFAULT_PRIORITY: dict[str, int] = {"environment": 300, "team": 200, "agent": 100, "role": 100}
# At equal priority the broader layer's association is the one reported.
LAYER_RANK: dict[str, int] = {"environment": 0, "team": 1, "agent": 2, "role": 3}
ENTITY_KIND = {"agent": "Agent", "environment": "Environment", "team": "Team"}


@dataclass
class PolicyScope:
    """Which policies govern an action: association layers (entity_type, entity_id) and the
    policies listed by id in projects and resolved context (id, source type, source id).

    `links` and `policies` are what those name, once loaded (from a snapshot, or by
    `loaded_scope`): the enabled associations of the layers (at least; ordered by policy name,
    then id) and the listed policies by id (enabled or not). None: not loaded yet."""

    layers: list[tuple[str, str]] = field(default_factory=list)
    listed: list[tuple[uuid.UUID, str, str]] = field(default_factory=list)
    links: list[PolicyLink] | None = None
    policies: dict[uuid.UUID, PolicyRow] | None = None

    @property
    def environment_ids(self) -> list[str]:
        return [ident for kind, ident in self.layers if kind == "environment"]


@dataclass
class Outcome:
    policy_name: str
    allow: bool
    violations: list[str]
    error: str | None


@dataclass
class Evaluation:
    allowed: bool
    violations: list[str]
    outcomes: dict[str, Outcome]
    policies_evaluated: int
    engine_error: str | None


def source_of(row: asyncpg.Record) -> PolicySource:
    return PolicySource(
        id=str(row["id"]), version=row["version"], content=row["policy_content"], name=row["name"]
    )


def policy_source(policy: PolicyRow) -> PolicySource:
    return PolicySource(
        id=str(policy.id), version=policy.version, content=policy.content, name=policy.name
    )


def as_uuid(raw: str, kind: str) -> uuid.UUID:
    """A path id that is not a uuid names nothing: not found, like any missing id."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found(kind, raw) from None


async def check_entity(db: Queryable, org: str, entity_type: str, entity_id: str) -> str:
    """The entity's id in the form associations store it; not found unless the entity is the
    organization's (roles are names: any will do)."""
    if entity_type == "role":
        return entity_id
    kind = ENTITY_KIND[entity_type]
    ident = as_uuid(entity_id, kind)
    table = {"agent": "agents", "environment": "environments", "team": "teams"}[entity_type]
    found = await db.fetchval(
        f"SELECT 1 FROM {table} WHERE id = $1 AND organization_id = $2", ident, org
    )
    if found is None:
        raise not_found(kind, entity_id)
    return str(ident)


def hierarchy_layers(chain: Hierarchy) -> list[tuple[str, str]]:
    """Association layers along a hierarchy: environments, team environments, team, agent."""
    layers = [("environment", str(ident)) for ident in chain.all_environment_ids]
    if chain.team_id is not None:
        layers.append(("team", str(chain.team_id)))
    if chain.agent_id is not None:
        layers.append(("agent", str(chain.agent_id)))
    return layers


def run_scope(snapshot: Snapshot) -> PolicyScope:
    """The policies that govern a run of the snapshot's agent or team (see the module
    docstring): its queue's environment, the hierarchy, the caller's role (those the snapshot
    was loaded with), and the policies its projects and context list."""
    chain = snapshot.chain
    assert chain is not None
    scope = PolicyScope(links=snapshot.policy_links, policies=snapshot.policies)
    if snapshot.queue is not None:
        scope.layers.append(("environment", str(snapshot.queue.environment_id)))
    scope.layers += hierarchy_layers(chain)
    if snapshot.role is not None:
        scope.layers.append(("role", snapshot.role))
    scope.layers = list(dict.fromkeys(scope.layers))
    scope.listed = listed_policies(snapshot)
    return scope


def listed_policies(snapshot: Snapshot) -> list[tuple[uuid.UUID, str, str]]:
    """Policy ids named by the entity's projects (`settings.policy_ids`) and by its resolved
    context (`policy_ids` of every layer), in that order; ids that are not uuids are skipped
    (whether they are the organization's policies shows when they are looked up)."""
    chain = snapshot.chain
    assert chain is not None
    listed: list[tuple[uuid.UUID, str, str]] = []
    for project_id in chain.project_ids:
        listed += [
            (ident, "project", str(project_id))
            for ident in _uuid_list(snapshot.project_policy_ids.get(project_id) or [])
        ]
    for name, layer in context_of(snapshot).layers.items():
        listed += [(ident, "context", name) for ident in _uuid_list(layer.policy_ids)]
    return listed


async def agent_scope(
    db: Queryable,
    org: str,
    agent_id: str | uuid.UUID,
    *,
    queue_id: uuid.UUID | None = None,
    role: str | None = None,
) -> PolicyScope:
    """The policies that govern an agent's run (see the module docstring); not found when the
    organization has no such agent."""
    ident = as_uuid(str(agent_id), "Agent")
    snapshot = await load_snapshot(db, org, agent_id=ident, queue_id=queue_id, role=role)
    if snapshot.chain is None:
        raise not_found("Agent", agent_id)
    return run_scope(snapshot)


async def team_scope(
    db: Queryable,
    org: str,
    team_id: uuid.UUID,
    *,
    queue_id: uuid.UUID | None = None,
    role: str | None = None,
) -> PolicyScope:
    """The policies that govern a team's run: as for an agent, along the team's hierarchy."""
    snapshot = await load_snapshot(db, org, team_id=team_id, queue_id=queue_id, role=role)
    if snapshot.chain is None:
        raise not_found("Team", team_id)
    return run_scope(snapshot)


async def entity_scope(db: Queryable, org: str, entity_type: str, entity_id: str) -> PolicyScope:
    """An agent's, team's, environment's or role's own policies with their inheritance (a team:
    its environments' and its own associations)."""
    if entity_type == "agent":
        return await agent_scope(db, org, entity_id)
    if entity_type == "team":
        snapshot = await load_snapshot(db, org, team_id=as_uuid(entity_id, "Team"))
        if snapshot.chain is None:
            raise not_found("Team", entity_id)
        return PolicyScope(
            layers=hierarchy_layers(snapshot.chain), links=snapshot.policy_links, policies={}
        )
    ident = await check_entity(db, org, entity_type, entity_id)
    return PolicyScope(layers=[(entity_type, ident)])


def _uuid_list(values: Sequence[Any]) -> list[uuid.UUID]:
    out = []
    for value in values:
        try:
            out.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    return out


async def loaded_scope(db: Queryable, org: str, scope: PolicyScope) -> PolicyScope:
    """The scope with what its layers and listed ids name loaded (as it is, when it was)."""
    if scope.links is None:
        rows = []
        if scope.layers:
            rows = await db.fetch(
                policy_links_sql("unnest($2::text[], $3::text[]) AS k(entity_type, entity_id)")
                + " ORDER BY p.name, p.id",
                org,
                [layer[0] for layer in scope.layers],
                [layer[1] for layer in scope.layers],
            )
        scope.links = [policy_link(dict(row)) for row in rows]
    if scope.policies is None:
        scope.policies = {}
        wanted = list(dict.fromkeys(ident for ident, _, _ in scope.listed))
        if wanted:
            rows = await db.fetch(
                f"SELECT {POLICY_COLUMNS} FROM policies p "
                "WHERE p.organization_id = $1 AND p.id = ANY($2::uuid[])",
                org,
                wanted,
            )
            scope.policies = {row["id"]: policy_row(dict(row)) for row in rows}
    return scope


def resolved_links(scope: PolicyScope) -> list[PolicyLink]:
    """The scope's associations, one per policy at its highest priority (ties: the broader
    layer, then the earlier one), highest priority first, then by policy name and id. The
    scope must be loaded."""
    assert scope.links is not None, "load the scope first"
    position = {layer: n for n, layer in enumerate(scope.layers)}
    best: dict[uuid.UUID, PolicyLink] = {}
    for link in scope.links:  # by policy name, then id
        at = position.get((link.entity_type, link.entity_id))
        if at is None:
            continue
        current = best.get(link.policy.id)
        rank = (-link.priority, LAYER_RANK[link.entity_type], at)
        if current is None or rank < (
            -current.priority,
            LAYER_RANK[current.entity_type],
            position[(current.entity_type, current.entity_id)],
        ):
            best[link.policy.id] = link
    return sorted(best.values(), key=lambda link: -link.priority)


def enabled_policies(scope: PolicyScope) -> list[PolicySource]:
    """The enabled policies of a loaded scope, each once, highest association priority first,
    then the listed ones in their order."""
    assert scope.policies is not None, "load the scope first"
    policies = [policy_source(link.policy) for link in resolved_links(scope) if link.policy.enabled]
    seen = {policy.id for policy in policies}
    for ident in dict.fromkeys(ident for ident, _, _ in scope.listed):
        listed = scope.policies.get(ident)
        if listed is not None and listed.enabled and str(ident) not in seen:
            policies.append(policy_source(listed))
    return policies


async def scope_policies(db: Queryable, org: str, scope: PolicyScope) -> list[PolicySource]:
    """The enabled policies of a scope (loaded first if it is not)."""
    return enabled_policies(await loaded_scope(db, org, scope))


async def org_enabled_policies(db: Queryable, org: str) -> list[PolicySource]:
    rows = await db.fetch(
        "SELECT id, name, version, policy_content FROM policies "
        "WHERE organization_id = $1 AND enabled ORDER BY created_at, id",
        org,
    )
    return [source_of(row) for row in rows]


async def evaluate(
    engine: PolicyEngine,
    policies: Sequence[PolicySource],
    input: Mapping[str, Any],
    *,
    fail_open: bool,
) -> Evaluation:
    """Every policy against `input`: allowed when each allows. An engine error denies unless
    `fail_open` (it is reported either way)."""
    results: dict[str, PolicyResult] = await engine.evaluate(policies, input) if policies else {}
    decision = decide(policies, results, fail_open=fail_open)
    return Evaluation(
        allowed=decision.allowed,
        violations=decision.violations,
        outcomes={
            policy.id: Outcome(
                policy_name=policy.name,
                allow=results[policy.id].allow,
                violations=results[policy.id].violations,
                error=results[policy.id].error,
            )
            for policy in policies
        },
        policies_evaluated=len(policies),
        engine_error=decision.engine_error,
    )


async def enforce(
    db: Queryable,
    engine: PolicyEngine,
    org: str,
    *,
    input: dict[str, Any],
    scope: PolicyScope,
    fail_open: bool,
) -> Evaluation:
    """Evaluate every enabled policy of the scope against `input`. No policy: allowed."""
    return await evaluate(engine, await scope_policies(db, org, scope), input, fail_open=fail_open)


def refused(violation: str) -> Evaluation:
    """A decision made before any policy runs."""
    return Evaluation(False, [violation], {}, 0, None)


async def check_tool_call(
    db: Queryable,
    engine: PolicyEngine,
    org: str,
    *,
    queue_id: uuid.UUID | None,
    execution_id: uuid.UUID,
    tool_name: str,
    arguments: dict[str, Any],
    mcp_server: str | None,
    fail_open: bool,
) -> Evaluation:
    """May this execution (on `queue_id`, not ended) make this call? The tool must be one the
    execution was started with (or, with `mcp_server`, a server of its environment); who acts,
    for which agent, team and environments, and what the tool is come from the rows: the
    execution's, and one snapshot of its agent or team (its environment and its policies). A
    denial is announced to webhook subscribers (`policy.violation`)."""
    execution = await db.fetchrow(
        "SELECT e.id, e.execution_type, e.entity_id, e.entity_name, e.status, e.worker_queue_id, "
        "e.tools, e.execution_environment, e.user_id, e.user_name, e.user_email, e.user_role, "
        "a.team_id FROM executions e LEFT JOIN agents a "
        "ON a.id = e.entity_id AND a.organization_id = e.organization_id "
        "WHERE e.id = $1 AND e.organization_id = $2 AND e.worker_queue_id = $3",
        execution_id,
        org,
        queue_id,
    )
    if execution is None or execution["status"] in TERMINAL_STATES:
        raise not_found("Running execution", execution_id)
    decision = await _tool_decision(
        db, engine, org, execution, tool_name, arguments, mcp_server, fail_open
    )
    if not decision.allowed:
        await outbox.record(
            db,
            org,
            "policy.violation",
            {
                "action": "tool_execution",
                "execution_id": str(execution["id"]),
                "execution_type": execution["execution_type"],
                "agent_id": str(execution["entity_id"]) if execution["entity_id"] else None,
                "agent_name": execution["entity_name"],
                "worker_queue_id": str(execution["worker_queue_id"]),
                "tool_name": tool_name,
                "mcp_server": mcp_server,
                "violations": decision.violations,
                "policies_evaluated": decision.policies_evaluated,
                "engine_error": decision.engine_error,
            },
        )
    return decision


async def _tool_decision(
    db: Queryable,
    engine: PolicyEngine,
    org: str,
    execution: asyncpg.Record,
    tool_name: str,
    arguments: dict[str, Any],
    mcp_server: str | None,
    fail_open: bool,
) -> Evaluation:
    tool = _builtin_tool(execution, tool_name) if mcp_server is None else None
    if mcp_server is None and tool is None:
        return refused(f"'{tool_name}' is not one of this execution's tools")
    # A team's own run (a claude_code leader running its members' tools) answers to the
    # team's policies; an agent's run, member or not, to the agent's.
    is_team = execution["execution_type"] == "team"
    entity_id = execution["entity_id"]
    agent_id = str(entity_id) if entity_id and not is_team else None
    team_id = entity_id if is_team else execution["team_id"]
    snapshot = None
    if entity_id is not None:
        snapshot = await load_snapshot(
            db,
            org,
            agent_id=None if is_team else entity_id,
            team_id=entity_id if is_team else None,
            queue_id=execution["worker_queue_id"],
            role=execution["user_role"],
        )
    if mcp_server is not None:
        environment = environment_of(snapshot, execution["execution_environment"])
        tool = _mcp_tool(environment.mcp_servers, tool_name, mcp_server)
        if tool is None:
            return refused(f"'{tool_name}' is not one of this execution's tools")
    assert tool is not None
    if snapshot is None:
        scope = PolicyScope()
    elif snapshot.chain is None:
        raise not_found("Team" if is_team else "Agent", entity_id)
    else:
        scope = run_scope(snapshot)
    policy_input = {
        "action": "tool_execution",
        "tool": {**tool, "arguments": arguments},
        "user": {
            "id": execution["user_id"],
            "name": execution["user_name"],
            "email": execution["user_email"],
            "roles": [execution["user_role"]] if execution["user_role"] else [],
        },
        "organization": {"id": org},
        "team": {"id": str(team_id)} if team_id else None,
        "execution": {
            "execution_id": str(execution["id"]),
            "agent_id": agent_id,
            "agent_name": None if is_team else execution["entity_name"],
            "environment_ids": scope.environment_ids,
            "worker_queue_id": str(execution["worker_queue_id"]),
            "timestamp": datetime.now(UTC).isoformat(),
        },
    }
    return await enforce(db, engine, org, input=policy_input, scope=scope, fail_open=fail_open)


def _builtin_tool(execution: asyncpg.Record, tool_name: str) -> dict[str, Any] | None:
    """The tool as the execution was started with it, or None when it has no such tool."""
    for spec in execution["tools"] or []:
        if spec.get("name") == tool_name:
            return {
                "name": spec["name"],
                "source": spec.get("source", "builtin"),
                "category": spec.get("category", ""),
                "risk_level": spec.get("risk_level", "medium"),
            }
    return None


def _mcp_tool(servers: dict[str, Any], tool_name: str, mcp_server: str) -> dict[str, Any] | None:
    """A tool of one of the execution's MCP servers, or None when it has no such server."""
    if mcp_server not in servers:
        return None
    return {
        "name": tool_name,
        "source": "mcp",
        "category": "mcp",
        "risk_level": "high",
        "mcp_server": mcp_server,
    }
