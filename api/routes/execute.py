"""`POST /api/v1/agents/{agent_id}/execute` and `POST /api/v1/teams/{team_id}/execute`: the
HTTP shape of `start_execution` (controlplane/executions/launch.py)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field
from starlette.responses import StreamingResponse

from api.event_stream import stream_events
from api.routing import Call, Router, launch_services
from controlplane.executions.launch import LaunchRequest, start_execution
from controlplane.executions.lifecycle import load

router = Router("agents")
team_router = Router("teams")


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


@router.post("/api/v1/agents/{agent_id}/execute")
async def execute_agent(call: Call, body: ExecuteIn) -> ExecuteOut:
    """Start an execution of the agent on a worker queue; watch it on `stream_url`."""
    return await _execute(call, body, agent_id=call.path_uuid("agent_id", "Agent"))


@team_router.post("/api/v1/teams/{team_id}/execute")
async def execute_team(call: Call, body: ExecuteIn) -> ExecuteOut:
    """Start an execution of the team on a worker queue (workflow `team-execution-{id}`): its
    members run as child executions; watch it, and them, on `stream_url`. 400 if the team has
    no members."""
    return await _execute(call, body, team_id=call.path_uuid("team_id", "Team"))


async def _execute(
    call: Call,
    body: ExecuteIn,
    *,
    agent_id: uuid.UUID | None = None,
    team_id: uuid.UUID | None = None,
) -> ExecuteOut:
    launched = await start_execution(
        call.db,
        launch_services(call),
        LaunchRequest(
            caller=call.caller,
            agent_id=agent_id,
            team_id=team_id,
            prompt=body.prompt,
            worker_queue_id=body.worker_queue_id,
            system_prompt=body.system_prompt,
            user_name=body.user_metadata.user_name,
            user_email=body.user_metadata.user_email,
            user_avatar=body.user_metadata.user_avatar,
            execution_metadata=body.execution_metadata,
            execution_environment=body.execution_environment,
        ),
    )
    stream_url = f"/api/v1/executions/{launched.execution_id}/stream"
    if body.stream and "text/event-stream" in call.request.headers.get("accept", ""):
        row = await load(call.db, call.org, launched.execution_id)
        assert row is not None
        return StreamingResponse(  # type: ignore[return-value]
            stream_events(call.db, call.state.events, row, None),
            media_type="text/event-stream",
            headers={
                "Cache-Control": "no-cache",
                "X-Execution-ID": str(launched.execution_id),
                "Content-Location": stream_url,
            },
        )
    return ExecuteOut(
        execution_id=launched.execution_id,
        workflow_id=launched.workflow_id,
        status="pending",
        message=f"Execution submitted to worker queue: {launched.queue_name}",
        stream_url=stream_url,
    )
