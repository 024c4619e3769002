"""Execution environments (reference §10): the shape an environment, team, agent or run
declares, and the resolution of what a run gets.

Layers, first to last, along the hierarchy (controlplane/hierarchy.py): the agent's
environments (in the order of its `environment_ids`), its team's environments, its team, the
agent itself, the MCP servers of its `mcp_server` skills, and the run's own override.
`env_vars` and `mcp_servers` are merged by name, the later layer winning (an MCP server's
config is replaced whole, not merged key by key); `secrets` and `integration_ids` are unioned
in order of first appearance.

Integrations named by the result add their own env vars, secrets, files and context prompt, and
their token (the first of their `secrets`) under the env var names of their type
(`INTEGRATION_ENV`, fallback `{TYPE}_TOKEN`).

Nothing here reads a secret's value: the result holds names. Values are read, and audited, only
by the routes that hand them out (`api/routes/execution_environment.py`, `api/routes/secrets.py`,
`api/routes/integrations.py`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field, ValidationError, field_validator

from controlplane.db import Queryable
from controlplane.errors import Invalid, Refused, not_found
from controlplane.hierarchy import Hierarchy
from controlplane.skills import ResolvedSkill, resolve_skills
from controlplane.snapshot import Snapshot, load_snapshot
from controlplane.tool_catalogue import SkillConfigError, mcp_servers_of

# The env vars an integration's token is given as, by integration type. Types whose credential
# has several parts (aws, azure, gcp) or is a file (kubernetes, gcp) get none: their parts come
# as the integration's own secrets (injected under their names) and files.
INTEGRATION_ENV: dict[str, tuple[str, ...]] = {
    "github": ("GH_TOKEN", "GITHUB_TOKEN"),
    "github_app": ("GH_TOKEN", "GITHUB_TOKEN"),
    "gitlab": ("GITLAB_TOKEN",),
    "bitbucket": ("BITBUCKET_TOKEN",),
    "jira": ("JIRA_TOKEN",),
    "slack": ("SLACK_TOKEN", "SLACK_BOT_TOKEN"),
    "linear": ("LINEAR_TOKEN", "LINEAR_API_KEY"),
    "notion": ("NOTION_TOKEN",),
    "pagerduty": ("PAGERDUTY_TOKEN",),
    "datadog": ("DATADOG_API_KEY", "DD_API_KEY"),
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "aws": (),  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN as secrets
    "azure": (),  # AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_TENANT_ID as secrets
    "gcp": (),  # a credentials file + GOOGLE_APPLICATION_CREDENTIALS
    "kubernetes": (),  # a kubeconfig file + KUBECONFIG
}


def token_env_names(integration_type: str) -> list[str]:
    """The env vars an integration of this type receives its token as."""
    known = INTEGRATION_ENV.get(integration_type.lower())
    if known is not None:
        return list(known)
    return [re.sub(r"[^A-Z0-9]+", "_", integration_type.upper()).strip("_") + "_TOKEN"]


class McpServer(BaseModel, extra="allow"):
    """stdio `{command, args, env}` or http/sse `{type, url, headers}`."""

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    type: Literal["stdio", "http", "sse"] | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)


class ExecutionEnvironment(BaseModel):
    env_vars: dict[str, str] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list)
    integration_ids: list[str] = Field(default_factory=list)
    mcp_servers: dict[str, McpServer] = Field(default_factory=dict)


class ExecutionEnvironmentIn(ExecutionEnvironment):
    """An execution environment as a client writes it on an environment, team or agent: MCP
    servers here are remote (http/sse). A server that runs a command on the worker (stdio) comes
    only from a skill of type mcp_server, which only admins write."""

    @field_validator("mcp_servers")
    @classmethod
    def remote_only(cls, servers: dict[str, McpServer]) -> dict[str, McpServer]:
        stdio = [name for name, s in servers.items() if s.command or s.type == "stdio"]
        if stdio:
            raise ValueError(
                f"{', '.join(stdio)}: stdio MCP servers (a command run on the worker) come from "
                "skills of type mcp_server; here only http/sse servers (url) are allowed"
            )
        return servers


class InvalidEnvironment(Invalid):
    """A stored layer (in practice: a run's override) that is not an execution environment."""

    def __init__(self, layer: str, error: ValidationError) -> None:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"], "type": e["type"]}
            for e in error.errors(include_url=False)
        ]
        super().__init__(
            f"The execution_environment of {layer} is not valid",
            details={"layer": layer, "validation_errors": problems},
        )


@dataclass
class Layer:
    """What one layer contributed."""

    source: str  # environment | team | agent | skill | run
    id: str | None = None
    name: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    integration_ids: list[str] = field(default_factory=list)
    mcp_servers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.source}:{self.name}" if self.name else self.source


@dataclass
class IntegrationFile:
    path: str
    mode: str = "0644"
    content: str | None = None
    secret_ref: str | None = None
    description: str | None = None


