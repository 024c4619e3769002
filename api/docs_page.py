"""Interactive API docs served from this package, with no CDN."""

from __future__ import annotations

from starlette.routing import BaseRoute

HTML = "<!doctype html><title>API docs</title><p>See /api/openapi.json</p>"


def asset_routes() -> list[BaseRoute]:
    return []
