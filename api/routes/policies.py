"""`/api/v1/policies` (reference §3.14, §9): Rego policies, their associations with agents,
teams, environments and roles, the resolved policies of an entity, evaluation, and the check
workers make before every tool call (`POST /policies/enforce`). Resolution and the checks
themselves are the domain's (controlplane/policies.py); this module is their HTTP shape.

Policies and associations are written by admin keys only: they decide what every agent may do.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field, RootModel, model_validator

from api.errors import ApiError, not_found
from api.pagination import ListQuery, Page, fetch_page
from api.routing import Call, Router
from api.schemas import Deleted, PatchBody
from controlplane.db import conflict_on_duplicate, patch_assignments
from controlplane.policies import (
    DEFAULT_PRIORITY,
    Evaluation,
    check_entity,
    check_tool_call,
    entity_scope,
    evaluate,
    loaded_scope,
    org_enabled_policies,
    resolved_links,
    scope_policies,
    source_of,
)
from controlplane.policy_engine import PolicyEngine, PolicySource, get_engine

router = Router("policies")

EntityType = Literal["agent", "team", "environment", "role"]
MAX_REGO_CHARS = 256 * 1024

COLUMNS = (
    "id, organization_id, name, description, policy_content, enabled, tags, metadata, version, "
    "created_by, updated_by, created_at, updated_at, "
    "(SELECT count(*) FROM policy_associations a WHERE a.policy_id = policies.id) "
    "AS association_count"
)
ASSOCIATION_COLUMNS = (
    "a.id, a.organization_id, a.policy_id, p.name AS policy_name, a.entity_type, a.entity_id, "
    "a.enabled, a.priority, a.metadata, a.created_by, a.created_at, a.updated_at"
)
ASSOCIATION_FROM = "policy_associations a JOIN policies p ON p.id = a.policy_id"


# --- Models -------------------------------------------------------------------------------


class PolicyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    policy_content: str = Field(
        min_length=1, max_length=MAX_REGO_CHARS, description="Rego; validated by the engine"
    )
    description: str | None = None
    enabled: bool = True
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)


class PolicyUpdate(PatchBody):
    """PUT and PATCH alike: the fields sent change; every change increments `version`."""

    required_if_sent = ("name", "policy_content", "enabled", "tags", "metadata")

    name: str | None = Field(None, min_length=1, max_length=200)
    policy_content: str | None = Field(None, min_length=1, max_length=MAX_REGO_CHARS)
    description: str | None = None
    enabled: bool | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None


class PolicyOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    name: str
    description: str | None
    policy_content: str
    policy_type: Literal["rego"] = "rego"
    enabled: bool
    tags: list[str]
    metadata: dict[str, Any]
    version: int
    created_by: str | None
    updated_by: str | None
    created_at: datetime
    updated_at: datetime
    association_count: int


class PolicyQuery(ListQuery):
    page: int | None = Field(
        None, ge=1, le=1_000_000, description="1-based page of `limit` rows (sets the offset)"
    )
    enabled: bool | None = None
    search: str | None = Field(
        None, max_length=200, description="Substring of the name or description"
    )

    @property
    def start(self) -> int:
        if self.page is not None:
            return (self.page - 1) * self.limit
        return super().start


class PolicyValidateBody(BaseModel):
    policy_content: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_REGO_CHARS,
        description="A draft to check instead of the stored text",
    )


class PolicyValidation(BaseModel):
    valid: bool
    errors: list[str]
    warnings: list[str]


class PolicyEngineHealth(BaseModel):
    status: Literal["healthy", "unhealthy"]
    engine: Literal["regorus", "opa"]
    opa_url: str | None
    fail_open: bool
    detail: str


class AssociationCreate(BaseModel):
    policy_id: uuid.UUID | None = Field(None, description="The policy (or give policy_name)")
    policy_name: str | None = Field(None, min_length=1, max_length=200)
    entity_type: EntityType
    entity_id: str = Field(min_length=1, max_length=200, description="A uuid, or a role's name")
    enabled: bool = True
    priority: int | None = Field(
        None,
        ge=-1_000_000,
        le=1_000_000,
        description="Default by entity type: environment 300, team 200, agent 100, role 100",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def names_a_policy(self) -> AssociationCreate:
        if self.policy_id is None and self.policy_name is None:
            raise ValueError("policy_id or policy_name is required")
        return self


class AssociationUpdate(PatchBody):
    required_if_sent = ("enabled", "priority", "metadata")

    enabled: bool | None = None
    priority: int | None = Field(None, ge=-1_000_000, le=1_000_000)
    metadata: dict[str, Any] | None = None


class AssociationOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    policy_id: uuid.UUID
    policy_name: str
    entity_type: EntityType
    entity_id: str
    enabled: bool
    priority: int
    metadata: dict[str, Any]
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class AssociationQuery(ListQuery):
    entity_type: EntityType | None = None
    entity_id: str | None = Field(None, max_length=200)
    policy_id: uuid.UUID | None = None
    enabled: bool | None = None


class ResolvedPolicy(BaseModel):
    policy_id: uuid.UUID
    policy_name: str
    source_type: EntityType | Literal["project", "context"] = Field(
        description="The layer the association belongs to, or the project or context layer "
        "that lists the policy by id"
    )
    source_id: str
    priority: int
    enabled: bool = Field(description="Whether the policy itself is enabled (evaluated)")
    metadata: dict[str, Any] = Field(description="The association's metadata")
    policy_details: PolicyOut | None = None


class ResolvedPolicies(RootModel[list[ResolvedPolicy]]):
    """The entity's policies, highest priority first."""