@dataclass
class ResolvedIntegration:
    id: str
    name: str
    integration_type: str
    env_vars: dict[str, str]
    secrets: list[str]
    token_secret: str | None  # the first of `secrets`: the integration's token
    token_env: list[str]  # env var names the token is given as
    files: list[IntegrationFile]
    context_prompt: str | None


@dataclass
class ResolvedEnvironment:
    env_vars: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    integration_ids: list[str] = field(default_factory=list)
    mcp_servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    layers: list[Layer] = field(default_factory=list)
    # Which layer set each final value, by its label ("environment:prod", "agent:x", "run").
    sources: dict[str, dict[str, str]] = field(default_factory=dict)
    integrations: list[ResolvedIntegration] = field(default_factory=list)
    skipped_integrations: list[dict[str, str]] = field(default_factory=list)
    agent_id: str | None = None
    agent_name: str | None = None

    def all_secret_names(self) -> list[str]:
        """Every secret a run of this environment may read: the layers' and the integrations'
        (their secrets and the secrets their files are made of)."""
        names = list(self.secrets)
        for integration in self.integrations:
            names.extend(integration.secrets)
            names.extend(f.secret_ref for f in integration.files if f.secret_ref)
        return list(dict.fromkeys(names))


def parse_layer(raw: Any, label: str) -> ExecutionEnvironment:
    try:
        return ExecutionEnvironment.model_validate(raw or {})
    except ValidationError as error:
        raise InvalidEnvironment(label, error) from None


def stdio_servers(mcp_servers: Any) -> list[str]:
    """The names of servers in an `mcp_servers` mapping that would run a command on the
    worker (stdio); those come only from skills of type mcp_server."""
    if not isinstance(mcp_servers, dict):
        return []
    return [
        str(name)
        for name, config in mcp_servers.items()
        if isinstance(config, dict) and (config.get("command") or config.get("type") == "stdio")
    ]


def make_layer(raw: Any, source: str, ident: str | None = None, name: str | None = None) -> Layer:
    """One layer of an agent's, team's, environment's or run's own settings. Stdio MCP servers
    stored before they were refused at write are dropped: only skills may start a command."""
    label = f"{source}:{name}" if name else source
    parsed = parse_layer(raw, label)
    servers = {
        server: config.model_dump(exclude_none=True)
        for server, config in parsed.mcp_servers.items()
    }
    for server in stdio_servers(servers):
        del servers[server]
    return Layer(
        source=source,
        id=ident,
        name=name,
        env_vars=dict(parsed.env_vars),
        secrets=list(dict.fromkeys(parsed.secrets)),
        integration_ids=list(dict.fromkeys(parsed.integration_ids)),
        mcp_servers=servers,
    )


def skill_layer(skills: Sequence[ResolvedSkill]) -> list[Layer]:
    """The MCP servers of resolved skills of type mcp_server (admins write skills, so this is
    where a server that runs a command on the worker may come from)."""
    servers = [skill for skill in skills if skill.type == "mcp_server"]
    if not servers:
        return []
    try:
        found = mcp_servers_of((s.name, s.type, s.configuration) for s in servers)
    except SkillConfigError as error:
        raise Refused(f"An mcp_server skill is not valid: {error}") from None
    return [Layer(source="skill", mcp_servers=found)]


def merge(layers: list[Layer]) -> ResolvedEnvironment:
    """Fold the layers, first to last (see the module docstring)."""
    result = ResolvedEnvironment(layers=layers)
    sources: dict[str, dict[str, str]] = {
        "env_vars": {},
        "secrets": {},
        "integration_ids": {},
        "mcp_servers": {},
    }
    for layer in layers:
        for name, value in layer.env_vars.items():
            result.env_vars[name] = value
            sources["env_vars"][name] = layer.label
        for name, config in layer.mcp_servers.items():
            result.mcp_servers[name] = config
            sources["mcp_servers"][name] = layer.label
        for name in layer.secrets:
            if name not in sources["secrets"]:
                result.secrets.append(name)
                sources["secrets"][name] = layer.label
        for ident in layer.integration_ids:
            if ident not in sources["integration_ids"]:
                result.integration_ids.append(ident)
                sources["integration_ids"][ident] = layer.label
    result.sources = sources
    return result


def _chain_layers(chain: Hierarchy) -> list[Layer]:
    """A hierarchy's own layers: its environments, its team's environments, its team, the
    agent itself."""
    layers = [
        make_layer(env.execution_environment, "environment", str(env.id), env.name)
        for env in chain.environments + chain.team_environments
    ]
    team, agent = chain.team, chain.agent
    if team is not None:
        layers.append(
            make_layer(team.get("execution_environment"), "team", str(team["id"]), team["name"])
        )
    if agent is not None:
        layers.append(
            make_layer(agent["execution_environment"], "agent", str(agent["id"]), agent["name"])
        )
    return layers


