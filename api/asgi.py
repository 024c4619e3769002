"""Entry point for ASGI servers: `uvicorn --factory api.asgi:app_from_env`."""

from __future__ import annotations

from starlette.applications import Starlette

from api.app import create_app
from controlplane.logs import configure_logging
from controlplane.settings import Settings


def app_from_env() -> Starlette:
    configure_logging()
    settings = Settings.from_env()
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set (controlplane dev sets it for you)")
    return create_app(settings)
