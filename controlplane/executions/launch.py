"""`start_execution`: the one way an execution starts, whoever asks (a user's execute of an
agent or a team, and the control plane's own workflows, jobs and triggers); and
`record_member_execution`, the same steps for a team member's run, whose workflow the team's
workflow starts as its child.

Order, and why: everything is read and checked first (the agent or team, the queue, the model,
the run's override, the `agent_execution` / `team_execution` policies), so a refusal writes
nothing; then the rows are written in one transaction (execution, participant, first
transition); then the workflow starts in the organization's namespace. A workflow that cannot
start leaves no row behind.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import asyncpg
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from controlplane.context import context_prompt, resolve_context
from controlplane.db import Queryable
from controlplane.environments import resolve_for_agent, stdio_servers
from controlplane.errors import DomainError, Forbidden, Invalid, Refused, Unavailable, not_found
from controlplane.models import compatibility_errors, default_model_row, model_info, resolve_model
from controlplane.policies import agent_scope, enforce, team_scope
from controlplane.policy_engine import PolicyEngine
from controlplane.skills import tools_for_agent
from controlplane.teams import leader_prompt, team_for_run, team_member_tools
from controlplane.temporal import TemporalGateway
from workflows.contracts import (
    AGENT_EXECUTION_WORKFLOW,
    TEAM_EXECUTION_WORKFLOW,
    AgentExecutionInput,
    MemberExecution,
    ModelSpec,
    PolicyContext,
    TeamExecutionInput,
    ToolSpec,
    workflow_id_for,
)

# Parts of a run's own execution_environment that hand the run credentials or a command to
# run on the worker: only admins may set them per run.
PRIVILEGED_OVERRIDES = ("secrets", "integration_ids", "mcp_servers")
TriggerSource = Literal["user", "job_cron", "job_webhook", "job_manual", "system", "api"]


@dataclass(frozen=True)
class Caller:
    """Who asks: the organization, the credential that acted and its role."""

    organization_id: str
    actor: str
    role: str


@dataclass
class LaunchRequest:
    """What to run (an agent or a team: exactly one of `agent_id`, `team_id`), where, for whom."""

    caller: Caller
    prompt: str
    worker_queue_id: uuid.UUID
    agent_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None
    system_prompt: str | None = None
    # How to show the caller (name, email, avatar); who acts is always `caller.actor`.
    user_name: str | None = None
    user_email: str | None = None
    user_avatar: str | None = None
    execution_metadata: dict[str, Any] = field(default_factory=dict)
    execution_environment: dict[str, Any] | None = None
    trigger_source: TriggerSource = "user"
    # The job this run is for (controlplane/jobs/), if any.
    job_id: uuid.UUID | None = None
    # A child run (a plan's task, a workflow's step): its parent execution, and the key that
    # names it there. The same key answers the same run, so a retried start starts nothing twice.
    parent_execution_id: uuid.UUID | None = None
    delegation_key: str | None = None


@dataclass(frozen=True)
class Launched:
    execution_id: uuid.UUID
    workflow_id: str
    queue_name: str


@dataclass(frozen=True)
class Services:
    """What starting an execution needs beyond the database."""

    temporal: TemporalGateway
    policy_engine: PolicyEngine
    policy_fail_open: bool


def check_override(caller: Caller, override: dict[str, Any] | None) -> None:
    """A run's own credentials and MCP servers are an admin's to give; a command to run on
    the worker never comes from a run (only from an admin's mcp_server skill)."""
    if not override:
        return
    privileged = [key for key in PRIVILEGED_OVERRIDES if override.get(key)]
    if privileged and caller.role != "admin":
        raise Forbidden(
            f"Only an admin key may set {', '.join(privileged)} in a run's "
            "execution_environment; put them on the agent, its team or its environments",
            details={"fields": privileged},
        )
    stdio = stdio_servers(override.get("mcp_servers"))
    if stdio:
        raise Invalid(
            "A run may not start MCP servers that run a command on the worker "
            f"({', '.join(stdio)}); such servers come from skills of type mcp_server",
            details={"mcp_servers": stdio},
        )


async def model_for(db: Queryable, org: str, runtime: str, model_id: str | None) -> ModelSpec:
    """The model a run uses: the named one, else the organization's default; it must suit the
    runtime."""
    if model_id:
        model = await resolve_model(db, org, model_id)
        if model is None:
            raise Refused(f"The model '{model_id}' is not in the catalogue")
    else:
        row = await default_model_row(db, org)
        if row is None:
            raise Refused("No model is named and the organization has no default")
        model = model_info(row)
    errors = compatibility_errors(runtime, model)
    if errors:
        raise Refused("The model cannot run on this runtime", details={"errors": errors})
    pricing = model.pricing
    return ModelSpec(
        value=model.value,
        api_model=model.api_model,
        input_per_million=pricing.input_per_million if pricing else 0.0,
        output_per_million=pricing.output_per_million if pricing else 0.0,
    )


async def active_queue(db: Queryable, org: str, queue_id: uuid.UUID) -> Any:
    queue = await db.fetchrow(
        "SELECT id, name, status FROM worker_queues WHERE id = $1 AND organization_id = $2",
        queue_id,
        org,
    )
    if queue is None:
        raise not_found("Worker queue", queue_id)
    if queue["status"] != "active":
        raise Refused(f"Worker queue '{queue['name']}' is {queue['status']}, not active")
    return queue


def with_context(system_prompt: str | None, context: str | None) -> str | None:
    if context is None:
        return system_prompt
    return f"{system_prompt}\n\n{context}" if system_prompt else context


@dataclass
class Planned:
    """A checked run, ready to record: its row's values and its workflow's input."""

    execution_type: str  # agent | team
    entity_id: uuid.UUID
    entity_name: str
    system_prompt: str | None
    metadata: dict[str, Any]
    tools: list[ToolSpec]
    workflow_type: str
    workflow_input: AgentExecutionInput | TeamExecutionInput


def _user(request: LaunchRequest) -> dict[str, Any]:
    return {
        "user_id": request.caller.actor,
        "user_name": request.user_name,
        "user_email": request.user_email,
        "user_avatar": request.user_avatar,
    }


def _policy_user(request: LaunchRequest) -> dict[str, Any]:
    return {
        "id": request.caller.actor,
        "name": request.user_name,
        "email": request.user_email,
        "roles": [request.caller.role],
    }


async def _check_policies(
    db: Queryable, services: Services, org: str, what: str, input: dict[str, Any], scope: Any
) -> None:
    decision = await enforce(
        db,
        services.policy_engine,
        org,
        input=input,
        scope=scope,
        fail_open=services.policy_fail_open,
    )
    if not decision.allowed:
        raise Forbidden(
            f"A policy denies this {what}",
            details={"violations": decision.violations, "engine_error": decision.engine_error},
        )


def _execution_facts(request: LaunchRequest, queue: Any, scope: Any) -> dict[str, Any]:
    return {
        "prompt": request.prompt,
        "environment_ids": scope.environment_ids,
        "worker_queue_id": str(queue["id"]),
        "trigger_source": request.trigger_source,
    }


async def _plan_agent(
    db: Any,
    services: Services,
    request: LaunchRequest,
    queue: Any,
    execution_id: uuid.UUID,
    *,
    one_shot: bool | None = None,
) -> Planned:
    caller, org = request.caller, request.caller.organization_id
    agent = await db.fetchrow(
        "SELECT id, name, configuration, model_id, runtime, llm_config, team_id "
        "FROM agents WHERE id = $1 AND organization_id = $2",
        request.agent_id,
        org,
    )
    if agent is None:
        raise not_found("Agent", request.agent_id)
    model = await model_for(db, org, agent["runtime"], agent["model_id"])
    scope = await agent_scope(db, org, agent["id"], queue_id=queue["id"], role=caller.role)
    await _check_policies(
        db,
        services,
        org,
        "execution",
        {
            "action": "agent_execution",
            "agent": {
                "id": str(agent["id"]),
                "name": agent["name"],
                "runtime": agent["runtime"],
                "model": model.value,
            },
            "user": _policy_user(request),
            "organization": {"id": org},
            "team": {"id": str(agent["team_id"])} if agent["team_id"] else None,
            "execution": _execution_facts(request, queue, scope),
        },
        scope,
    )
    tools = await tools_for_agent(db, org, agent["id"])
    environment = await resolve_for_agent(db, org, agent["id"], request.execution_environment)
    configuration = agent["configuration"] or {}
    # Templates such as {{.secret.X}} stay unrendered here: the worker renders them inside its
    # activities, so secret values never enter Temporal history.
    system_prompt = with_context(
        request.system_prompt or configuration.get("system_prompt"),
        context_prompt(await resolve_context(db, org, "agent", agent["id"])),
    )
    user = _user(request)
    workflow_input = AgentExecutionInput(
        execution_id=str(execution_id),
        agent_id=str(agent["id"]),
        organization_id=org,
        prompt=request.prompt,
        model=model,
        system_prompt=system_prompt,
        runtime_type=agent["runtime"],
        one_shot=bool(configuration.get("one_shot", False)) if one_shot is None else one_shot,
        max_tokens=int((agent["llm_config"] or {}).get("max_tokens", 4096)),
        user_metadata=user,
        tools=tools,
        # The worker lists the servers' tools: it can reach them, the control plane may not.
        has_mcp_servers=bool(environment.mcp_servers),
        policy=PolicyContext(
            organization_id=org,
            execution_id=str(execution_id),
            agent_id=str(agent["id"]),
            agent_name=agent["name"],
            team_id=str(agent["team_id"]) if agent["team_id"] else None,
            environment_ids=scope.environment_ids,
            user=user,
        ),
    )
    return Planned(
        execution_type="agent",
        entity_id=agent["id"],
        entity_name=agent["name"],
        system_prompt=system_prompt,
        metadata={"model": model.value, "runtime": agent["runtime"]},
        tools=tools,
        workflow_type=AGENT_EXECUTION_WORKFLOW,
        workflow_input=workflow_input,
    )


async def _plan_team(
    db: Any, services: Services, request: LaunchRequest, queue: Any, execution_id: uuid.UUID
) -> Planned:
    caller, org = request.caller, request.caller.organization_id
    assert request.team_id is not None
    team = await team_for_run(db, org, request.team_id)
    if not team.members:
        raise Refused(
            f"The team '{team.name}' has no members: add agents with "
            f"POST /api/v1/teams/{team.id}/agents/{{agent_id}}"
        )
    model = None
    if team.model_id or team.coordination_type == "leader":
        # The leader needs a model (the team's, else the default); a parallel team with one
        # also has it sum up its members' answers.
        model = await model_for(db, org, team.runtime, team.model_id)
    scope = await team_scope(db, org, team.id, queue_id=queue["id"], role=caller.role)
    await _check_policies(
        db,
        services,
        org,
        "execution",
        {
            "action": "team_execution",
            "team": {
                "id": str(team.id),
                "name": team.name,
                "runtime": team.runtime,
                "coordination_type": team.coordination_type,
                "model": model.value if model else None,
                "member_ids": [member.agent_id for member in team.members],
            },
            "user": _policy_user(request),
            "organization": {"id": org},
            "execution": _execution_facts(request, queue, scope),
        },
        scope,
    )
    # Only a claude_code leader runs tools itself (its members as subagents, inside its call).
    tools = await team_member_tools(db, org, team) if team.runtime == "claude_code" else []
    system_prompt = with_context(
        request.system_prompt or leader_prompt(team),
        context_prompt(await resolve_context(db, org, "team", team.id)),
    )
    user = _user(request)
    workflow_input = TeamExecutionInput(
        execution_id=str(execution_id),
        team_id=str(team.id),
        team_name=team.name,
        organization_id=org,
        prompt=request.prompt,
        members=team.members,
        coordination_type=team.coordination_type,
        runtime_type=team.runtime,
        model=model,
        system_prompt=system_prompt,
        one_shot=team.one_shot,
        max_tokens=team.max_tokens,
        user_metadata=user,
        tools=tools,
        policy=PolicyContext(
            organization_id=org,
            execution_id=str(execution_id),
            team_id=str(team.id),
            environment_ids=scope.environment_ids,
            user=user,
        ),
    )
    return Planned(
        execution_type="team",
        entity_id=team.id,
        entity_name=team.name,
        system_prompt=system_prompt,
        metadata={
            "model": model.value if model else None,
            "runtime": team.runtime,
            "coordination_type": team.coordination_type,
        },
        tools=tools,
        workflow_type=TEAM_EXECUTION_WORKFLOW,
        workflow_input=workflow_input,
    )


async def _record(
    db: Any,
    request: LaunchRequest,
    planned: Planned,
    queue: Any,
    execution_id: uuid.UUID,
    workflow_id: str,
    *,
    parent_execution_id: uuid.UUID | None = None,
    delegation_key: str | None = None,
    reason: str | None = None,
) -> bool:
    """Write the execution, its owner and its first transition in one transaction. False when
    a child run with this delegation key was recorded already (a retried request)."""
    caller, org = request.caller, request.caller.organization_id
    metadata = {
        **request.execution_metadata,
        "organization_id": org,
        "worker_queue_name": queue["name"],
        **planned.metadata,
    }
    async with db.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            "INSERT INTO executions (id, organization_id, execution_type, entity_id, entity_name, "
            "runner_name, user_id, user_name, user_email, user_avatar, prompt, system_prompt, "
            "execution_metadata, temporal_workflow_id, worker_queue_id, execution_environment, "
            "tools, user_role, trigger_source, parent_execution_id, delegation_key, job_id) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, "
            "$18, $19, $20, $21, $22) ON CONFLICT (parent_execution_id, delegation_key) "
            "WHERE parent_execution_id IS NOT NULL DO NOTHING RETURNING id",
            execution_id,
            org,
            planned.execution_type,
            planned.entity_id,
            planned.entity_name,
            queue["name"],
            caller.actor,
            request.user_name,
            request.user_email,
            request.user_avatar,
            request.prompt,
            planned.system_prompt,
            metadata,
            workflow_id,
            queue["id"],
            request.execution_environment or {},
            [asdict(tool) for tool in planned.tools],
            caller.role,
            request.trigger_source,
            parent_execution_id,
            delegation_key,
            request.job_id,
        )
        if inserted is None:
            return False
        await conn.execute(
            "INSERT INTO execution_participants (id, execution_id, organization_id, user_id, "
            "user_name, user_email, user_avatar, role) VALUES ($1, $2, $3, $4, $5, $6, $7, "
            "'owner')",
            uuid.uuid4(),
            execution_id,
            org,
            caller.actor,
            request.user_name,
            request.user_email,
            request.user_avatar,
        )
        await conn.execute(
            "INSERT INTO execution_transitions (execution_id, organization_id, to_state, "
            "reasoning) VALUES ($1, $2, 'pending', $3)",
            execution_id,
            org,
            reason or ("delegated by its team" if parent_execution_id else "execution submitted"),
        )
    return True