def environment_of(
    snapshot: Snapshot | None,
    run_override: dict[str, Any] | None,
    *,
    skills: Sequence[ResolvedSkill] | None = None,
) -> ResolvedEnvironment:
    """The execution environment of the snapshot's agent (its layers, then the MCP servers of
    its skills: `skills` when resolved already) or team, with the run's override on top;
    without a snapshot (the agent or team is gone) the override alone. Integrations are not
    looked up here (`add_integrations`)."""
    chain = snapshot.chain if snapshot is not None else None
    layers = _chain_layers(chain) if chain is not None else []
    if snapshot is not None and chain is not None and chain.agent is not None:
        layers += skill_layer(skills if skills is not None else resolve_skills(snapshot, chain))
    if run_override:
        layers.append(make_layer(run_override, "run"))
    resolved = merge(layers)
    if chain is not None and chain.agent is not None:
        resolved.agent_id, resolved.agent_name = str(chain.agent["id"]), chain.agent["name"]
    return resolved


async def resolve_for_team(db: Queryable, org: str, team_id: uuid.UUID) -> ResolvedEnvironment:
    """The team's own environment (what its leader runs with); 404 if there is no such team."""
    snapshot = await load_snapshot(db, org, team_id=team_id)
    if snapshot.chain is None:
        raise not_found("Team", team_id)
    resolved = environment_of(snapshot, None)
    await add_integrations(db, org, resolved)
    return resolved


def _uuid(raw: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        return None


async def resolve_for_agent(
    db: Queryable, org: str, agent_id: uuid.UUID | str, run_override: dict[str, Any] | None
) -> ResolvedEnvironment:
    """The agent's environment with the run's override on top; 404 if the organization has no
    such agent."""
    ident = _uuid(agent_id)
    snapshot = None if ident is None else await load_snapshot(db, org, agent_id=ident)
    if snapshot is None or snapshot.chain is None:
        raise not_found("Agent", agent_id)
    resolved = environment_of(snapshot, run_override)
    await add_integrations(db, org, resolved)
    return resolved


async def resolve_for_execution(
    db: Queryable, org: str, execution_id: uuid.UUID
) -> ResolvedEnvironment:
    """The environment of an execution: its agent's (or team's), with the override stored with
    the run. An agent deleted since the run started leaves only the run's own layer."""
    row = await db.fetchrow(
        "SELECT execution_type, entity_id, execution_environment FROM executions "
        "WHERE id = $1 AND organization_id = $2",
        execution_id,
        org,
    )
    if row is None:
        raise not_found("Execution", execution_id)
    snapshot = None
    if row["execution_type"] == "agent" and row["entity_id"] is not None:
        snapshot = await load_snapshot(db, org, agent_id=row["entity_id"])
    elif row["execution_type"] == "team" and row["entity_id"] is not None:
        snapshot = await load_snapshot(db, org, team_id=row["entity_id"])
    resolved = environment_of(snapshot, row["execution_environment"])
    await add_integrations(db, org, resolved)
    return resolved


def integration_from_row(row: asyncpg.Record) -> ResolvedIntegration:
    config = row["config"] or {}
    secrets = list(dict.fromkeys(config.get("secrets") or []))
    return ResolvedIntegration(
        id=str(row["id"]),
        name=row["name"],
        integration_type=row["integration_type"],
        env_vars=dict(config.get("env_vars") or {}),
        secrets=secrets,
        token_secret=secrets[0] if secrets else None,
        token_env=token_env_names(row["integration_type"]),
        files=[
            IntegrationFile(
                path=f["path"],
                mode=f.get("mode") or "0644",
                content=f.get("content"),
                secret_ref=f.get("secret_ref"),
                description=f.get("description"),
            )
            for f in config.get("files") or []
        ],
        context_prompt=config.get("context_prompt"),
    )


async def add_integrations(db: Queryable, org: str, resolved: ResolvedEnvironment) -> None:
    """Look up the integrations the resolved environment names (skipped: missing, deleted or
    inactive ones, with the reason)."""
    ids = [(raw, _uuid(raw)) for raw in resolved.integration_ids]
    rows = await db.fetch(
        "SELECT id, name, integration_type, status, config FROM custom_integrations "
        "WHERE organization_id = $1 AND id = ANY($2::uuid[])",
        org,
        [ident for _, ident in ids if ident is not None],
    )
    by_id = {row["id"]: row for row in rows}
    for raw, ident in ids:
        row = by_id.get(ident) if ident is not None else None
        if row is None or row["status"] == "deleted":
            resolved.skipped_integrations.append({"id": raw, "reason": "not found"})
        elif row["status"] != "active":
            resolved.skipped_integrations.append({"id": raw, "reason": row["status"]})
        else:
            resolved.integrations.append(integration_from_row(row))