class ResolvedQuery(BaseModel):
    include_details: bool = False


class PolicyOutcome(BaseModel):
    policy_name: str
    allow: bool
    violations: list[str]
    error: str | None = Field(None, description="The engine's error; the policy was not decided")


class EvaluateBody(BaseModel):
    input_data: dict[str, Any] = Field(default_factory=dict, description="The Rego `input`")
    policy_ids: list[uuid.UUID] | None = Field(
        None, description="Only these of the entity's resolved policies"
    )


class EvaluationOut(BaseModel):
    allowed: bool
    violations: list[str]
    policy_results: dict[str, PolicyOutcome]
    policies_evaluated: int
    engine_error: str | None


class AuthorizationBody(BaseModel):
    action: str = Field(min_length=1, max_length=200)
    resource: Any = None
    context: dict[str, Any] = Field(default_factory=dict)


class AuthorizationOut(BaseModel):
    authorized: bool
    violations: list[str]
    policies_evaluated: int
    engine_error: str | None


class EvaluateAnyBody(BaseModel):
    """The official client's `POST /policies/evaluate`. Which policies: `policy_id` or
    `policy_name` (that one policy, even when disabled); else `entity_type` + `entity_id`
    (the entity's resolved, enabled policies); else every enabled policy of the organization."""

    input: dict[str, Any] | None = Field(None, description="The Rego `input` (or `input_data`)")
    input_data: dict[str, Any] | None = None
    policy_id: uuid.UUID | None = None
    policy_name: str | None = Field(None, min_length=1, max_length=200)
    entity_type: EntityType | None = None
    entity_id: str | None = Field(None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def entity_pair(self) -> EvaluateAnyBody:
        if (self.entity_type is None) != (self.entity_id is None):
            raise ValueError("entity_type and entity_id go together")
        return self


class EvaluateAnyOut(EvaluationOut):
    allow: bool = Field(description="Same as `allowed` (the enforcer's name)")
    decision: Literal["permit", "deny"]


class AuthorizeBody(AuthorizationBody):
    """The official client's `POST /policies/authorize`: like check-authorization, against the
    entity's resolved policies when `entity_type` + `entity_id` are given, else against every
    enabled policy of the organization."""

    entity_type: EntityType | None = None
    entity_id: str | None = Field(None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def entity_pair(self) -> AuthorizeBody:
        if (self.entity_type is None) != (self.entity_id is None):
            raise ValueError("entity_type and entity_id go together")
        return self


class AuthorizeOut(AuthorizationOut):
    decision: Literal["permit", "deny"]


class EnforceBody(BaseModel):
    """What a worker asks before a tool call: only which execution and which call. Who acts,
    for which agent, team and environments, what the tool is and which policies apply all come
    from the control plane's rows."""

    execution_id: uuid.UUID
    tool_name: str = Field(min_length=1, max_length=200)
    arguments: dict[str, Any] = Field(default_factory=dict)
    mcp_server: str | None = Field(
        None, max_length=200, description="For a tool the worker listed from an MCP server"
    )


class EnforcementDecision(BaseModel):
    allowed: bool
    violations: list[str]
    policies_evaluated: int
    engine_error: str | None = Field(
        None, description="Set when a policy could not be evaluated (denied unless fail-open)"
    )


# --- Queries ------------------------------------------------------------------------------


def _policy_out(row: asyncpg.Record) -> PolicyOut:
    return PolicyOut.model_validate(dict(row))


async def _policies_by_id(call: Call, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, PolicyOut]:
    rows = await call.db.fetch(
        f"SELECT {COLUMNS} FROM policies WHERE organization_id = $1 AND id = ANY($2::uuid[])",
        call.org,
        list(ids),
    )
    return {row["id"]: _policy_out(row) for row in rows}


def _evaluation_out(evaluation: Evaluation) -> EvaluationOut:
    return EvaluationOut(
        allowed=evaluation.allowed,
        violations=evaluation.violations,
        policy_results={
            ident: PolicyOutcome(
                policy_name=outcome.policy_name,
                allow=outcome.allow,
                violations=outcome.violations,
                error=outcome.error,
            )
            for ident, outcome in evaluation.outcomes.items()
        },
        policies_evaluated=evaluation.policies_evaluated,
        engine_error=evaluation.engine_error,
    )


async def _evaluate(
    call: Call, policies: Sequence[PolicySource], input: Mapping[str, Any]
) -> EvaluationOut:
    evaluation = await evaluate(
        _engine(call), policies, input, fail_open=call.state.settings.policy_fail_open
    )
    return _evaluation_out(evaluation)


def _authorization_input(call: Call, body: AuthorizationBody) -> dict[str, Any]:
    """`context`'s keys at the top (so it may carry `user`, `tool`, ... as enforcement inputs
    do), then `action`, `resource`, `context` and the organization."""
    return {
        **body.context,
        "action": body.action,
        "resource": body.resource,
        "context": body.context,
        "organization": {"id": call.org},
    }


async def _entity_policies(call: Call, entity_type: str, entity_id: str) -> list[PolicySource]:
    scope = await entity_scope(call.db, call.org, entity_type, entity_id)
    return await scope_policies(call.db, call.org, scope)


def _engine(call: Call) -> PolicyEngine:
    return get_engine(call.state.settings)


async def _validated(call: Call, rego: str) -> None:
    """422 carrying the engine's messages when the Rego does not compile."""
    validation = await _engine(call).validate(rego)
    if not validation.valid:
        raise ApiError(
            422,
            f"Invalid Rego policy: {validation.errors[0]}",
            details={
                "errors": validation.errors,
                "validation_errors": [
                    {"field": "policy_content", "message": error, "type": "rego_error"}
                    for error in validation.errors
                ],
            },
        )


async def _get_policy(call: Call, policy_id: uuid.UUID) -> PolicyOut:
    row = await call.db.fetchrow(
        f"SELECT {COLUMNS} FROM policies WHERE id = $1 AND organization_id = $2",
        policy_id,
        call.org,
    )
    if row is None:
        raise not_found("Policy", policy_id)
    return _policy_out(row)


async def _get_association(call: Call, association_id: uuid.UUID) -> AssociationOut:
    row = await call.db.fetchrow(
        f"SELECT {ASSOCIATION_COLUMNS} FROM {ASSOCIATION_FROM} "
        "WHERE a.id = $1 AND a.organization_id = $2",
        association_id,
        call.org,
    )
    if row is None:
        raise not_found("Policy association", association_id)
    return AssociationOut.model_validate(dict(row))


# --- Routes: fixed paths first, so `/policies/{policy_id}` does not shadow them -------------


@router.get("/api/v1/policies/health")
async def policy_engine_health(call: Call) -> PolicyEngineHealth:
    """The policy engine: regorus in process, or the OPA server named by OPA_URL."""
    engine = _engine(call)
    healthy, detail = await engine.health()
    return PolicyEngineHealth(
        status="healthy" if healthy else "unhealthy",
        engine="opa" if engine.kind == "opa" else "regorus",
        opa_url=call.state.settings.opa_url,
        fail_open=call.state.settings.policy_fail_open,
        detail=detail,
    )


@router.post("/api/v1/policies/enforce", role="worker_token")
async def enforce_policies(call: Call, body: EnforceBody) -> EnforcementDecision:
    """Worker → control plane, before every tool call: may this execution (on your queue, not
    ended) make this call? The tool must be one the execution was started with (or, with
    `mcp_server`, a server of its environment); everything else in the policy input comes from
    the control plane's rows. Engine errors deny unless the server runs with POLICY_FAIL_OPEN."""
    decision = await check_tool_call(
        call.db,
        _engine(call),
        call.org,
        queue_id=call.principal.worker_queue_id,
        execution_id=body.execution_id,
        tool_name=body.tool_name,
        arguments=body.arguments,
        mcp_server=body.mcp_server,
        fail_open=call.state.settings.policy_fail_open,
    )
    return EnforcementDecision(
        allowed=decision.allowed,
        violations=decision.violations,
        policies_evaluated=decision.policies_evaluated,
        engine_error=decision.engine_error,
    )


@router.post("/api/v1/policies/evaluate", role="viewer")
async def evaluate_any(call: Call, body: EvaluateAnyBody) -> EvaluateAnyOut:
    """Evaluate one policy, an entity's policies, or all of the organization's (see the body)."""
    policies: list[PolicySource]
    if body.policy_id is not None or body.policy_name is not None:
        row = await call.db.fetchrow(
            "SELECT id, name, version, policy_content FROM policies WHERE organization_id = $1 "
            "AND ($2::uuid IS NULL OR id = $2) AND ($3::text IS NULL OR name = $3)",
            call.org,
            body.policy_id,
            body.policy_name,
        )
        if row is None:
            raise not_found("Policy", body.policy_id or body.policy_name)
        policies = [source_of(row)]
    elif body.entity_type is not None and body.entity_id is not None:
        policies = await _entity_policies(call, body.entity_type, body.entity_id)
    else:
        policies = await org_enabled_policies(call.db, call.org)
    input = body.input if body.input is not None else (body.input_data or {})
    result = await _evaluate(call, policies, input)
    return EvaluateAnyOut(
        **result.model_dump(),
        allow=result.allowed,
        decision="permit" if result.allowed else "deny",
    )


@router.post("/api/v1/policies/authorize", role="viewer")
async def authorize(call: Call, body: AuthorizeBody) -> AuthorizeOut:
    """May `action` on `resource` happen? Against an entity's policies or all of the
    organization's enabled ones."""
    if body.entity_type is not None and body.entity_id is not None:
        policies = await _entity_policies(call, body.entity_type, body.entity_id)
    else:
        policies = await org_enabled_policies(call.db, call.org)
    result = await _evaluate(call, policies, _authorization_input(call, body))
    return AuthorizeOut(
        authorized=result.allowed,
        violations=result.violations,
        policies_evaluated=result.policies_evaluated,
        engine_error=result.engine_error,
        decision="permit" if result.allowed else "deny",
    )


@router.post("/api/v1/policies/associations", status=201, role="admin")
async def create_association(call: Call, body: AssociationCreate) -> AssociationOut:
    """Attach a policy to an agent, team, environment or role; the entity must exist (404)."""
    policy_id = await call.db.fetchval(
        "SELECT id FROM policies WHERE organization_id = $1 "
        "AND ($2::uuid IS NULL OR id = $2) AND ($3::text IS NULL OR name = $3)",
        call.org,
        body.policy_id,
        body.policy_name,
    )
    if policy_id is None:
        raise not_found("Policy", body.policy_id or body.policy_name)
    entity_id = await check_entity(call.db, call.org, body.entity_type, body.entity_id)
    priority = body.priority if body.priority is not None else DEFAULT_PRIORITY[body.entity_type]
    association_id = uuid.uuid4()
    with conflict_on_duplicate(f"The policy is already attached to this {body.entity_type}"):
        await call.db.execute(
            "INSERT INTO policy_associations (id, organization_id, policy_id, entity_type, "
            "entity_id, enabled, priority, metadata, created_by) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            association_id,
            call.org,
            policy_id,
            body.entity_type,
            entity_id,
            body.enabled,
            priority,
            body.metadata,
            call.principal.actor,
        )
    return await _get_association(call, association_id)


@router.get("/api/v1/policies/associations")
async def list_associations(call: Call, query: AssociationQuery) -> Page[AssociationOut]:
    """The organization's policy associations, oldest first, filtered as asked."""
    rows, total = await fetch_page(
        call.db,
        table=ASSOCIATION_FROM,
        columns=ASSOCIATION_COLUMNS,
        where="a.organization_id = $1",
        args=[call.org],
        query=query,
        order="a.created_at, a.id",
        filters={
            "a.entity_type": query.entity_type,
            "a.entity_id": query.entity_id,
            "a.policy_id": query.policy_id,
            "a.enabled": query.enabled,
        },
    )
    items = [AssociationOut.model_validate(dict(row)) for row in rows]
    return Page[AssociationOut](items=items, total=total, limit=query.limit, offset=query.start)


@router.get("/api/v1/policies/associations/{association_id}")
async def get_association(call: Call) -> AssociationOut:
    """One association."""
    return await _get_association(call, call.path_uuid("association_id", "Policy association"))


@router.patch("/api/v1/policies/associations/{association_id}", role="admin")
async def update_association(call: Call, body: AssociationUpdate) -> AssociationOut:
    """Change an association's enabled flag, priority or metadata."""
    association_id = call.path_uuid("association_id", "Policy association")
    assignments, values = patch_assignments(
        body.changes(), ["enabled", "priority", "metadata"], first_param=3
    )
    updated = await call.db.fetchval(
        f"UPDATE policy_associations SET {assignments} WHERE id = $1 AND organization_id = $2 "
        "RETURNING id",
        association_id,
        call.org,
        *values,
    )
    if updated is None:
        raise not_found("Policy association", association_id)
    return await _get_association(call, association_id)


@router.delete("/api/v1/policies/associations/{association_id}", role="admin")
async def delete_association(call: Call) -> Deleted:
    """Detach a policy."""
    return await call.delete_owned("policy_associations", "association_id", "Policy association")


@router.get("/api/v1/policies/resolved/{entity_type}/{entity_id}")
async def resolved_policies(call: Call, query: ResolvedQuery) -> ResolvedPolicies:
    """The entity's policies with inheritance (an agent: its environments', its team's and its
    own associations, one per policy at its highest priority, highest first; then the policies
    its projects and resolved context list, source `project` or `context`, priority 0)."""
    entity_type = _entity_type(call)
    scope = await entity_scope(call.db, call.org, entity_type, call.path["entity_id"])
    scope = await loaded_scope(call.db, call.org, scope)
    resolved = [
        ResolvedPolicy(
            policy_id=link.policy.id,
            policy_name=link.policy.name,
            source_type=link.entity_type,
            source_id=link.entity_id,
            priority=link.priority,
            enabled=link.policy.enabled,
            metadata=link.metadata,
        )
        for link in resolved_links(scope)
    ]
    seen = {item.policy_id for item in resolved}
    listed = scope.policies or {}
    for ident, source, source_id in scope.listed:
        policy = listed.get(ident)
        if policy is not None and ident not in seen:
            seen.add(ident)
            resolved.append(
                ResolvedPolicy(
                    policy_id=ident,
                    policy_name=policy.name,
                    source_type=source,
                    source_id=source_id,
                    priority=0,
                    enabled=policy.enabled,
                    metadata={},
                )
            )
    if query.include_details:
        details = await _policies_by_id(call, [item.policy_id for item in resolved])
        for item in resolved:
            item.policy_details = details.get(item.policy_id)
    return ResolvedPolicies(resolved)


def _entity_type(call: Call) -> str:
    raw = call.path["entity_type"]
    if raw not in DEFAULT_PRIORITY:
        raise ApiError(
            400,
            f"Unknown entity type '{raw}': one of agent, team, environment, role",
            details={"entity_type": raw},
        )
    return raw


@router.post("/api/v1/policies/evaluate/{entity_type}/{entity_id}", role="viewer")
async def evaluate_for_entity(call: Call, body: EvaluateBody) -> EvaluationOut:
    """Evaluate the entity's resolved, enabled policies (or the listed ones among them)
    against `input_data`: allowed when every one allows."""
    policies = await _entity_policies(call, _entity_type(call), call.path["entity_id"])
    if body.policy_ids is not None:
        wanted = {str(ident) for ident in body.policy_ids}
        missing = sorted(wanted - {policy.id for policy in policies})
        if missing:
            raise ApiError(
                400,
                "Some policy_ids are not enabled policies resolved for this entity",
                details={"policy_ids": missing},
            )
        policies = [policy for policy in policies if policy.id in wanted]
    return await _evaluate(call, policies, body.input_data)


@router.post("/api/v1/policies/check-authorization/{entity_type}/{entity_id}", role="viewer")
async def check_authorization(call: Call, body: AuthorizationBody) -> AuthorizationOut:
    """May the entity do `action` on `resource`? Input: `context`'s keys, `action`, `resource`,
    `context` and `organization`."""
    policies = await _entity_policies(call, _entity_type(call), call.path["entity_id"])
    result = await _evaluate(call, policies, _authorization_input(call, body))
    return AuthorizationOut(
        authorized=result.allowed,
        violations=result.violations,
        policies_evaluated=result.policies_evaluated,
        engine_error=result.engine_error,
    )


@router.post("/api/v1/policies", status=201, role="admin")
async def create_policy(call: Call, body: PolicyCreate) -> PolicyOut:
    """Create a Rego policy; a text the engine refuses is a 422 carrying its message."""
    await _validated(call, body.policy_content)
    policy_id = uuid.uuid4()
    with conflict_on_duplicate(f"A policy named '{body.name}' exists"):
        row = await call.db.fetchrow(
            "INSERT INTO policies (id, organization_id, name, description, policy_content, "
            "enabled, tags, metadata, created_by, updated_by) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING {COLUMNS}",
            policy_id,
            call.org,
            body.name,
            body.description,
            body.policy_content,
            body.enabled,
            body.tags,
            body.metadata,
            call.principal.actor,
        )
    assert row is not None
    return _policy_out(row)


@router.get("/api/v1/policies")
async def list_policies(call: Call, query: PolicyQuery) -> Page[PolicyOut]:
    """The organization's policies, oldest first; `enabled` and `search` narrow them."""
    where, args = "organization_id = $1", [call.org]
    if query.search:
        pattern = query.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        args.append(f"%{pattern}%")
        where += f" AND (name ILIKE ${len(args)} OR coalesce(description, '') ILIKE ${len(args)})"
    rows, total = await fetch_page(
        call.db,
        table="policies",
        columns=COLUMNS,
        where=where,
        args=args,
        query=query,
        filters={"enabled": query.enabled},
    )
    items = [_policy_out(row) for row in rows]
    return Page[PolicyOut](items=items, total=total, limit=query.limit, offset=query.start)


@router.get("/api/v1/policies/{policy_id}")
async def get_policy(call: Call) -> PolicyOut:
    """One policy."""
    return await _get_policy(call, call.path_uuid("policy_id", "Policy"))


async def _update(call: Call, body: PolicyUpdate) -> PolicyOut:
    policy_id = call.path_uuid("policy_id", "Policy")
    changes = body.changes()
    await _get_policy(call, policy_id)  # 404 before a 422 about the text
    if "policy_content" in changes:
        await _validated(call, changes["policy_content"])
    changes["updated_by"] = call.principal.actor
    assignments, values = patch_assignments(
        changes,
        ["name", "description", "policy_content", "enabled", "tags", "metadata", "updated_by"],
        first_param=3,
    )
    with conflict_on_duplicate("Another policy has that name"):
        row = await call.db.fetchrow(
            f"UPDATE policies SET {assignments}, version = version + 1 "
            f"WHERE id = $1 AND organization_id = $2 RETURNING {COLUMNS}",
            policy_id,
            call.org,
            *values,
        )
    if row is None:
        raise not_found("Policy", policy_id)
    return _policy_out(row)


@router.put("/api/v1/policies/{policy_id}", role="admin")
async def replace_policy(call: Call, body: PolicyUpdate) -> PolicyOut:
    """Update a policy (every field optional, as in Kubiya); a new text is validated."""
    return await _update(call, body)


@router.patch("/api/v1/policies/{policy_id}", role="admin")
async def update_policy(call: Call, body: PolicyUpdate) -> PolicyOut:
    """Update the fields sent; a new text is validated; `version` grows by one."""
    return await _update(call, body)


@router.delete("/api/v1/policies/{policy_id}", role="admin")
async def delete_policy(call: Call) -> Deleted:
    """Delete a policy and its associations."""
    deleted = await call.delete_owned("policies", "policy_id", "Policy")
    await _engine(call).forget(str(deleted.id))
    return deleted


@router.post("/api/v1/policies/{policy_id}/validate", role="viewer")
async def validate_policy(call: Call, body: PolicyValidateBody) -> PolicyValidation:
    """Check the stored text (or a draft sent as `policy_content`) with the engine."""
    policy = await _get_policy(call, call.path_uuid("policy_id", "Policy"))
    validation = await _engine(call).validate(body.policy_content or policy.policy_content)
    return PolicyValidation(
        valid=validation.valid, errors=validation.errors, warnings=validation.warnings
    )
