"""Resolved execution environments: what an agent's runs get (secret names only), and the
worker-protocol route that hands a running execution its values.

`GET /api/v1/executions/{execution_id}/environment` is what worker activities call at run time;
its answer is never passed through Temporal, so secret values stay out of workflow history.
The process environment a tool run should get is `integration_env`, then `secrets`, then `env`,
a later one winning on a clash.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field

from api.access import execution_for, vault_of
from api.errors import ApiError, not_found
from api.routing import Call, Router
from controlplane.environments import (
    Layer,
    ResolvedEnvironment,
    ResolvedIntegration,
    resolve_for_agent,
    resolve_for_execution,
    resolve_for_team,
)
from controlplane.vault import Reader, reveal
from workflows.contracts import TERMINAL_STATES
from workflows.templates import TemplateError, render_config

router = Router("execution-environment")


class LayerOut(BaseModel):
    source: str = Field(description="environment | team | agent | run")
    id: str | None
    name: str | None
    env_vars: dict[str, str]
    secrets: list[str]
    integration_ids: list[str]
    mcp_servers: dict[str, dict[str, Any]]


class FileOut(BaseModel):
    path: str
    mode: str
    secret_ref: str | None
    has_content: bool
    description: str | None


class IntegrationOut(BaseModel):
    id: str
    name: str
    integration_type: str
    env_vars: dict[str, str]
    secrets: list[str]
    token_secret: str | None
    token_env_vars: list[str]
    files: list[FileOut]
    context_prompt: str | None


class ResolvedOut(BaseModel):
    """The merged environment; secrets by name only, with the layer that brought each."""

    agent_id: str | None
    agent_name: str | None
    env_vars: dict[str, str]
    secrets: list[str]
    integration_ids: list[str]
    mcp_servers: dict[str, dict[str, Any]]
    integrations: list[IntegrationOut]
    skipped_integrations: list[dict[str, str]]
    missing_secrets: list[str] = Field(description="Named, but not in the vault")
    sources: dict[str, dict[str, str]] = Field(
        description="For env_vars, secrets, integration_ids and mcp_servers: name -> layer"
    )
    layers: list[LayerOut]


class FileValue(BaseModel):
    integration_id: str
    path: str
    mode: str
    content: str


class ContextPrompt(BaseModel):
    integration_id: str
    name: str
    context_prompt: str


class EnvironmentValues(BaseModel):
    """What a running execution's tools get. Never logged, never put in workflow history."""

    execution_id: uuid.UUID
    agent_id: str | None
    env: dict[str, str] = Field(description="Merged env_vars, templates rendered")
    secrets: dict[str, str] = Field(description="Secret values by name, to inject as env vars")
    mcp_servers: dict[str, dict[str, Any]] = Field(description="Configs, templates rendered")
    integration_env: dict[str, str] = Field(
        description="Integrations' env vars and tokens under their type's names"
    )
    files: list[FileValue]
    context_prompts: list[ContextPrompt]
    missing_secrets: list[str]
    skipped_integrations: list[dict[str, str]]


def _layer_out(layer: Layer) -> LayerOut:
    return LayerOut(
        source=layer.source,
        id=layer.id,
        name=layer.name,
        env_vars=layer.env_vars,
        secrets=layer.secrets,
        integration_ids=layer.integration_ids,
        mcp_servers=layer.mcp_servers,
    )


def _integration_out(integration: ResolvedIntegration) -> IntegrationOut:
    return IntegrationOut(
        id=integration.id,
        name=integration.name,
        integration_type=integration.integration_type,
        env_vars=integration.env_vars,
        secrets=integration.secrets,
        token_secret=integration.token_secret,
        token_env_vars=integration.token_env,
        files=[
            FileOut(
                path=f.path,
                mode=f.mode,
                secret_ref=f.secret_ref,
                has_content=f.content is not None,
                description=f.description,
            )
            for f in integration.files
        ],
        context_prompt=integration.context_prompt,
    )


