"""The run snapshot (controlplane/snapshot.py) and the pure resolvers over it: the hierarchy's
layers, context, skills, execution environment, policies, a team's run; then, against the real
database, what starting a run costs in statements and how a retried delegation is answered."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette

from controlplane.context import context_of
from controlplane.db import create_pool
from controlplane.environments import environment_of
from controlplane.errors import Refused
from controlplane.executions.launch import (
    Caller,
    LaunchRequest,
    Services,
    model_spec,
    record_member_execution,
    start_execution,
)
from controlplane.hierarchy import EnvironmentLayer, agent_chain, team_chain
from controlplane.policies import PolicyScope, enabled_policies, resolved_links, run_scope
from controlplane.policy_engine import get_engine
from controlplane.settings import Settings
from controlplane.skills import resolve_skills
from controlplane.snapshot import (
    ContextRow,
    PolicyLink,
    PolicyRow,
    QueueRow,
    SkillLink,
    Snapshot,
    load_snapshot,
)
from controlplane.teams import team_for_run, team_member_tools
from tests.conftest import Tenant, temporal_for
from tests.execution_helpers import make_agent, make_queue
from workflows.contracts import ToolSpec

ORG = "org-pure"


def ids(n: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(n)]


def layer(ident: uuid.UUID, name: str, **environment: Any) -> EnvironmentLayer:
    return EnvironmentLayer(ident, name, environment)


def agent_row(ident: uuid.UUID, team: uuid.UUID | None, **columns: Any) -> dict[str, Any]:
    return {
        "id": str(ident),
        "name": "ada",
        "team_id": str(team) if team else None,
        "environment_ids": [],
        "skill_ids": [],
        "skill_configurations": {},
        "execution_environment": {},
        **columns,
    }


def team_row(ident: uuid.UUID, **columns: Any) -> dict[str, Any]:
    return {
        "id": str(ident),
        "name": "crew",
        "environment_ids": [],
        "skill_ids": [],
        "skill_configurations": {},
        "execution_environment": {},
        **columns,
    }


# --- the hierarchy ----------------------------------------------------------------------------


def test_an_agents_environments_keep_their_order_and_exist() -> None:
    own, shared, team_only, gone = ids(4)
    found = {e: layer(e, n) for e, n in ((own, "own"), (shared, "shared"), (team_only, "t"))}
    agent = agent_row(
        uuid.uuid4(),
        None,
        environment_ids=[str(own), str(gone), "not-a-uuid", str(shared), str(own).upper()],
    )
    team = team_row(uuid.uuid4(), environment_ids=[str(shared), str(team_only)])
    chain = agent_chain(ORG, agent, team, found, [])
    assert chain.environment_ids == [own, shared]
    # The team's environments that are not the agent's own come after, as their own layer.
    assert chain.team_environment_ids == [team_only]
    assert team_chain(ORG, team, found, []).team_environment_ids == [shared, team_only]


# --- context ----------------------------------------------------------------------------------


def test_context_is_the_union_of_the_layers_in_order() -> None:
    agent_id, team_id, env, team_env, project = ids(5)
    found = {env: layer(env, "e"), team_env: layer(team_env, "te")}
    agent = agent_row(agent_id, team_id, environment_ids=[str(env)])
    team = team_row(team_id, environment_ids=[str(team_env)])
    snapshot = Snapshot(
        ORG,
        agent_chain(ORG, agent, team, found, [project]),
        contexts={
            ("organization", ORG): ContextRow(["k-org", "k-shared"], [], []),
            ("project", str(project)): ContextRow(["k-project"], ["r-project"], []),
            ("environment", str(team_env)): ContextRow(["k-team-env"], [], []),
            ("agent", str(agent_id)): ContextRow(["k-shared", "k-agent"], ["r-agent"], ["p1"]),
        },
    )
    resolved = context_of(snapshot)
    assert resolved.knowledge_uuids == ["k-org", "k-shared", "k-project", "k-team-env", "k-agent"]
    assert resolved.resource_ids == ["r-project", "r-agent"]
    assert list(resolved.layers) == [
        "organization",
        "project",
        "environment",
        "team_environment_1",
        "team",
        "agent",
    ]
    assert resolved.layers["environment"].knowledge_uuids == []
    assert resolved.policy_ids == ["p1"]
    assert (resolved.team_id, resolved.project_id) == (str(team_id), str(project))


# --- skills -----------------------------------------------------------------------------------


def skill(ident: uuid.UUID, name: str, **configuration: Any) -> dict[str, Any]:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return {
        "id": ident,
        "organization_id": ORG,
        "name": name,
        "type": "shell",
        "description": None,
        "icon": "Wrench",
        "enabled": True,
        "configuration": configuration,
        "created_at": now,
        "updated_at": now,
    }


def test_a_skill_met_again_moves_to_the_later_layer_with_its_overrides_merged() -> None:
    agent_id, team_id, env = ids(3)
    echo, ls, disabled = ids(3)
    found = {env: layer(env, "e")}
    agent = agent_row(agent_id, team_id, environment_ids=[str(env)])
    team = team_row(team_id, skill_ids=[str(ls)], skill_configurations={str(ls): {"timeout": 5}})
    chain = agent_chain(ORG, agent, team, found, [])
    snapshot = Snapshot(
        ORG,
        chain,
        skill_links=[
            SkillLink("environment", env, echo, {"a": 1, "b": 1}),
            SkillLink("environment", env, disabled, {}),
            SkillLink("agent", agent_id, echo, {"b": 2}),
        ],
        skills={echo: skill(echo, "echo", base=True, b=0), ls: skill(ls, "ls")},
    )
    resolved = resolve_skills(snapshot, chain)
    assert [s.name for s in resolved] == ["ls", "echo"]
    assert (resolved[0].source, resolved[0].inherited) == ("team", True)
    assert resolved[0].configuration == {"timeout": 5}
    assert (resolved[1].source, resolved[1].inherited) == ("agent", False)
    assert resolved[1].configuration_override == {"a": 1, "b": 2}
    assert resolved[1].configuration == {"base": True, "a": 1, "b": 2}


# --- execution environment --------------------------------------------------------------------


def test_the_environment_layers_fold_outermost_first_and_the_run_last() -> None:
    agent_id, team_id, env = ids(3)
    found = {env: layer(env, "prod", env_vars={"A": "env", "B": "env"}, secrets=["S1"])}
    agent = agent_row(
        agent_id,
        team_id,
        environment_ids=[str(env)],
        execution_environment={
            "env_vars": {"C": "agent"},
            # Stored before they were refused at write: a stdio server never comes from here.
            "mcp_servers": {"local": {"command": "rm"}},
        },
    )
    team = team_row(team_id, execution_environment={"env_vars": {"B": "team"}, "secrets": ["S2"]})
    snapshot = Snapshot(ORG, agent_chain(ORG, agent, team, found, []))
    resolved = environment_of(snapshot, {"env_vars": {"A": "run"}, "secrets": ["S1", "S3"]})
    assert resolved.env_vars == {"A": "run", "B": "team", "C": "agent"}
    assert resolved.secrets == ["S1", "S2", "S3"]
    assert resolved.sources["env_vars"] == {"A": "run", "B": "team:crew", "C": "agent:ada"}
    assert resolved.sources["secrets"]["S1"] == "environment:prod"
    assert resolved.mcp_servers == {}
    assert (resolved.agent_id, resolved.agent_name) == (str(agent_id), "ada")
    # A gone agent leaves the run's own layer.
    assert environment_of(None, {"env_vars": {"A": "run"}}).env_vars == {"A": "run"}


# --- policies ---------------------------------------------------------------------------------


def policy(name: str, enabled: bool = True) -> PolicyRow:
    return PolicyRow(uuid.uuid4(), name, None, f"package {name}", enabled, 1)


def test_a_policy_counts_once_at_its_highest_priority_then_the_listed_ones() -> None:
    agent_id, env = ids(2)
    by_env, tie, disabled, elsewhere, listed, listed_off = (
        policy("by-env"),
        policy("tie"),
        policy("disabled", enabled=False),
        policy("elsewhere"),
        policy("listed"),
        policy("listed-off", enabled=False),
    )
    agent, environment = ("agent", str(agent_id)), ("environment", str(env))
    links = [  # as loaded: by policy name
        PolicyLink(by_env, *agent, 100, {}),
        PolicyLink(by_env, *environment, 300, {"why": "env"}),
        PolicyLink(disabled, *agent, 100, {}),
        PolicyLink(elsewhere, "agent", str(uuid.uuid4()), 900, {}),
        PolicyLink(tie, *agent, 200, {}),
        PolicyLink(tie, "team", "t", 200, {}),
    ]
    scope = PolicyScope(
        layers=[environment, ("team", "t"), agent],
        listed=[
            (listed.id, "project", "p"),
            (by_env.id, "context", "agent"),
            (listed_off.id, "context", "agent"),
            (uuid.uuid4(), "context", "agent"),
        ],
        links=links,
        policies={p.id: p for p in (listed, listed_off, by_env)},
    )
    resolved = resolved_links(scope)
    assert [(link.policy.name, link.entity_type, link.priority) for link in resolved] == [
        ("by-env", "environment", 300),
        ("tie", "team", 200),  # equal priority: the broader layer
        ("disabled", "agent", 100),
    ]
    assert resolved[0].metadata == {"why": "env"}
    assert [p.name for p in enabled_policies(scope)] == ["by-env", "tie", "listed"]


def test_a_runs_scope_is_the_queue_environment_the_hierarchy_and_the_role() -> None:
    agent_id, team_id, env, queue_env, project, p1 = ids(6)
    found = {env: layer(env, "e")}
    agent = agent_row(agent_id, team_id, environment_ids=[str(env)])
    snapshot = Snapshot(
        ORG,
        agent_chain(ORG, agent, team_row(team_id), found, [project]),
        project_policy_ids={project: [str(p1), "junk"]},
        contexts={("agent", str(agent_id)): ContextRow([], [], [str(p1).upper()])},
        queue=QueueRow(uuid.uuid4(), "q", "active", queue_env),
        role="member",
    )
    scope = run_scope(snapshot)
    assert scope.layers == [
        ("environment", str(queue_env)),
        ("environment", str(env)),
        ("team", str(team_id)),
        ("agent", str(agent_id)),
        ("role", "member"),
    ]
    assert scope.listed == [(p1, "project", str(project)), (p1, "context", "agent")]
    assert scope.environment_ids == [str(queue_env), str(env)]


# --- a team's run, models ---------------------------------------------------------------------


def test_a_team_run_orders_its_members_and_gathers_their_tools_once() -> None:
    first, second = ids(2)
    team = team_for_run(
        team_row(
            uuid.uuid4(),
            runtime="claude_code",
            coordination_type="leader",
            model_id=None,
            configuration={"instructions": ["be brief", ""], "llm": {"max_tokens": 99}},
        ),
        [
            {"id": str(first), "name": "a", "description": None, "configuration": {}},
            {"id": str(second), "name": "b", "description": "d", "configuration": None},
        ],
    )
    assert (team.instructions, team.max_tokens, team.one_shot) == ("- be brief", 99, False)
    shell = ToolSpec(name="shell", description="", input_schema={})
    ls = ToolSpec(name="ls", description="", input_schema={})
    tools = {str(first): [shell], str(second): [ls, shell]}
    assert team_member_tools(team, tools.__getitem__) == [shell, ls]
    assert [m.tool_names for m in team.members] == [["shell"], ["ls", "shell"]]


def test_a_run_without_a_usable_model_is_refused() -> None:
    with pytest.raises(Refused, match="'x/y' is not in the catalogue"):
        model_spec(None, "default", "x/y")
    with pytest.raises(Refused, match="no default"):
        model_spec(None, "default", None)
    openai = {
        "id": str(uuid.uuid4()),
        "value": "openai/gpt-5",
        "label": "GPT",
        "provider": "openai",
        "api_model": None,
        "enabled": True,
        "compatible_runtimes": ["default"],
        "pricing": {"input_per_million": 1, "output_per_million": 2},
        "organization_id": None,
    }
    assert model_spec(openai, "default", "openai/gpt-5").api_model == "gpt-5"
    with pytest.raises(Refused, match="cannot run on this runtime"):
        model_spec(openai, "claude_code", "openai/gpt-5")


# --- against the database ---------------------------------------------------------------------


async def make_team(tenant: Tenant, member_ids: list[str], **fields: Any) -> dict[str, Any]:
    response = await tenant.member.post(
        "/api/v1/teams",
        json={
            "name": f"team-{uuid.uuid4().hex[:6]}",
            "configuration": {"member_ids": member_ids, "one_shot": True},
            **fields,
        },
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_team_snapshot_holds_its_members_in_order(
    db: asyncpg.Pool[Any], tenant: Tenant
) -> None:
    queue = await make_queue(tenant, "snap")
    members = [await make_agent(tenant, "m") for _ in range(3)]
    team = await make_team(tenant, [members[2], members[0]], coordination_type="parallel")
    added = await tenant.member.post(f"/api/v1/teams/{team['id']}/agents/{members[1]}")
    assert added.status_code in (200, 201), added.text
    snapshot = await load_snapshot(
        db, tenant.id, team_id=uuid.UUID(team["id"]), queue_id=uuid.UUID(queue["id"])
    )
    assert snapshot.chain is not None and snapshot.chain.team_id == uuid.UUID(team["id"])
    assert [str(m.agent_id) for m in snapshot.members] == [members[2], members[0], members[1]]
    assert all(m.team_id == uuid.UUID(team["id"]) for m in snapshot.members)
    assert snapshot.queue is not None and str(snapshot.queue.id) == queue["id"]
    assert snapshot.queue.environment_id == uuid.UUID(queue["environment_id"])
    # No model named: the organization's default is loaded.
    assert snapshot.model is not None and snapshot.model["recommended"] is True
    other = await load_snapshot(db, "no-such-org", team_id=uuid.UUID(team["id"]))
    assert (other.chain, other.queue, other.members) == (None, None, [])


def services_of(app: Starlette, settings: Settings) -> Services:
    return Services(app.state.cp.temporal, get_engine(settings), settings.policy_fail_open)


async def test_an_execute_reads_once_and_writes_once(
    app: Starlette, settings: Settings, tenant: Tenant, database_url: str, temporal_address: str
) -> None:
    """The statements `start_execution` sends: the snapshot and the three inserts as one; the
    pool's connection goes back without a reset query (a regression guard for issue 12)."""
    queue = await make_queue(tenant, "trips")
    agent_id = await make_agent(tenant, "trips")
    request = LaunchRequest(
        Caller(tenant.id, "tester", "member"),
        "hi",
        uuid.UUID(queue["id"]),
        agent_id=uuid.UUID(agent_id),
    )
    statements: list[str] = []
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda query: statements.append(query.query))
        started = [await start_execution(pool, services_of(app, settings), request)]
        await asyncio.sleep(0)  # loggers run soon after their statement
        statements.clear()
        started.append(await start_execution(pool, services_of(app, settings), request))
        await asyncio.sleep(0)
    finally:
        await pool.close()
    heads = [" ".join(sql.split())[:30] for sql in statements]
    assert heads == [
        "WITH agent AS ( SELECT a.* FRO",
        "WITH execution AS ( INSERT INT",
    ]
    client = await temporal_for(temporal_address, tenant)
    for launched in started:
        await client.get_workflow_handle(launched.workflow_id).terminate(reason="test done")


