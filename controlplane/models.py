"""The runtimes, the rule that says which model a runtime can run, and model resolution.

The global model catalogue (rows of `llm_models` with a NULL organization) is seeded at every
start-up by `controlplane/migrations/repeatable/model_catalogue.sql`; organizations add their own
rows. `resolve_model` is what the execution engine uses to turn an agent's `model_id` into the
name, provider and prices it calls with.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import asyncpg
from pydantic import BaseModel, Field

from controlplane.db import sql_uuid

RuntimeId = Literal["default", "claude_code"]
RUNTIME_IDS: tuple[RuntimeId, ...] = ("default", "claude_code")
# Kubiya's model ids (`kubiya/claude-sonnet-4`) name the same models as ours (`anthropic/...`).
KUBIYA_PREFIX = "kubiya/"

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Db = asyncpg.Pool[Any] | asyncpg.Connection[Any] | PoolConnectionProxy[Any]

MODEL_COLUMNS = (
    "id, organization_id, value, label, provider, api_model, model_type, logo, description, "
    "enabled, recommended, compatible_runtimes, capabilities, pricing, display_order, "
    "created_at, updated_at"
)


def visible(org: str) -> str:
    """SQL: a model row `org` (an SQL text expression) sees: the global catalogue or its own."""
    return f"(organization_id IS NULL OR organization_id = {org})"


VISIBLE = visible("$1")


# A sanity bound: the dearest models cost well under $1,000 per million tokens.
MAX_PRICE_PER_MILLION = 1_000_000


class Pricing(BaseModel):
    input_per_million: float = Field(
        ge=0, le=MAX_PRICE_PER_MILLION, description="USD per million input tokens"
    )
    output_per_million: float = Field(
        ge=0, le=MAX_PRICE_PER_MILLION, description="USD per million output tokens"
    )
    currency: Literal["USD"] = "USD"


class ModelRequirement(BaseModel):
    description: str
    supported_providers: list[str]
    supported_families: list[str]
    examples: list[str]


class RuntimeRequirements(BaseModel):
    model_requirement: ModelRequirement
    required_config_fields: list[str]
    recommended_config_fields: list[str]
    max_history_length: int
    requires_system_prompt: bool
    requires_tools: bool


class RuntimeInfo(BaseModel):
    id: RuntimeId
    name: str
    description: str
    icon: str
    features: list[str]
    status: Literal["available", "beta"]
    requirements: RuntimeRequirements


RUNTIMES: dict[str, RuntimeInfo] = {
    "default": RuntimeInfo(
        id="default",
        name="Default Runtime",
        description=(
            "This control plane's own agent loop: Anthropic Messages API calls with tool use, "
            "each model call and each tool call a separate Temporal activity, so a run resumes "
            "on another worker without repeating finished steps."
        ),
        icon="default",
        features=[
            "streaming",
            "tool_use",
            "mcp_servers",
            "conversation_history",
            "human_in_the_loop",
            "cancellation",
            "durable_steps",
        ],
        status="available",
        requirements=RuntimeRequirements(
            model_requirement=ModelRequirement(
                description=(
                    "Any enabled model in the catalogue. Calls use the Anthropic Messages API, "
                    "so a model of another provider needs an Anthropic-compatible endpoint."
                ),
                supported_providers=["*"],
                supported_families=["*"],
                examples=["anthropic/claude-sonnet-4-5", "anthropic/claude-haiku-4-5"],
            ),
            required_config_fields=[],
            recommended_config_fields=[],
            max_history_length=100,
            requires_system_prompt=False,
            requires_tools=False,
        ),
    ),
    "claude_code": RuntimeInfo(
        id="claude_code",
        name="Claude Code SDK",
        description=(
            "Runs the agent with the Claude Agent SDK (the Claude Code CLI): built-in coding, "
            "file and shell tools, with its session carried from turn to turn."
        ),
        icon="code",
        features=[
            "streaming",
            "tool_use",
            "mcp_servers",
            "conversation_history",
            "human_in_the_loop",
            "cancellation",
            "code_execution",
            "file_operations",
        ],
        status="beta",
        requirements=RuntimeRequirements(
            model_requirement=ModelRequirement(
                description="A Claude model from provider 'anthropic' (its id contains 'claude').",
                supported_providers=["anthropic"],
                supported_families=["claude"],
                examples=["anthropic/claude-sonnet-4-5", "anthropic/claude-opus-4-5"],
            ),
            required_config_fields=[],
            recommended_config_fields=["timeout", "max_tokens"],
            max_history_length=200,
            requires_system_prompt=False,
            requires_tools=False,
        ),
    ),
}


@dataclass(frozen=True)
class ModelInfo:
    """A catalogue model as the execution engine needs it."""

    id: uuid.UUID
    value: str
    label: str
    provider: str
    api_model: str  # the name sent to the provider's API, e.g. "claude-sonnet-4-5"
    enabled: bool
    compatible_runtimes: tuple[str, ...]
    pricing: Pricing | None
    organization_id: str | None  # None: the global catalogue

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float | None:
        if self.pricing is None:
            return None
        return (
            input_tokens * self.pricing.input_per_million
            + output_tokens * self.pricing.output_per_million
        ) / 1_000_000


def api_model_name(value: str, api_model: str | None) -> str:
    """The model name for the provider: explicit, else the part of `value` after the provider."""
    return api_model or value.split("/", 1)[-1]


def model_info(row: asyncpg.Record | Mapping[str, Any]) -> ModelInfo:
    """A catalogue row (a record, or its JSON form, whose id is a string) as a ModelInfo."""
    pricing = row["pricing"]
    return ModelInfo(
        id=uuid.UUID(str(row["id"])),
        value=row["value"],
        label=row["label"],
        provider=row["provider"],
        api_model=api_model_name(row["value"], row["api_model"]),
        enabled=row["enabled"],
        compatible_runtimes=tuple(row["compatible_runtimes"]),
        pricing=Pricing.model_validate(pricing) if pricing is not None else None,
        organization_id=row["organization_id"],
    )


def model_sql(org: str, model_id: str) -> str:
    """SQL selecting the model `org` sees as `model_id` (both SQL text expressions): global or
    its own, by id or by value; the org's own row wins over a global one with the same value;
    `kubiya/x` falls back to `anthropic/x`. At most one row."""
    prefix = len(KUBIYA_PREFIX)
    values = (
        f"ARRAY[{model_id}, CASE WHEN left({model_id}, {prefix}) = '{KUBIYA_PREFIX}' "
        f"THEN 'anthropic/' || substr({model_id}, {prefix + 1}) END]"
    )
    ident = sql_uuid(model_id)
    return (
        f"SELECT {MODEL_COLUMNS} FROM llm_models WHERE {visible(org)} "
        f"AND (id = {ident} OR value = ANY({values})) "
        f"ORDER BY (id = {ident}) IS TRUE DESC, array_position({values}, value), "
        "organization_id IS NULL LIMIT 1"
    )


def default_model_sql(org: str) -> str:
    """SQL selecting the organization's default model (`org` an SQL text expression): its own
    recommended enabled model, else the global recommended one (lowest display_order first)."""
    return (
        f"SELECT {MODEL_COLUMNS} FROM llm_models WHERE {visible(org)} AND enabled AND recommended "
        "ORDER BY organization_id IS NULL, display_order, value, id LIMIT 1"
    )


async def find_model_row(db: Db, org: str, model_id: str) -> asyncpg.Record | None:
    """A model visible to `org` by id or by value (see `model_sql`)."""
    row: asyncpg.Record | None = await db.fetchrow(model_sql("$1", "$2::text"), org, model_id)
    return row


async def resolve_model(db: Db, org: str, model_id: str) -> ModelInfo | None:
    """The model `org` means by `model_id` (an id or a value such as
    `anthropic/claude-sonnet-4-5`), or None when it sees no such model."""
    row = await find_model_row(db, org, model_id)
    return model_info(row) if row is not None else None


async def default_model_row(db: Db, org: str) -> asyncpg.Record | None:
    """The organization's default model (see `default_model_sql`)."""
    row: asyncpg.Record | None = await db.fetchrow(default_model_sql("$1"), org)
    return row


