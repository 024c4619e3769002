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
from api.auth import AuthMiddleware, prune_rate_limit_counters
from api.db import apply_schema_at, create_pool
from api.errors import ApiError, error_response
from api.event_stream import EventHub
from api.idempotency import IdempotencyMiddleware, prune_idempotency_keys
from api.metrics import Metrics
from api.openapi import build_openapi
from api.reconciler import reconcile_executions
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
    models,
    policies,
    projects,
    runtimes,
    secrets,
    skills,
    worker_queues,
    workers,
)
from api.routing import Endpoint, starlette_routes
from api.state import AppState
from api.temporal_gateway import TemporalGateway
from controlplane.settings import Settings

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
    executions.router,
    execute.router,
    policies.router,
    skills.router,
    context.router,
    secrets.router,
    integrations.router,
    execution_environment.router,
]
HOUSEKEEPING_EVERY_SECONDS = 60


def all_endpoints() -> list[Endpoint]:
    return [endpoint for router in ROUTERS for endpoint in router.endpoints]


async def _housekeeping_forever(state: AppState) -> None:
    while True:
        await asyncio.sleep(HOUSEKEEPING_EVERY_SECONDS)
        try:
            await prune_rate_limit_counters(state)
            await prune_idempotency_keys(state)
            await reconcile_executions(state)
        except Exception:
            log.exception("housekeeping failed (pruning, reconciling executions)")


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
        temporal=TemporalGateway(settings.temporal_address, settings.temporal_namespace, metrics),
        events=EventHub(settings.database_url),
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
        pruner = asyncio.create_task(_housekeeping_forever(state))
        try:
            yield
        finally:
            pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruner
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