async def test_concurrent_delegations_with_one_key_record_one_run(
    app: Starlette, settings: Settings, db: asyncpg.Pool[Any], tenant: Tenant, temporal_address: str
) -> None:
    queue = await make_queue(tenant, "keys")
    member = await make_agent(tenant, "keys")
    team = await make_team(tenant, [member], coordination_type="parallel")
    services = services_of(app, settings)
    launched = await start_execution(
        db,
        services,
        LaunchRequest(
            Caller(tenant.id, "tester", "member"),
            "go",
            uuid.UUID(queue["id"]),
            team_id=uuid.UUID(team["id"]),
        ),
    )
    team_run = await db.fetchrow("SELECT * FROM executions WHERE id = $1", launched.execution_id)
    assert team_run is not None
    runs = await asyncio.gather(
        *(
            record_member_execution(db, services, team_run, uuid.UUID(member), "task", "turn-1")
            for _ in range(4)
        )
    )
    assert len({run.execution_id for run in runs}) == 1
    for run in runs:  # each answer is addressed to the run recorded
        assert run.input.execution_id == run.execution_id
        assert run.input.policy is not None
        assert run.input.policy.execution_id == run.execution_id
        assert run.workflow_id == f"agent-execution-{run.execution_id}"
    child = uuid.UUID(runs[0].execution_id)
    for table, column in (
        ("executions", "parent_execution_id"),
        ("execution_participants", "execution_id"),
        ("execution_transitions", "execution_id"),
    ):
        ident = launched.execution_id if table == "executions" else child
        count = await db.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", ident)
        assert count == 1, table
    client = await temporal_for(temporal_address, tenant)
    await client.get_workflow_handle(launched.workflow_id).terminate(reason="test done")
