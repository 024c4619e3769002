"""Shared pieces of the run tests (plan executions, user-defined workflows): an organization
with a queue served by a real worker process, an API app whose system task queue a real system
worker process serves, and waiting on the database's NOTIFY rather than sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
from starlette.applications import Starlette

from controlplane.devtools.fake_anthropic import FakeAnthropicServer
from controlplane.executions.events import CHANNEL
from controlplane.settings import Settings
from tests.conftest import Tenant, client_for, make_tenant, worker_key_for
from tests.execution_helpers import make_queue, start_worker_process
from tests.test_planning import Planner, planner_stack

T = TypeVar("T")
HISTORIES = Path(__file__).parent / "histories" / "runs"


@dataclass
class Org:
    """A tenant, a queue served by a worker process, and a planner stack's clients."""

    tenant: Tenant
    queue: dict[str, Any]
    worker: subprocess.Popen[bytes]
    stack: Planner

    def client(self, role: str = "member") -> httpx.AsyncClient:
        return self.stack.client(self.tenant, role)


@contextlib.asynccontextmanager
async def org_stack(
    app: Starlette,
    db: asyncpg.Pool[Any],
    settings: Settings,
    live_api: str,
    fake: FakeAnthropicServer,
) -> AsyncIterator[Org]:
    """A fresh organization whose queue a worker process serves, and a system worker process on
    a task queue of its own (with an API app whose runs go there)."""
    tenant = await make_tenant(app, db)
    queue = await make_queue(tenant, f"runs-{uuid.uuid4().hex[:6]}")
    worker = start_worker_process(
        queue["id"], await worker_key_for(tenant, queue["id"]), live_api, fake
    )
    try:
        async with planner_stack(settings, fake) as stack:
            yield Org(tenant, queue, worker, stack)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            await asyncio.to_thread(worker.wait, 30)


async def until(
    settings: Settings, check: Callable[[], Awaitable[T | None]], timeout: float = 90
) -> T:
    """`check()`'s first truthy answer, asked again at every NOTIFY of an execution event (each
    status change and stream event sends one)."""
    conn = await asyncpg.connect(settings.database_url)
    woken = asyncio.Event()
    await conn.add_listener(CHANNEL, lambda *args: woken.set())
    last: T | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                woken.clear()
                last = await check()
                if last:
                    return last
                await woken.wait()
    except TimeoutError:
        raise AssertionError(f"timed out; last answer {last!r}") from None
    finally:
        await conn.close()


def token() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


async def children(db: asyncpg.Pool[Any], run_id: str) -> dict[str, asyncpg.Record]:
    """The run's step executions by step id."""
    rows = await db.fetch(
        "SELECT id, delegation_key, status, response, prompt, created_at, started_at, "
        "completed_at FROM executions WHERE parent_execution_id = $1",
        uuid.UUID(run_id),
    )
    return {row["delegation_key"]: row for row in rows}


async def record_run_history(org: Org, workflow_id: str, name: str) -> None:
    """With RECORD_HISTORIES=1, keep the run's history for the replay tests."""
    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    history = await org.stack.temporal.get_workflow_handle(workflow_id).fetch_history()
    HISTORIES.mkdir(parents=True, exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())


def other_client(org: Org, other: Tenant, role: str = "member") -> httpx.AsyncClient:
    return client_for(org.stack.app, other.keys[role])  # type: ignore[index]