def runtime_rule_errors(runtime: str, provider: str, value: str) -> list[str]:
    """What stops `runtime` from running a model of this provider and id (§7.1), whatever the
    model lists as compatible."""
    if runtime not in RUNTIMES:
        return [f"Unknown runtime '{runtime}'; expected one of: {', '.join(RUNTIME_IDS)}"]
    errors = []
    if runtime == "claude_code":
        if provider != "anthropic":
            errors.append(
                f"Runtime 'claude_code' runs only models of provider 'anthropic'; "
                f"'{value}' is provider '{provider}'"
            )
        if "claude" not in value.lower():
            errors.append(
                f"Runtime 'claude_code' needs a Claude model (an id containing 'claude'); "
                f"got '{value}'"
            )
    return errors


def compatibility_errors(runtime: str, model: ModelInfo) -> list[str]:
    """Why `runtime` cannot run `model` (empty when it can): the runtime's rule, the model
    being enabled, and the model listing the runtime among its compatible runtimes."""
    errors = runtime_rule_errors(runtime, model.provider, model.value)
    if runtime not in RUNTIMES:
        return errors
    if not model.enabled:
        errors.append(f"Model '{model.value}' is disabled")
    if not errors and runtime not in model.compatible_runtimes:
        errors.append(
            f"Model '{model.value}' is not compatible with runtime '{runtime}' "
            f"(compatible runtimes: {', '.join(model.compatible_runtimes) or 'none'})"
        )
    return errors


def config_errors(config: dict[str, Any]) -> list[str]:
    """Type checks of the agent configuration fields the runtimes read."""
    errors = []
    for name in ("timeout", "max_tokens"):
        if name in config:
            value = config[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                errors.append(f"Configuration field '{name}' must be a positive number")
    if "one_shot" in config and not isinstance(config["one_shot"], bool):
        errors.append("Configuration field 'one_shot' must be true or false")
    if "system_prompt" in config and not isinstance(config["system_prompt"], str | None):
        errors.append("Configuration field 'system_prompt' must be a string")
    return errors


@dataclass(frozen=True)
class RuntimeCheck:
    model: ModelInfo | None
    errors: list[str]


async def check_runtime_model(
    db: Db,
    org: str,
    runtime: str,
    model_id: str | None,
    config: dict[str, Any] | None = None,
) -> RuntimeCheck:
    """The one runtime/model check, used by `POST /runtimes/validate` and by agents: every
    problem with running `model_id` (None: no model to check) on `runtime` for `org`."""
    errors = []
    model = None
    if runtime not in RUNTIMES:
        errors.extend(runtime_rule_errors(runtime, "", ""))
    if model_id is not None:
        model = await resolve_model(db, org, model_id)
        if model is None:
            errors.append(f"Model '{model_id}' is not in the model catalogue")
        elif runtime in RUNTIMES:
            errors.extend(compatibility_errors(runtime, model))
    errors.extend(config_errors(config or {}))
    return RuntimeCheck(model, errors)
