"""`POST /api/v1/agents/{agent_id}/execute`: record an execution and start its
AgentExecutionWorkflow on the chosen worker queue."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, Field
from starlette.responses import StreamingResponse
from temporalio.common import WorkflowIDReusePolicy

from api.context import context_prompt, resolve_context
from api.errors import ApiError, not_found
from api.event_stream import stream_events
from api.execution_environment import resolve_for_agent, stdio_servers
from api.model_catalogue import compatibility_errors, default_model_row, model_info, resolve_model
from api.policy_engine import get_engine
from api.routes.executions import COLUMNS
from api.routes.policies import agent_scope, enforce
from api.routing import Call, Router
from api.skills import tools_for_agent
from workflows.contracts import (
    AGENT_EXECUTION_WORKFLOW,
    AgentExecutionInput,
    ModelSpec,
    PolicyContext,
    workflow_id_for,
)

router = Router("agents")


class UserMetadata(BaseModel):
    user_id: str | None = None
    user_name: str | None = None
    user_email: str | None = None
    user_avatar: str | None = None


class ExecuteIn(BaseModel):
    prompt: str = Field(min_length=1)
    worker_queue_id: uuid.UUID = Field(description="An active worker queue of your organization")
    system_prompt: str | None = None
    user_metadata: UserMetadata = Field(default_factory=UserMetadata)
    execution_metadata: dict[str, Any] = Field(default_factory=dict)
    execution_environment: dict[str, Any] | None = None
    stream: bool = Field(
        False,
        description="With `Accept: text/event-stream` the response is the execution's SSE "
        "stream; otherwise it is ignored and the JSON carries `stream_url`.",
    )


class ExecuteOut(BaseModel):
    execution_id: uuid.UUID
    workflow_id: str
    status: str
    message: str
    stream_url: str


async def _model_for(call: Call, agent: Any) -> ModelSpec:
    if agent["model_id"]:
        model = await resolve_model(call.db, call.org, agent["model_id"])
        if model is None:
            raise ApiError(400, f"The agent's model '{agent['model_id']}' is not in the catalogue")
    else:
        row = await default_model_row(call.db, call.org)
        if row is None:
            raise ApiError(400, "The agent has no model and the organization has no default")
        model = model_info(row)
    errors = compatibility_errors(agent["runtime"], model)
    if errors:
        raise ApiError(400, "The agent cannot run", details={"errors": errors})
    pricing = model.pricing
    return ModelSpec(
        value=model.value,
        api_model=model.api_model,
        input_per_million=pricing.input_per_million if pricing else 0.0,
        output_per_million=pricing.output_per_million if pricing else 0.0,
    )


# Parts of a run's own execution_environment that hand the run credentials or a command to
# run on the worker: only admins may set them per run.
PRIVILEGED_OVERRIDES = ("secrets", "integration_ids", "mcp_servers")


def _check_override(call: Call, override: dict[str, Any] | None) -> None:
    if not override:
        return
    privileged = [key for key in PRIVILEGED_OVERRIDES if override.get(key)]
    if privileged and call.principal.role != "admin":
        raise ApiError(
            403,
            f"Only an admin key may set {', '.join(privileged)} in a run's "
            "execution_environment; put them on the agent, its team or its environments",
            details={"fields": privileged},
        )
    stdio = stdio_servers(override.get("mcp_servers"))
    if stdio:
        raise ApiError(
            422,
            "A run may not start MCP servers that run a command on the worker "
            f"({', '.join(stdio)}); such servers come from skills of type mcp_server",
            details={"mcp_servers": stdio},
        )


async def _check_execution_policy(
    call: Call, agent: Any, queue_id: uuid.UUID, model: str, user: dict[str, Any], prompt: str
) -> None:
    """`action: agent_execution` against the agent's policies, its queue's environment's and
    the caller's role's; a deny creates nothing."""
    scope = await agent_scope(
        call.db, call.org, str(agent["id"]), queue_id=queue_id, role=call.principal.role
    )
    team_id = str(agent["team_id"]) if agent["team_id"] else None
    decision = await enforce(
        call.db,
        get_engine(call.state.settings),
        call.org,
        input={
            "action": "agent_execution",
            "agent": {
                "id": str(agent["id"]),
                "name": agent["name"],
                "runtime": agent["runtime"],
                "model": model,
            },
            "user": user,
            "organization": {"id": call.org},
            "team": {"id": team_id} if team_id else None,
            "execution": {
                "prompt": prompt,
                "environment_ids": [ident for kind, ident in scope.layers if kind == "environment"],
                "worker_queue_id": str(queue_id),
            },
        },
        scope=scope,
        fail_open=call.state.settings.policy_fail_open,
    )
    if not decision.allowed:
        raise ApiError(
            403,
            "A policy denies this execution",
            details={"violations": decision.violations, "engine_error": decision.engine_error},
        )


def _with_context(system_prompt: str | None, context: str | None) -> str | None:
    if context is None:
        return system_prompt
    return f"{system_prompt}\n\n{context}" if system_prompt else context


@router.post("/api/v1/agents/{agent_id}/execute")
async def execute_agent(call: Call, body: ExecuteIn) -> ExecuteOut:
    """Start an execution of the agent on a worker queue; watch it on `stream_url`."""
    agent_id = call.path_uuid("agent_id", "Agent")
    agent = await call.db.fetchrow(
        "SELECT id, name, configuration, model_id, runtime, llm_config, team_id, environment_ids "
        "FROM agents "
        "WHERE id = $1 AND organization_id = $2",
        agent_id,
        call.org,
    )
    if agent is None:
        raise not_found("Agent", agent_id)
    queue = await call.db.fetchrow(
        "SELECT id, name, status FROM worker_queues WHERE id = $1 AND organization_id = $2",
        body.worker_queue_id,
        call.org,
    )
    if queue is None:
        raise not_found("Worker queue", body.worker_queue_id)
    if queue["status"] != "active":
        raise ApiError(400, f"Worker queue '{queue['name']}' is {queue['status']}, not active")
    _check_override(call, body.execution_environment)
    model = await _model_for(call, agent)
    configuration = agent["configuration"] or {}
    # Who runs this is the caller; the metadata may only add how to show them.
    user = body.user_metadata.model_copy()
    user.user_id = call.principal.actor
    policy_user = {
        "id": call.principal.actor,
        "name": user.user_name,
        "email": user.user_email,
        "roles": [call.principal.role],
    }
    await _check_execution_policy(call, agent, queue["id"], model.value, policy_user, body.prompt)
    tools = await tools_for_agent(call.db, call.org, agent_id)
    environment = await resolve_for_agent(call.db, call.org, agent_id, body.execution_environment)
    # Templates such as {{.secret.X}} stay unrendered here: the worker renders them inside its
    # activities, so secret values never enter Temporal history.
    system_prompt = _with_context(
        body.system_prompt or configuration.get("system_prompt"),
        context_prompt(await resolve_context(call.db, call.org, "agent", agent_id)),
    )
    execution_id = uuid.uuid4()
    workflow_id = workflow_id_for(str(execution_id))
    metadata = {
        **body.execution_metadata,
        "organization_id": call.org,
        "worker_queue_name": queue["name"],
        "model": model.value,
        "runtime": agent["runtime"],
    }
    async with call.db.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO executions (id, organization_id, execution_type, entity_id, entity_name, "
            "runner_name, user_id, user_name, user_email, user_avatar, prompt, system_prompt, "
            "execution_metadata, temporal_workflow_id, worker_queue_id, execution_environment, "
            "tools, user_role) VALUES ($1, $2, 'agent', $3, $4, $5, $6, $7, $8, $9, $10, $11, "
            "$12, $13, $14, $15, $16, $17)",
            execution_id,
            call.org,
            agent_id,
            agent["name"],
            queue["name"],
            user.user_id,
            user.user_name,
            user.user_email,
            user.user_avatar,
            body.prompt,
            system_prompt,
            metadata,
            workflow_id,
            queue["id"],
            body.execution_environment or {},
            [asdict(tool) for tool in tools],
            call.principal.role,
        )
        await conn.execute(
            "INSERT INTO execution_participants (id, execution_id, organization_id, user_id, "
            "user_name, user_email, user_avatar, role) VALUES ($1, $2, $3, $4, $5, $6, $7, "
            "'owner')",
            uuid.uuid4(),
            execution_id,
            call.org,
            user.user_id,
            user.user_name,
            user.user_email,
            user.user_avatar,
        )
        await conn.execute(
            "INSERT INTO execution_transitions (execution_id, organization_id, to_state, "
            "reasoning) VALUES ($1, $2, 'pending', 'execution submitted')",
            execution_id,
            call.org,
        )
    workflow_input = AgentExecutionInput(
        execution_id=str(execution_id),
        agent_id=str(agent_id),
        organization_id=call.org,
        prompt=body.prompt,
        model=model,
        system_prompt=system_prompt,
        runtime_type=agent["runtime"],
        one_shot=bool(configuration.get("one_shot", False)),
        max_tokens=int((agent["llm_config"] or {}).get("max_tokens", 4096)),
        user_metadata=user.model_dump(),
        tools=tools,
        # The worker lists the servers' tools: it can reach them, the control plane may not.
        has_mcp_servers=bool(environment.mcp_servers),
        policy=PolicyContext(
            organization_id=call.org,
            execution_id=str(execution_id),
            agent_id=str(agent_id),
            agent_name=agent["name"],
            team_id=str(agent["team_id"]) if agent["team_id"] else None,
            environment_ids=[str(e) for e in agent["environment_ids"] or []],
            user=user.model_dump(),
        ),
    )
    try:
        client = await call.state.temporal.client(call.org)
        await client.start_workflow(
            AGENT_EXECUTION_WORKFLOW,
            workflow_input,
            id=workflow_id,
            task_queue=str(queue["id"]),
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except Exception as error:
        # Nothing half-written: an execution whose workflow never started is removed.
        await call.db.execute("DELETE FROM executions WHERE id = $1", execution_id)
        call.state.metrics.temporal_errors.labels(operation="start_workflow").inc()
        if isinstance(error, ApiError):
            raise
        raise ApiError(503, f"Could not start the execution on Temporal: {error}") from None
    stream_url = f"/api/v1/executions/{execution_id}/stream"
    if body.stream and "text/event-stream" in call.request.headers.get("accept", ""):
        row = await call.db.fetchrow(
            f"SELECT {COLUMNS} FROM executions WHERE id = $1", execution_id
        )
        assert row is not None
        return StreamingResponse(  # type: ignore[return-value]
            stream_events(call.db, call.state.events, row, None),
            media_type="text/event-stream",
            headers={
                "Cache-Control": "no-cache",
                "X-Execution-ID": str(execution_id),
                "Content-Location": stream_url,
            },
        )
    return ExecuteOut(
        execution_id=execution_id,
        workflow_id=workflow_id,
        status="pending",
        message=f"Execution submitted to worker queue: {queue['name']}",
        stream_url=stream_url,
    )