async def _resolved_out(call: Call, resolved: ResolvedEnvironment) -> ResolvedOut:
    names = resolved.all_secret_names()
    present = await call.db.fetch(
        "SELECT name FROM secrets WHERE organization_id = $1 AND name = ANY($2::text[])",
        call.org,
        names,
    )
    found = {row["name"] for row in present}
    return ResolvedOut(
        agent_id=resolved.agent_id,
        agent_name=resolved.agent_name,
        env_vars=resolved.env_vars,
        secrets=resolved.secrets,
        integration_ids=resolved.integration_ids,
        mcp_servers=resolved.mcp_servers,
        integrations=[_integration_out(i) for i in resolved.integrations],
        skipped_integrations=resolved.skipped_integrations,
        missing_secrets=[name for name in names if name not in found],
        sources=resolved.sources,
        layers=[_layer_out(layer) for layer in resolved.layers],
    )


@router.get("/api/v1/execution-environment/agents/{agent_id}/resolved", role="member")
async def resolved_for_agent(call: Call) -> ResolvedOut:
    """The agent's environment merged across its environments, team and own settings."""
    agent_id = call.path_uuid("agent_id", "Agent")
    return await _resolved_out(call, await resolve_for_agent(call.db, call.org, agent_id, None))


@router.get("/api/v1/execution-environment/teams/{team_id}/resolved", role="member")
async def resolved_for_team(call: Call) -> ResolvedOut:
    """The team's environment merged across its environments and its own settings."""
    team_id = call.path_uuid("team_id", "Team")
    return await _resolved_out(call, await resolve_for_team(call.db, call.org, team_id))


def _rendered(what: str, value: Any, env: dict[str, str], secrets: dict[str, str]) -> Any:
    try:
        return render_config(value, env, secrets)
    except TemplateError as error:
        # Names only: the message never carries a value.
        raise ApiError(
            422,
            f"{what} refers to template variables the execution does not have: "
            + ", ".join(error.missing),
            details={"where": what, "missing": error.missing},
        ) from None


@router.get("/api/v1/executions/{execution_id}/environment", role="worker_token")
async def execution_environment(call: Call) -> EnvironmentValues:
    """Worker → control plane: the running execution's env vars, secret values, MCP server
    configs and integration credentials, every secret read audited. Worker tokens only, for
    executions on their queue that have not ended."""
    execution = await execution_for(call)
    execution_id: uuid.UUID = execution["id"]
    if execution["status"] in TERMINAL_STATES:
        # Values are served while the run needs them, not after.
        raise not_found("Running execution", execution_id)
    resolved = await resolve_for_execution(call.db, call.org, execution_id)
    names = resolved.all_secret_names()
    secrets: dict[str, str] = {}
    if names:
        reader = Reader(call.principal.actor, "execution_environment", execution_id)
        async with call.db.acquire() as conn, conn.transaction():
            secrets = await reveal(conn, vault_of(call), call.org, names, reader)
    env = {
        name: _rendered(f"env_vars.{name}", value, resolved.env_vars, secrets)
        for name, value in resolved.env_vars.items()
    }
    integration_env: dict[str, str] = {}
    files: list[FileValue] = []
    prompts: list[ContextPrompt] = []
    for integration in resolved.integrations:
        where = f"integration {integration.name}"
        for name, value in integration.env_vars.items():
            integration_env[name] = _rendered(f"{where} env_vars.{name}", value, env, secrets)
        token = secrets.get(integration.token_secret or "")
        if token is not None:
            integration_env.update(dict.fromkeys(integration.token_env, token))
        for f in integration.files:
            content = f.content if f.secret_ref is None else secrets.get(f.secret_ref)
            if content is not None:
                files.append(
                    FileValue(
                        integration_id=integration.id, path=f.path, mode=f.mode, content=content
                    )
                )
        if integration.context_prompt:
            prompts.append(
                ContextPrompt(
                    integration_id=integration.id,
                    name=integration.name,
                    context_prompt=integration.context_prompt,
                )
            )
    template_env = {**integration_env, **env}
    mcp_servers = {
        name: _rendered(f"mcp_servers.{name}", config, template_env, secrets)
        for name, config in resolved.mcp_servers.items()
    }
    return EnvironmentValues(
        execution_id=execution_id,
        agent_id=resolved.agent_id,
        env=env,
        secrets={name: secrets[name] for name in resolved.secrets if name in secrets}
        | {
            name: secrets[name]
            for integration in resolved.integrations
            for name in integration.secrets
            if name in secrets
        },
        mcp_servers=mcp_servers,
        integration_env=integration_env,
        files=files,
        context_prompts=prompts,
        missing_secrets=[name for name in names if name not in secrets],
        skipped_integrations=resolved.skipped_integrations,
    )
