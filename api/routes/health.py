"""Health, readiness, the API index and Prometheus metrics: the routes that need no key."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.responses import Response

from api.errors import ApiError
from api.routing import Call, Router
from controlplane import SERVICE_NAME, VERSION
from controlplane.temporal_auth import published_keys

router = Router("health")


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Health(BaseModel):
    status: str
    service: str
    version: str
    timestamp: str


class Ready(BaseModel):
    status: str
    timestamp: str


class DetailedHealth(BaseModel):
    api: str
    database: str
    temporal: str
    status: str
    timestamp: str


class ApiIndex(BaseModel):
    message: str
    version: str
    docs: str
    openapi: str
    endpoints: dict[str, str]


async def _database_ok(call: Call) -> bool:
    try:
        pool = call.state.pool_or_none
        if pool is None:
            return False
        await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout=2)
        return True
    except Exception:
        return False


@router.get("/api/health", role=None)
async def health(call: Call) -> Health:
    """Liveness: the process answers."""
    return Health(status="healthy", service=SERVICE_NAME, version=VERSION, timestamp=_now())


@router.get("/api/ready", role=None)
async def ready(call: Call) -> Ready:
    """Readiness: 200 only when Postgres and Temporal both answer, else 503."""
    database, temporal = await asyncio.gather(_database_ok(call), call.state.temporal.healthy())
    if not (database and temporal):
        down = [name for name, ok in (("database", database), ("temporal", temporal)) if not ok]
        raise ApiError(
            503,
            f"Not ready: {', '.join(down)} not answering",
            details={"database": database, "temporal": temporal},
        )
    return Ready(status="ready", timestamp=_now())


@router.get("/api/health/detailed", role=None)
async def detailed(call: Call) -> DetailedHealth:
    """Each dependency's state; `degraded` when any is down."""
    database, temporal = await asyncio.gather(_database_ok(call), call.state.temporal.healthy())
    return DetailedHealth(
        api="healthy",
        database="healthy" if database else "unhealthy",
        temporal="healthy" if temporal else "unhealthy",
        status="healthy" if database and temporal else "degraded",
        timestamp=_now(),
    )


class Jwks(BaseModel):
    keys: list[dict[str, Any]]


@router.get("/.well-known/jwks.json", role=None)
async def jwks(call: Call) -> Jwks:
    """The public keys of the JWTs the control plane signs for Temporal's authorizer
    (Temporal's `jwtKeyProvider.keySourceURIs` points here)."""
    return Jwks(keys=await published_keys(call.db))


@router.get("/metrics", role=None)
async def metrics(call: Call) -> Response:
    """Prometheus metrics of this API process."""
    return Response(generate_latest(call.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# The groups of endpoints, for `GET /api`.
ENDPOINT_GROUPS = {
    "health": "/api/health",
    "ready": "/api/ready",
    "docs": "/api/docs",
    "openapi": "/api/openapi.json",
    "metrics": "/metrics",
    "api_keys": "/api/v1/api-keys",
    "projects": "/api/v1/projects",
    "environments": "/api/v1/environments",
    "worker_queues": "/api/v1/worker-queues",
    "workers": "/api/v1/workers",
    "models": "/api/v1/models",
    "runtimes": "/api/v1/runtimes",
    "agents": "/api/v1/agents",
    "policies": "/api/v1/policies",
    "skills": "/api/v1/skills",
    "toolsets": "/api/v1/toolsets",
    "context": "/api/v1/context",
    "secrets": "/api/v1/secrets",
    "integrations": "/api/v1/integrations",
    "custom_integrations": "/api/v1/custom-integrations",
    "execution_environment": "/api/v1/execution-environment",
    "task_planning": "/api/v1/tasks/plan",
    "plan_executions": "/api/v1/tasks/plan/plan-executions",
    "workflows": "/api/v1/workflows",
}


@router.get("/api", role=None)
async def index(call: Call) -> ApiIndex:
    """Name, version and an index of the endpoint groups."""
    return ApiIndex(
        message="Agent Control Plane API",
        version=VERSION,
        docs="/api/docs",
        openapi="/api/openapi.json",
        endpoints=ENDPOINT_GROUPS,
    )
