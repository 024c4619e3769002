"""`start_execution`: the one way an execution starts, whoever asks (a user's execute of an
agent or a team, and the control plane's own workflows, jobs and triggers); and
`record_member_execution`, the same steps for a team member's run, whose workflow the team's
workflow starts as its child.

Order, and why: everything is read and checked first (the agent or team, the queue, the model,
the run's override, the `agent_execution` / `team_execution` policies), so a refusal writes
nothing; then the rows are written in one statement (execution with its workflow's input,
participant, first transition); then the workflow starts in the organization's namespace,
after the commit, so the row exists before its workflow can report. A caller that waits for the
start (an activity) sees a start that fails, and the row is removed; the API's execute answers
before the start and leaves it to `BackgroundStarts` (controlplane/executions/starting.py).

Round trips, and why so few: one statement reads everything the run inherits
(controlplane/snapshot.py), the checks and resolutions are pure functions of it (policies run in
process), and one statement writes the three rows; both on one connection, so the pool resets it
once. Three round trips before the workflow starts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import asyncpg

from controlplane.context import context_of, context_prompt
from controlplane.db import Queryable
from controlplane.environments import environment_of, stdio_servers
from controlplane.errors import DomainError, Forbidden, Invalid, Refused, Unavailable, not_found
from controlplane.executions.starting import PendingStart, encode_input, start
from controlplane.models import compatibility_errors, model_info
from controlplane.policies import PolicyScope, enabled_policies, evaluate, run_scope
from controlplane.policy_engine import PolicyEngine
from controlplane.skills import resolve_skills, tool_specs_for
from controlplane.snapshot import QueueRow, Snapshot, load_snapshot
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
    # Set: the start is handed to it, to make after `start_execution` returns (the API's
    # execute, through BackgroundStarts); None: it is made before, and a start that fails raises.
    background: Callable[[PendingStart], None] | None = None


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


def model_spec(row: dict[str, Any] | None, runtime: str, model_id: str | None) -> ModelSpec:
    """The model a run uses (`row`: the snapshot's, the named one or else the organization's
    default); it must suit the runtime."""
    if row is None:
        if model_id:
            raise Refused(f"The model '{model_id}' is not in the catalogue")
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


def active_queue(queue: QueueRow | None, queue_id: uuid.UUID) -> QueueRow:
    if queue is None:
        raise not_found("Worker queue", queue_id)
    if queue.status != "active":
        raise Refused(f"Worker queue '{queue.name}' is {queue.status}, not active")
    return queue


async def find_active_queue(db: Queryable, org: str, queue_id: uuid.UUID) -> QueueRow:
    """The organization's worker queue, which must be active (a run's steps will use it)."""
    row = await db.fetchrow(
        "SELECT id, name, status, environment_id FROM worker_queues "
        "WHERE id = $1 AND organization_id = $2",
        queue_id,
        org,
    )
    found = None if row is None else QueueRow(**dict(row))
    return active_queue(found, queue_id)


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
    services: Services, what: str, input: dict[str, Any], scope: PolicyScope
) -> None:
    decision = await evaluate(
        services.policy_engine,
        enabled_policies(scope),
        input,
        fail_open=services.policy_fail_open,
    )
    if not decision.allowed:
        raise Forbidden(
            f"A policy denies this {what}",
            details={"violations": decision.violations, "engine_error": decision.engine_error},
        )


def _execution_facts(request: LaunchRequest, queue: QueueRow, scope: PolicyScope) -> dict[str, Any]:
    return {
        "prompt": request.prompt,
        "environment_ids": scope.environment_ids,
        "worker_queue_id": str(queue.id),
        "trigger_source": request.trigger_source,
    }


async def _plan_agent(
    snapshot: Snapshot,
    services: Services,
    request: LaunchRequest,
    execution_id: uuid.UUID,
    *,
    one_shot: bool | None = None,
) -> Planned:
    org, chain, queue = request.caller.organization_id, snapshot.chain, snapshot.queue
    if chain is None or chain.agent is None:
        raise not_found("Agent", request.agent_id)
    assert queue is not None
    agent = chain.agent
    agent_id = uuid.UUID(str(agent["id"]))
    team_id = str(agent["team_id"]) if agent["team_id"] else None
    model = model_spec(snapshot.model, agent["runtime"], agent["model_id"])
    scope = run_scope(snapshot)
    await _check_policies(
        services,
        "execution",
        {
            "action": "agent_execution",
            "agent": {
                "id": str(agent_id),
                "name": agent["name"],
                "runtime": agent["runtime"],
                "model": model.value,
            },
            "user": _policy_user(request),
            "organization": {"id": org},
            "team": {"id": team_id} if team_id else None,
            "execution": _execution_facts(request, queue, scope),
        },
        scope,
    )
    skills = resolve_skills(snapshot, chain)
    tools = tool_specs_for(skills)
    environment = environment_of(snapshot, request.execution_environment, skills=skills)
    configuration = agent["configuration"] or {}
    # Templates such as {{.secret.X}} stay unrendered here: the worker renders them inside its
    # activities, so secret values never enter Temporal history.
    system_prompt = with_context(
        request.system_prompt or configuration.get("system_prompt"),
        context_prompt(context_of(snapshot)),
    )
    user = _user(request)
    workflow_input = AgentExecutionInput(
        execution_id=str(execution_id),
        agent_id=str(agent_id),
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
            agent_id=str(agent_id),
            agent_name=agent["name"],
            team_id=team_id,
            environment_ids=scope.environment_ids,
            user=user,
        ),
    )
    return Planned(
        execution_type="agent",
        entity_id=agent_id,
        entity_name=agent["name"],
        system_prompt=system_prompt,
        metadata={"model": model.value, "runtime": agent["runtime"]},
        tools=tools,
        workflow_type=AGENT_EXECUTION_WORKFLOW,
        workflow_input=workflow_input,
    )


async def _plan_team(
    snapshot: Snapshot, services: Services, request: LaunchRequest, execution_id: uuid.UUID
) -> Planned:
    org, queue = request.caller.organization_id, snapshot.queue
    if snapshot.team is None:
        raise not_found("Team", request.team_id)
    assert queue is not None
    team = team_for_run(snapshot.team, [member.agent or {} for member in snapshot.members])
    if not team.members:
        raise Refused(
            f"The team '{team.name}' has no members: add agents with "
            f"POST /api/v1/teams/{team.id}/agents/{{agent_id}}"
        )
    model = None
    if team.model_id or team.coordination_type == "leader":
        # The leader needs a model (the team's, else the default); a parallel team with one
        # also has it sum up its members' answers.
        model = model_spec(snapshot.model, team.runtime, team.model_id)
    scope = run_scope(snapshot)
    await _check_policies(
        services,
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
    members = {str(member.agent_id): member for member in snapshot.members}
    tools = (
        team_member_tools(
            team, lambda agent_id: tool_specs_for(resolve_skills(snapshot, members[agent_id]))
        )
        if team.runtime == "claude_code"
        else []
    )
    system_prompt = with_context(
        request.system_prompt or leader_prompt(team),
        context_prompt(context_of(snapshot)),
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


# The execution, its owner and its first transition in one statement (so in one transaction);
# a member run whose delegation key is recorded already inserts nothing and answers that run's
# id (when it was committed before this statement began).
RECORD_SQL = """
WITH execution AS (
    INSERT INTO executions (id, organization_id, execution_type, entity_id, entity_name,
        runner_name, user_id, user_name, user_email, user_avatar, prompt, system_prompt,
        execution_metadata, temporal_workflow_id, worker_queue_id, execution_environment, tools,
        user_role, trigger_source, parent_execution_id, delegation_key, job_id, start_payload)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
        $19, $20, $21, $24, $25)
    ON CONFLICT (parent_execution_id, delegation_key) WHERE parent_execution_id IS NOT NULL
    DO NOTHING
    RETURNING id
), participant AS (
    INSERT INTO execution_participants (id, execution_id, organization_id, user_id, user_name,
        user_email, user_avatar, role)
    SELECT $22, id, $2, $7, $8, $9, $10, 'owner' FROM execution
), transition AS (
    INSERT INTO execution_transitions (execution_id, organization_id, to_state, reasoning)
    SELECT id, $2, 'pending', $23 FROM execution
)
SELECT id FROM execution
UNION ALL
SELECT id FROM executions WHERE parent_execution_id = $20 AND delegation_key = $21
"""


async def _record(
    conn: Any,
    request: LaunchRequest,
    planned: Planned,
    queue: QueueRow,
    execution_id: uuid.UUID,
    workflow_id: str,
    *,
    parent_execution_id: uuid.UUID | None = None,
    delegation_key: str | None = None,
    reason: str | None = None,
    start_payload: bytes | None = None,
) -> uuid.UUID | None:
    """Write the execution, its owner and its first transition (RECORD_SQL). The id of the run
    recorded: `execution_id`, or for a child run whose delegation key was recorded already (a
    retried request) that run's; None when that run is not committed yet."""
    caller, org = request.caller, request.caller.organization_id
    metadata = {
        **request.execution_metadata,
        "organization_id": org,
        "worker_queue_name": queue.name,
        **planned.metadata,
    }
    recorded: uuid.UUID | None = await conn.fetchval(
        RECORD_SQL,
        execution_id,
        org,
        planned.execution_type,
        planned.entity_id,
        planned.entity_name,
        queue.name,
        caller.actor,
        request.user_name,
        request.user_email,
        request.user_avatar,
        request.prompt,
        planned.system_prompt,
        metadata,
        workflow_id,
        queue.id,
        request.execution_environment or {},
        [asdict(tool) for tool in planned.tools],
        caller.role,
        request.trigger_source,
        parent_execution_id,
        delegation_key,
        uuid.uuid4(),
        reason or ("delegated by its team" if parent_execution_id else "execution submitted"),
        request.job_id,
        start_payload,
    )
    return recorded


