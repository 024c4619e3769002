"""`/api/v1/models` (reference §3.11): the global catalogue seeded at start-up, read-only here,
plus each organization's own models. A model is named by its id or its `value`
(`anthropic/claude-sonnet-4-5`), so the path parameter may hold a slash."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel, Field, RootModel

from api.errors import ApiError, not_found
from api.pagination import ListQuery, Page, fetch_page
from api.routing import INT_MAX, INT_MIN, Call, Router
from api.schemas import Deleted, PatchBody
from controlplane.db import conflict_on_duplicate, patch_assignments
from controlplane.models import (
    MODEL_COLUMNS,
    RUNTIME_IDS,
    VISIBLE,
    Pricing,
    RuntimeId,
    default_model_row,
    find_model_row,
    runtime_rule_errors,
)

router = Router("models")

VALUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$"
PROVIDER_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
ORDER = "display_order, value, id"
GLOBAL_READ_ONLY = (
    "Model '{value}' belongs to the global catalogue and is read-only; "
    "add a model of your own with POST /api/v1/models"
)


class ModelCreate(BaseModel):
    value: str = Field(
        min_length=1,
        max_length=200,
        pattern=VALUE_PATTERN,
        description="Unique id such as 'anthropic/claude-sonnet-4-5'",
    )
    label: str = Field(min_length=1, max_length=200)
    provider: str = Field(min_length=1, max_length=100, pattern=PROVIDER_PATTERN)
    api_model: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Name sent to the provider's API; default: the part of value after '/'",
    )
    model_type: str = Field("text-generation", min_length=1, max_length=100)
    logo: str | None = None
    description: str | None = None
    enabled: bool = True
    recommended: bool = False
    compatible_runtimes: list[RuntimeId] | None = Field(
        None, description="Default: every runtime whose rule accepts the model"
    )
    capabilities: dict[str, Any] = Field(default_factory=dict)
    pricing: Pricing | None = None
    display_order: int = Field(1000, ge=INT_MIN, le=INT_MAX)


class ModelUpdate(PatchBody):
    required_if_sent = (
        "value",
        "label",
        "provider",
        "model_type",
        "enabled",
        "recommended",
        "compatible_runtimes",
        "capabilities",
        "display_order",
    )

    value: str | None = Field(None, min_length=1, max_length=200, pattern=VALUE_PATTERN)
    label: str | None = Field(None, min_length=1, max_length=200)
    provider: str | None = Field(None, min_length=1, max_length=100, pattern=PROVIDER_PATTERN)
    api_model: str | None = Field(None, min_length=1, max_length=200)
    model_type: str | None = Field(None, min_length=1, max_length=100)
    logo: str | None = None
    description: str | None = None
    enabled: bool | None = None
    recommended: bool | None = None
    compatible_runtimes: list[RuntimeId] | None = None
    capabilities: dict[str, Any] | None = None
    pricing: Pricing | None = None
    display_order: int | None = Field(None, ge=INT_MIN, le=INT_MAX)


class ModelOut(BaseModel):
    id: uuid.UUID
    organization_id: str | None = Field(description="null for the global catalogue")
    value: str
    label: str
    provider: str
    api_model: str | None
    model_type: str
    logo: str | None
    description: str | None
    enabled: bool
    recommended: bool
    compatible_runtimes: list[str]
    capabilities: dict[str, Any]
    pricing: Pricing | None
    display_order: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ModelOut:
        return cls(**dict(row))


class ProviderCount(BaseModel):
    provider: str
    model_count: int


class ProviderList(RootModel[list[ProviderCount]]):
    pass


class ModelQuery(ListQuery):
    enabled_only: bool = Field(True, description="Only enabled models (default true)")
    recommended: bool | None = Field(None, description="Only (non-)recommended models")
    provider: str | None = None
    runtime: RuntimeId | None = Field(None, description="Only models this runtime can run")
    type: str | None = Field(None, description="Only models of this model_type")


class ProviderQuery(BaseModel):
    enabled_only: bool = Field(True, description="Count only enabled models (default true)")


def _runtimes_errors(provider: str, value: str, runtimes: list[str]) -> list[str]:
    return [
        error for runtime in runtimes for error in runtime_rule_errors(runtime, provider, value)
    ]


def _compatible(provider: str, value: str) -> list[str]:
    return [rt for rt in RUNTIME_IDS if not runtime_rule_errors(rt, provider, value)]


async def _refuse_global_value(call: Call, value: str) -> None:
    taken = await call.db.fetchval(
        "SELECT 1 FROM llm_models WHERE organization_id IS NULL AND value = $1", value
    )
    if taken is not None:
        raise ApiError(409, f"Model '{value}' exists in the global catalogue")


async def _own_model(call: Call) -> asyncpg.Record:
    """The model the path names, which must be the organization's own to change it."""
    ident = call.path["model_id"]
    row = await find_model_row(call.db, call.org, ident)
    if row is None:
        raise not_found("Model", ident)
    if row["organization_id"] is None:
        raise ApiError(403, GLOBAL_READ_ONLY.format(value=row["value"]))
    return row


