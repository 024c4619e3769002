"""The Starlette application: middleware, routes and the process lifetime (pool, Temporal)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from api import docs_page
from api.auth import AuthMiddleware
from api.credentials import CredentialCache
from api.errors import ApiError, error_response
from api.idempotency import IdempotencyMiddleware
from api.metrics import Metrics
from api.openapi import build_openapi
from api.request_context import RequestContextMiddleware
from api.routes import (
    agents,
    api_keys,
    context,
    environments,
    execute,
    execution_environment,
    executions,
    health,
    integrations,
    jobs,
    models,
    plan_executions,
    planning,
    policies,
    projects,
    runners,
    runtimes,
    secrets,
    skills,
    teams,
    webhooks,
    worker_queues,
    workers,
    workflows,
)
from api.routing import Endpoint, starlette_routes
from api.state import AppState
from controlplane.db import create_pool
from controlplane.executions.events import EventHub
from controlplane.schema import apply_schema_at
from controlplane.settings import Settings
from controlplane.temporal import TemporalGateway
from controlplane.temporal_auth import CONTROL_PLANE_PERMISSIONS, load_signing_key, mint
from controlplane.vault import vault_from_key

log = logging.getLogger("controlplane.api")

ROUTERS = [
    health.router,
    api_keys.router,
    projects.router,
    environments.router,
    worker_queues.router,
    workers.router,
    models.router,
    runtimes.router,
    agents.router,
    teams.router,
    executions.router,
    execute.router,
    execute.team_router,
    policies.router,
    skills.router,
    context.router,
    secrets.router,
    integrations.router,
    execution_environment.router,
    planning.router,
    webhooks.router,
    jobs.router,
    runners.router,
    # After planning's: its /tasks/plan/health and /stream come before /tasks/plan/{id}.
    plan_executions.router,
    workflows.router,
]
# How long shutdown waits for the workflow starts of executes already answered.
START_DRAIN_SECONDS = 5.0
# How long start-up waits before asking an unreachable Temporal again for the namespaces.
NAMESPACE_RETRY_SECONDS = 15


def all_endpoints() -> list[Endpoint]:
    return [endpoint for router in ROUTERS for endpoint in router.endpoints]


async def _load_signing_key(state: AppState) -> None:
    """The key that signs Temporal JWTs; the gateway's own connection carries one."""
    settings = state.settings
    vault = vault_from_key(settings.secret_key) if settings.secret_key else None
    async with state.pool.acquire() as conn:
        key = await load_signing_key(conn, vault)
    state.signing_key = key
    state.temporal.token_source = lambda: mint(
        key,
        subject="controlplane",
        permissions=CONTROL_PLANE_PERMISSIONS,
        ttl_seconds=settings.temporal_token_ttl_seconds,
        issuer=settings.public_url,
    )


def _record_namespaces(state: AppState) -> None:
    """The gateway notes each organization's namespace once it exists."""

    async def record(organization_id: str, namespace: str) -> None:
        await state.pool.execute(
            "UPDATE organizations SET temporal_namespace = $2 WHERE id = $1 "
            "AND temporal_namespace IS DISTINCT FROM $2",
            organization_id,
            namespace,
        )

    state.temporal.namespace_ready = record


async def _ensure_namespaces(state: AppState) -> None:
    """Organizations whose namespace is not known to exist (created before this release, or
    while Temporal was down) get it now; retried until Temporal answers."""
    while True:
        try:
            orgs = [
                row["id"]
                for row in await state.pool.fetch(
                    "SELECT id FROM organizations WHERE temporal_namespace IS DISTINCT FROM "
                    "$1 || id",
                    state.settings.temporal_namespace_prefix,
                )
            ]
            await state.temporal.ensure_namespaces(orgs)
            return
        except Exception as exc:
            log.warning("could not ensure the organizations' Temporal namespaces: %s", exc)
            await asyncio.sleep(NAMESPACE_RETRY_SECONDS)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {
        404: f"No route for {request.url.path}",
        405: f"Method {request.method} not allowed on {request.url.path}",
    }
    error = ApiError(
        exc.status_code,
        message.get(exc.status_code, str(exc.detail)),
        headers=dict(exc.headers or {}),
    )
    return error_response(error)


def create_app(settings: Settings) -> Starlette:
    # The pool exists only after start-up; the collector reads it from the state at scrape time.
    metrics = Metrics(lambda: state.pool_or_none)
    state = AppState(
        settings=settings,
        metrics=metrics,
        temporal=TemporalGateway(
            settings, lambda operation: metrics.temporal_errors.labels(operation=operation).inc()
        ),
        events=EventHub(settings.database_url),
        credentials=CredentialCache(settings.auth_cache_seconds),
    )
    endpoints = all_endpoints()
    openapi = build_openapi(endpoints)

    async def openapi_json(request: Request) -> Response:
        request.scope["route_template"] = "/api/openapi.json"
        return JSONResponse(openapi)

    async def docs(request: Request) -> Response:
        request.scope["route_template"] = "/api/docs"
        return HTMLResponse(docs_page.HTML)

    routes: list[BaseRoute] = [
        Route("/api/openapi.json", openapi_json),
        Route("/api/docs", docs),
        *docs_page.asset_routes(),
        *starlette_routes(endpoints),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await apply_schema_at(settings.database_url)
        state.pool_or_none = await create_pool(
            settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
        )
        await _load_signing_key(state)
        _record_namespaces(state)
        background = [
            asyncio.create_task(_ensure_namespaces(state)),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Starts still being made: what is not made by then, housekeeping makes.
            await state.starts.drain(START_DRAIN_SECONDS)
            await state.events.close()
            await state.pool.close()

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestContextMiddleware),
            Middleware(AuthMiddleware),
            Middleware(IdempotencyMiddleware),
        ],
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.state.cp = state
    return app