async def start_execution(db: Any, services: Services, request: LaunchRequest) -> Launched:
    """Check, record and start an agent or team execution (see the module docstring). `db` is
    the pool: the run is read and written on one connection of it. A child run
    (`request.parent_execution_id`) whose key was recorded before answers that run, and starts
    its workflow if it never started (a start that died between the two)."""
    if (request.agent_id is None) == (request.team_id is None):
        raise Invalid("An execution runs exactly one agent or one team")
    org = request.caller.organization_id
    async with db.acquire() as conn:
        snapshot = await load_snapshot(
            conn,
            org,
            agent_id=request.agent_id,
            team_id=request.team_id,
            queue_id=request.worker_queue_id,
            role=request.caller.role,
        )
        queue = active_queue(snapshot.queue, request.worker_queue_id)
        check_override(request.caller, request.execution_environment)
        existing = await _recorded_child(conn, request)
        raced = False
        if existing is not None and existing["status"] != "pending":
            return Launched(existing["id"], existing["temporal_workflow_id"], queue.name)
        execution_id = existing["id"] if existing is not None else uuid.uuid4()
        plan = _plan_agent if request.agent_id is not None else _plan_team
        planned = await plan(snapshot, services, request, execution_id)
        workflow_id = workflow_id_for(str(execution_id), planned.execution_type)
        argument = await encode_input(planned.workflow_input)
        if existing is None:
            recorded = await _record(
                conn,
                request,
                planned,
                queue,
                execution_id,
                workflow_id,
                parent_execution_id=request.parent_execution_id,
                delegation_key=request.delegation_key,
                reason="started by its parent execution" if request.parent_execution_id else None,
                start_payload=argument.payload.SerializeToString(),
            )
            raced = recorded != execution_id
    if raced:  # a concurrent retry recorded it first: answer that run
        return await start_execution(db, services, request)
    launched = Launched(execution_id, workflow_id, queue.name)
    pending = PendingStart(
        org, execution_id, planned.workflow_type, workflow_id, str(queue.id), argument
    )
    if services.background is not None and existing is None:
        services.background(pending)
        return launched
    try:
        await start(services.temporal, pending)  # a child run's start made twice is one
    except Exception as error:
        # Nothing half-written: an execution whose workflow never started is removed.
        if existing is None:
            await db.execute("DELETE FROM executions WHERE id = $1", execution_id)
        services.temporal.count_error("start_workflow")
        if isinstance(error, DomainError):
            raise
        raise Unavailable(f"Could not start the execution on Temporal: {error}") from None
    return launched


