"""`/api/v1/runtimes` (reference §3.6, §7.1): the two runtimes an agent can run on, and the
runtime/model check that agents use too."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, RootModel

from api.errors import not_found
from api.routing import Call, Router
from controlplane.models import (
    RUNTIMES,
    RuntimeInfo,
    RuntimeRequirements,
    check_runtime_model,
)

router = Router("runtimes")


class RuntimeList(RootModel[list[RuntimeInfo]]):
    pass


class RuntimeValidateRequest(BaseModel):
    runtime_type: str = Field(min_length=1, description="'default' or 'claude_code'")
    model_id: str | None = Field(None, description="A model id or value; omitted: not checked")
    agent_config: dict[str, Any] | None = None
    system_prompt: str | None = None


class RuntimeValidation(BaseModel):
    valid: bool
    errors: list[str]


@router.get("/api/v1/runtimes")
async def list_runtimes(call: Call) -> RuntimeList:
    """The runtimes: `default` (this control plane's agent loop) and `claude_code`."""
    return RuntimeList(list(RUNTIMES.values()))


@router.post("/api/v1/runtimes/validate", role="viewer")
async def validate_runtime(call: Call, body: RuntimeValidateRequest) -> RuntimeValidation:
    """Whether an agent with this runtime, model and configuration would be accepted; every
    problem is listed."""
    check = await check_runtime_model(
        call.db, call.org, body.runtime_type, body.model_id, body.agent_config
    )
    return RuntimeValidation(valid=not check.errors, errors=check.errors)


@router.get("/api/v1/runtimes/{runtime_id}/requirements")
async def runtime_requirements(call: Call) -> RuntimeRequirements:
    """What a runtime needs of the model and the agent configuration."""
    runtime_id = call.path["runtime_id"]
    runtime = RUNTIMES.get(runtime_id)
    if runtime is None:
        raise not_found("Runtime", runtime_id)
    return runtime.requirements


@router.get("/api/v1/runtimes/{runtime_id}")
async def get_runtime(call: Call) -> RuntimeInfo:
    """One runtime."""
    runtime_id = call.path["runtime_id"]
    runtime = RUNTIMES.get(runtime_id)
    if runtime is None:
        raise not_found("Runtime", runtime_id)
    return runtime