@router.post("/api/v1/models", status=201)
async def create_model(call: Call, body: ModelCreate) -> ModelOut:
    """Add a model to the organization's catalogue; `value` is unique among the models the
    organization sees (the global ones included)."""
    runtimes: list[str] = list(body.compatible_runtimes or [])
    if body.compatible_runtimes is None:
        runtimes = _compatible(body.provider, body.value)
    errors = _runtimes_errors(body.provider, body.value, runtimes)
    if errors:
        raise ApiError(400, "Invalid compatible_runtimes", details={"errors": errors})
    await _refuse_global_value(call, body.value)
    with conflict_on_duplicate(f"A model with value '{body.value}' exists"):
        row = await call.db.fetchrow(
            "INSERT INTO llm_models (id, organization_id, value, label, provider, api_model, "
            "model_type, logo, description, enabled, recommended, compatible_runtimes, "
            "capabilities, pricing, display_order, created_by) VALUES ($1, $2, $3, $4, $5, $6, "
            f"$7, $8, $9, $10, $11, $12, $13, $14, $15, $16) RETURNING {MODEL_COLUMNS}",
            uuid.uuid4(),
            call.org,
            body.value,
            body.label,
            body.provider,
            body.api_model,
            body.model_type,
            body.logo,
            body.description,
            body.enabled,
            body.recommended,
            list(dict.fromkeys(runtimes)),
            body.capabilities,
            body.pricing.model_dump() if body.pricing is not None else None,
            body.display_order,
            call.principal.actor,
        )
    assert row is not None
    return ModelOut.from_row(row)


@router.get("/api/v1/models")
async def list_models(call: Call, query: ModelQuery) -> Page[ModelOut]:
    """The global catalogue and the organization's own models, by display_order."""
    where, args = VISIBLE, list[Any]([call.org])
    if query.enabled_only:
        where += " AND enabled"
    if query.runtime is not None:
        args.append(query.runtime)
        where += f" AND compatible_runtimes ? ${len(args)}"
    rows, total = await fetch_page(
        call.db,
        table="llm_models",
        columns=MODEL_COLUMNS,
        where=where,
        args=args,
        query=query,
        order=ORDER,
        filters={
            "recommended": query.recommended,
            "provider": query.provider,
            "model_type": query.type,
        },
    )
    items = [ModelOut.from_row(row) for row in rows]
    return Page[ModelOut](items=items, total=total, limit=query.limit, offset=query.start)


# These two come before /models/{model_id:path}, which would otherwise take their paths.
@router.get("/api/v1/models/default")
async def default_model(call: Call) -> ModelOut:
    """The default model: the organization's own recommended one, else the global one."""
    row = await default_model_row(call.db, call.org)
    if row is None:
        raise ApiError(404, "No enabled recommended model in the catalogue")
    return ModelOut.from_row(row)