async def start_execution(db: Any, services: Services, request: LaunchRequest) -> Launched:
    """Check, record and start an agent or team execution (see the module docstring). `db` is
    the pool: the rows are written in a transaction of their own. A child run
    (`request.parent_execution_id`) whose key was recorded before answers that run, and starts
    its workflow if it never started (a start that died between the two)."""
    if (request.agent_id is None) == (request.team_id is None):
        raise Invalid("An execution runs exactly one agent or one team")
    org = request.caller.organization_id
    queue = await active_queue(db, org, request.worker_queue_id)
    check_override(request.caller, request.execution_environment)
    existing = await _recorded_child(db, request)
    if existing is not None and existing["status"] != "pending":
        return Launched(existing["id"], existing["temporal_workflow_id"], queue["name"])
    execution_id = existing["id"] if existing is not None else uuid.uuid4()
    plan = _plan_agent if request.agent_id is not None else _plan_team
    planned = await plan(db, services, request, queue, execution_id)
    workflow_id = workflow_id_for(str(execution_id), planned.execution_type)
    if existing is None:
        recorded = await _record(
            db,
            request,
            planned,
            queue,
            execution_id,
            workflow_id,
            parent_execution_id=request.parent_execution_id,
            delegation_key=request.delegation_key,
            reason="started by its parent execution" if request.parent_execution_id else None,
        )
        if not recorded:  # a concurrent retry recorded it first: answer that run
            return await start_execution(db, services, request)
    try:
        client = await services.temporal.client(org)
        await client.start_workflow(
            planned.workflow_type,
            planned.workflow_input,
            id=workflow_id,
            task_queue=str(queue["id"]),
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except Exception as error:
        if existing is not None and isinstance(error, WorkflowAlreadyStartedError):
            return Launched(execution_id, workflow_id, queue["name"])  # it had started
        # Nothing half-written: an execution whose workflow never started is removed.
        if existing is None:
            await db.execute("DELETE FROM executions WHERE id = $1", execution_id)
        services.temporal.count_error("start_workflow")
        if isinstance(error, DomainError):
            raise
        raise Unavailable(f"Could not start the execution on Temporal: {error}") from None
    return Launched(execution_id, workflow_id, queue["name"])


async def _recorded_child(db: Queryable, request: LaunchRequest) -> asyncpg.Record | None:
    """The child run recorded under the request's parent and key, if any."""
    if request.parent_execution_id is None or request.delegation_key is None:
        return None
    row: asyncpg.Record | None = await db.fetchrow(
        "SELECT id, status, temporal_workflow_id FROM executions "
        "WHERE parent_execution_id = $1 AND delegation_key = $2",
        request.parent_execution_id,
        request.delegation_key,
    )
    return row


async def record_member_execution(
    db: Any, services: Services, team_run: asyncpg.Record, agent_id: uuid.UUID, task: str, key: str
) -> MemberExecution:
    """A member's run for a delegation of `team_run`: checked like any run (the member must be
    on the team now, its policies must allow it), recorded as the team run's child, answered
    with its workflow's input. The team's workflow starts that workflow as its child. The same
    key answers the same run, so a retried request starts nothing twice."""
    org = team_run["organization_id"]
    if team_run["execution_type"] != "team":
        raise Refused("Only a team execution delegates to members")
    member_team = await db.fetchval(
        "SELECT team_id FROM agents WHERE id = $1 AND organization_id = $2", agent_id, org
    )
    if member_team is None or member_team != team_run["entity_id"]:
        raise Refused(
            f"Agent '{agent_id}' is not a member of the team '{team_run['entity_name']}'",
            details={"agent_id": str(agent_id)},
        )
    queue = await db.fetchrow(
        "SELECT id, name FROM worker_queues WHERE id = $1", team_run["worker_queue_id"]
    )
    if queue is None:
        raise Refused("The team execution's worker queue no longer exists")
    request = LaunchRequest(
        caller=Caller(org, team_run["user_id"] or "system", team_run["user_role"] or "member"),
        prompt=task,
        worker_queue_id=queue["id"],
        agent_id=agent_id,
        user_name=team_run["user_name"],
        user_email=team_run["user_email"],
        user_avatar=team_run["user_avatar"],
        execution_metadata={
            "team_execution_id": str(team_run["id"]),
            "team_id": str(team_run["entity_id"]),
        },
        trigger_source=team_run["trigger_source"],
    )
    existing = await db.fetchval(
        "SELECT id FROM executions WHERE parent_execution_id = $1 AND delegation_key = $2",
        team_run["id"],
        key,
    )
    execution_id = existing or uuid.uuid4()
    planned = await _plan_agent(db, services, request, queue, execution_id, one_shot=True)
    workflow_id = workflow_id_for(str(execution_id))
    if existing is None:
        recorded = await _record(
            db,
            request,
            planned,
            queue,
            execution_id,
            workflow_id,
            parent_execution_id=team_run["id"],
            delegation_key=key,
        )
        if not recorded:  # a concurrent retry recorded it first: answer that run
            return await record_member_execution(db, services, team_run, agent_id, task, key)
    assert isinstance(planned.workflow_input, AgentExecutionInput)
    return MemberExecution(
        execution_id=str(execution_id),
        workflow_id=workflow_id,
        agent_id=str(agent_id),
        name=planned.entity_name,
        input=planned.workflow_input,
    )
