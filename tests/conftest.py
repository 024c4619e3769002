"""Session fixtures: a real Postgres (embedded) and a real Temporal dev server, one API app
on them, and a fresh organization with keys of each role per test."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from temporalio.client import Client

from api.app import create_app
from controlplane.services import EmbeddedPostgres, free_port, start_temporal, stop_process
from controlplane.settings import Settings
from controlplane.temporal import NamespaceWarmup
from controlplane.tenancy import KeyRole, create_key, create_org
from controlplane.vault import new_key


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def database_url(service_dir: Path) -> Iterator[str]:
    """A fresh database per test session, on DATABASE_URL's server or an embedded one."""
    external = os.environ.get("DATABASE_URL")
    server = None
    if external:
        admin_url = external
    else:
        server = EmbeddedPostgres(service_dir / "pgdata")
        admin_url = server.start()
    name = f"cp_test_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    yield _with_database(admin_url, name)
    if server is not None:
        server.stop()


def _with_database(url: str, name: str) -> str:
    # Embedded URLs look like postgresql://postgres:@/postgres?host=/socket/dir
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}{sep}{query}"


@pytest.fixture(scope="session")
def temporal_address(service_dir: Path) -> Iterator[str]:
    port = free_port()
    process = start_temporal(
        service_dir / "temporal.db", port=port, ui_port=None, log_file=service_dir / "temporal.log"
    )
    address = f"127.0.0.1:{port}"

    async def wait_ready() -> None:
        for _ in range(100):
            try:
                client = await Client.connect(address)
                await client.service_client.check_health()
                return
            except Exception:
                await asyncio.sleep(0.1)
        raise RuntimeError("Temporal dev server never became healthy")

    asyncio.run(wait_ready())
    yield address
    stop_process(process)


@pytest.fixture(scope="session")
def settings(database_url: str, temporal_address: str, service_dir: Path) -> Settings:
    return Settings.from_env(
        database_url=database_url,
        temporal_address=temporal_address,
        home=service_dir / "home",
        max_body_bytes=64 * 1024,
        secret_key=new_key(),
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def db(app: Starlette) -> asyncpg.Pool[Any]:
    pool: asyncpg.Pool[Any] = app.state.cp.pool
    return pool


def client_for(app: Starlette, key: str | None = None, **headers: str) -> httpx.AsyncClient:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://testserver",
        headers=headers,
    )


@dataclass
class Tenant:
    """An organization with one client per role."""

    id: str
    admin: httpx.AsyncClient
    member: httpx.AsyncClient
    viewer: httpx.AsyncClient
    keys: dict[KeyRole, str]
    app: Starlette

    def anonymous(self) -> httpx.AsyncClient:
        return client_for(self.app)


async def temporal_for(temporal_address: str, tenant: Tenant) -> Client:
    """A Temporal client in the tenant's own namespace (where its workflows live)."""
    return await Client.connect(
        temporal_address,
        namespace=Settings().namespace_for(tenant.id),
        interceptors=[NamespaceWarmup()],
    )


async def worker_key_for(tenant: Tenant, queue_id: str) -> str:
    """A worker key of the queue, minted by the tenant's admin."""
    response = await tenant.admin.post(
        "/api/v1/api-keys",
        json={"name": "worker key", "role": "worker", "worker_queue_id": queue_id},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


async def as_worker(
    tenant: Tenant, queue_id: str, app: Starlette | None = None
) -> httpx.AsyncClient:
    """A client holding the worker token of a worker started on the queue (with a worker key,
    as `controlplane worker` starts): what a worker process speaks the worker protocol with.
    `app`: another API app on the same database (default: the tenant's)."""
    starter = client_for(app or tenant.app, await worker_key_for(tenant, queue_id))
    response = await starter.post(f"/api/v1/worker-queues/{queue_id}/start", json={})
    assert response.status_code == 200, response.text
    return client_for(app or tenant.app, response.json()["worker_token"])


async def make_tenant(app: Starlette, db: asyncpg.Pool[Any], rate_limit: int = 10_000) -> Tenant:
    org = f"org-{uuid.uuid4().hex[:10]}"
    await create_org(db, org, rate_limit_per_minute=rate_limit)
    keys = {}
    roles: tuple[KeyRole, ...] = ("admin", "member", "viewer")
    for role in roles:
        new = await create_key(db, org, role=role, name=f"{role} key")
        keys[role] = new.key
    return Tenant(
        org,
        client_for(app, keys["admin"]),
        client_for(app, keys["member"]),
        client_for(app, keys["viewer"]),
        keys,
        app,
    )


@pytest.fixture
async def tenant(app: Starlette, db: asyncpg.Pool[Any]) -> Tenant:
    return await make_tenant(app, db)


@pytest.fixture
async def other_tenant(app: Starlette, db: asyncpg.Pool[Any]) -> Tenant:
    return await make_tenant(app, db)


@pytest.fixture
def anonymous(app: Starlette) -> httpx.AsyncClient:
    return client_for(app)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The envelope every error carries."""
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert set(error) >= {"code", "message", "details", "id", "timestamp"}
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


@pytest.fixture(scope="session")
def live_api(settings: Settings) -> Iterator[str]:
    """The API on a real port, for worker processes (which speak HTTP to it). It runs its own
    app instance on the same database, in a thread with its own event loop."""
    import threading

    import uvicorn

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    live_settings = dataclasses.replace(settings, public_url=url)
    config = uvicorn.Config(
        create_app(live_settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("live API did not start")
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


# Fixtures of the execution tests, shared by every module that runs agents.
from tests.execution_helpers import fake_llm, running_queue  # noqa: E402

__all__ = ["fake_llm", "running_queue"]