@router.get("/api/v1/models/providers")
async def list_providers(call: Call, query: ProviderQuery) -> ProviderList:
    """The providers of the models the organization sees, with their model counts."""
    rows = await call.db.fetch(
        f"SELECT provider, count(*) AS model_count FROM llm_models WHERE {VISIBLE} "
        "AND (enabled OR NOT $2) GROUP BY provider ORDER BY provider",
        call.org,
        query.enabled_only,
    )
    return ProviderList([ProviderCount(**dict(row)) for row in rows])


@router.get("/api/v1/models/{model_id:path}")
async def get_model(call: Call) -> ModelOut:
    """One model, by id or by value (`anthropic/claude-sonnet-4-5`)."""
    ident = call.path["model_id"]
    row = await find_model_row(call.db, call.org, ident)
    if row is None:
        raise not_found("Model", ident)
    return ModelOut.from_row(row)


async def _update(call: Call, body: ModelUpdate) -> ModelOut:
    current = await _own_model(call)
    changes = body.changes()
    provider = changes.get("provider", current["provider"])
    value = changes.get("value", current["value"])
    runtimes = changes.get("compatible_runtimes", current["compatible_runtimes"])
    errors = _runtimes_errors(provider, value, runtimes)
    if errors:
        raise ApiError(400, "Invalid compatible_runtimes", details={"errors": errors})
    if "compatible_runtimes" in changes:
        changes["compatible_runtimes"] = list(dict.fromkeys(runtimes))
    if value != current["value"]:
        await _refuse_global_value(call, value)
    assignments, values = patch_assignments(
        changes,
        [
            "value",
            "label",
            "provider",
            "api_model",
            "model_type",
            "logo",
            "description",
            "enabled",
            "recommended",
            "compatible_runtimes",
            "capabilities",
            "pricing",
            "display_order",
        ],
        first_param=3,
    )
    async with call.db.acquire() as conn, conn.transaction():
        with conflict_on_duplicate(f"A model with value '{value}' exists"):
            row = await conn.fetchrow(
                f"UPDATE llm_models SET {assignments} WHERE id = $1 AND organization_id = $2 "
                f"RETURNING {MODEL_COLUMNS}",
                current["id"],
                call.org,
                *values,
            )
        if row is None:
            raise not_found("Model", call.path["model_id"])
        if value != current["value"]:
            # Agents name their model by value: a renamed model keeps its agents.
            await conn.execute(
                "UPDATE agents SET model_id = $3, updated_at = now() "
                "WHERE organization_id = $1 AND model_id = $2",
                call.org,
                current["value"],
                value,
            )
    return ModelOut.from_row(row)


@router.patch("/api/v1/models/{model_id:path}")
async def update_model(call: Call, body: ModelUpdate) -> ModelOut:
    """Change the fields sent of one of the organization's own models (global ones: 403)."""
    return await _update(call, body)


@router.put("/api/v1/models/{model_id:path}")
async def replace_model(call: Call, body: ModelUpdate) -> ModelOut:
    """Same as PATCH: the path kubiya-sdk uses."""
    return await _update(call, body)


@router.delete("/api/v1/models/{model_id:path}")
async def delete_model(call: Call) -> Deleted:
    """Delete one of the organization's own models (global ones: 403); refused (409) while
    agents use it."""
    current = await _own_model(call)
    async with call.db.acquire() as conn, conn.transaction():
        users = await conn.fetch(
            "SELECT name FROM agents WHERE organization_id = $1 AND model_id = $2 ORDER BY name",
            call.org,
            current["value"],
        )
        if users:
            names = [row["name"] for row in users]
            raise ApiError(
                409,
                f"Model '{current['value']}' is used by {len(names)} agent(s)",
                details={"agents": names},
            )
        deleted = await conn.fetchval(
            "DELETE FROM llm_models WHERE id = $1 AND organization_id = $2 RETURNING id",
            current["id"],
            call.org,
        )
    if deleted is None:
        raise not_found("Model", call.path["model_id"])
    return Deleted(id=current["id"])
