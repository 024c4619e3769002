"""`start_execution`: the one way an execution starts, whoever asks (a user's execute, and the
control plane's own workflows, jobs and triggers).

Order, and why: everything is read and checked first (the agent, the queue, the model, the
run's override, the `agent_execution` policies), so a refusal writes nothing; then the rows
are written in one transaction (execution, participant, first transition); then the workflow
starts in the organization's namespace. A workflow that cannot start leaves no row behind.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from temporalio.common import WorkflowIDReusePolicy

from controlplane.context import context_prompt, resolve_context
from controlplane.db import Queryable
from controlplane.environments import resolve_for_agent, stdio_servers
from controlplane.errors import DomainError, Forbidden, Invalid, Refused, Unavailable, not_found
from controlplane.models import compatibility_errors, default_model_row, model_info, resolve_model
from controlplane.policies import agent_scope, enforce
from controlplane.policy_engine import PolicyEngine
from controlplane.skills import tools_for_agent
from controlplane.temporal import TemporalGateway
from workflows.contracts import (
    AGENT_EXECUTION_WORKFLOW,
    AgentExecutionInput,
    ModelSpec,
    PolicyContext,
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
    caller: Caller
    agent_id: uuid.UUID
    prompt: str
    worker_queue_id: uuid.UUID
    system_prompt: str | None = None
    # How to show the caller (name, email, avatar); who acts is always `caller.actor`.
    user_name: str | None = None
    user_email: str | None = None
    user_avatar: str | None = None
    execution_metadata: dict[str, Any] = field(default_factory=dict)
    execution_environment: dict[str, Any] | None = None
    trigger_source: TriggerSource = "user"
    parent_execution_id: uuid.UUID | None = None


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


async def start_execution(db: Any, services: Services, request: LaunchRequest) -> Launched:
    """Check, record and start an agent execution (see the module docstring). `db` is the
    pool: the rows are written in a transaction of their own."""
    caller, org = request.caller, request.caller.organization_id
    agent = await db.fetchrow(
        "SELECT id, name, configuration, model_id, runtime, llm_config, team_id "
        "FROM agents WHERE id = $1 AND organization_id = $2",
        request.agent_id,
        org,
    )
    if agent is None:
        raise not_found("Agent", request.agent_id)
    queue = await active_queue(db, org, request.worker_queue_id)
    check_override(caller, request.execution_environment)
    model = await model_for(db, org, agent["runtime"], agent["model_id"])
    user = {
        "user_id": caller.actor,
        "user_name": request.user_name,
        "user_email": request.user_email,
        "user_avatar": request.user_avatar,
    }
    scope = await agent_scope(db, org, agent["id"], queue_id=queue["id"], role=caller.role)
    decision = await enforce(
        db,
        services.policy_engine,
        org,
        input={
            "action": "agent_execution",
            "agent": {
                "id": str(agent["id"]),
                "name": agent["name"],
                "runtime": agent["runtime"],
                "model": model.value,
            },
            "user": {
                "id": caller.actor,
                "name": request.user_name,
                "email": request.user_email,
                "roles": [caller.role],
            },
            "organization": {"id": org},
            "team": {"id": str(agent["team_id"])} if agent["team_id"] else None,
            "execution": {
                "prompt": request.prompt,
                "environment_ids": scope.environment_ids,
                "worker_queue_id": str(queue["id"]),
                "trigger_source": request.trigger_source,
            },
        },
        scope=scope,
        fail_open=services.policy_fail_open,
    )
    if not decision.allowed:
        raise Forbidden(
            "A policy denies this execution",
            details={"violations": decision.violations, "engine_error": decision.engine_error},
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
    execution_id = uuid.uuid4()
    workflow_id = workflow_id_for(str(execution_id))
    metadata = {
        **request.execution_metadata,
        "organization_id": org,
        "worker_queue_name": queue["name"],
        "model": model.value,
        "runtime": agent["runtime"],
    }
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO executions (id, organization_id, execution_type, entity_id, entity_name, "
            "runner_name, user_id, user_name, user_email, user_avatar, prompt, system_prompt, "
            "execution_metadata, temporal_workflow_id, worker_queue_id, execution_environment, "
            "tools, user_role, trigger_source, parent_execution_id) VALUES ($1, $2, 'agent', $3, "
            "$4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
            execution_id,
            org,
            agent["id"],
            agent["name"],
            queue["name"],
            caller.actor,
            request.user_name,
            request.user_email,
            request.user_avatar,
            request.prompt,
            system_prompt,
            metadata,
            workflow_id,
            queue["id"],
            request.execution_environment or {},
            [asdict(tool) for tool in tools],
            caller.role,
            request.trigger_source,
            request.parent_execution_id,
        )
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
            "reasoning) VALUES ($1, $2, 'pending', 'execution submitted')",
            execution_id,
            org,
        )
    workflow_input = AgentExecutionInput(
        execution_id=str(execution_id),
        agent_id=str(agent["id"]),
        organization_id=org,
        prompt=request.prompt,
        model=model,
        system_prompt=system_prompt,
        runtime_type=agent["runtime"],
        one_shot=bool(configuration.get("one_shot", False)),
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
    try:
        client = await services.temporal.client(org)
        await client.start_workflow(
            AGENT_EXECUTION_WORKFLOW,
            workflow_input,
            id=workflow_id,
            task_queue=str(queue["id"]),
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except Exception as error:
        # Nothing half-written: an execution whose workflow never started is removed.
        await db.execute("DELETE FROM executions WHERE id = $1", execution_id)
        services.temporal.count_error("start_workflow")
        if isinstance(error, DomainError):
            raise
        raise Unavailable(f"Could not start the execution on Temporal: {error}") from None
    return Launched(execution_id, workflow_id, queue["name"])