def _as_execution(planned: Planned, execution_id: uuid.UUID) -> Planned:
    """The same plan for another execution id (a member run recorded already)."""
    workflow_input = planned.workflow_input
    assert isinstance(workflow_input, AgentExecutionInput)
    policy = workflow_input.policy
    if policy is not None:
        policy = replace(policy, execution_id=str(execution_id))
    return replace(
        planned,
        workflow_input=replace(workflow_input, execution_id=str(execution_id), policy=policy),
    )


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
    caller = Caller(org, team_run["user_id"] or "system", team_run["user_role"] or "member")
    async with db.acquire() as conn:
        snapshot = await load_snapshot(
            conn, org, agent_id=agent_id, queue_id=team_run["worker_queue_id"], role=caller.role
        )
        member = snapshot.agent
        if member is None or member["team_id"] != str(team_run["entity_id"]):
            raise Refused(
                f"Agent '{agent_id}' is not a member of the team '{team_run['entity_name']}'",
                details={"agent_id": str(agent_id)},
            )
        queue = snapshot.queue
        if queue is None:
            raise Refused("The team execution's worker queue no longer exists")
        request = LaunchRequest(
            caller=caller,
            prompt=task,
            worker_queue_id=queue.id,
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
        execution_id = uuid.uuid4()
        planned = await _plan_agent(snapshot, services, request, execution_id, one_shot=True)
        recorded = await _record(
            conn,
            request,
            planned,
            queue,
            execution_id,
            workflow_id_for(str(execution_id)),
            parent_execution_id=team_run["id"],
            delegation_key=key,
        )
        if recorded is None:  # a concurrent retry is recording it: answer that run
            recorded = await conn.fetchval(
                "SELECT id FROM executions WHERE parent_execution_id = $1 AND delegation_key = $2",
                team_run["id"],
                key,
            )
    if recorded is None:  # that retry's transaction rolled back: record it here after all
        return await record_member_execution(db, services, team_run, agent_id, task, key)
    if recorded != execution_id:  # a retried request: the run recorded before
        planned = _as_execution(planned, recorded)
    assert isinstance(planned.workflow_input, AgentExecutionInput)
    return MemberExecution(
        execution_id=str(recorded),
        workflow_id=workflow_id_for(str(recorded)),
        agent_id=str(agent_id),
        name=planned.entity_name,
        input=planned.workflow_input,
    )
