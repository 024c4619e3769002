"""Outages of the control plane under streaming executions, on a stack of its own: a private
Postgres, the API as a uvicorn process, a real worker process, the shared Temporal and the fake
model. Postgres stopped for 10 s, then the API process restarted: every execution completes
with one model call, its stream joins to its answer, no route answers 500, and the worker
stays alive."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from api.errors import backend_down
from controlplane.devtools.fake_anthropic import (
    AsyncFakeAnthropicClient,
    FakeAnthropicServer,
    text_reply,
)
from controlplane.schema import apply_schema_at
from controlplane.services import EmbeddedPostgres, free_port
from controlplane.settings import Settings
from controlplane.tenancy import create_key, create_org
from tests.execution_helpers import start_worker_process
from tests.test_execution_lifecycle import joined_under_reset

ANSWER = " ".join(f"word{i}" for i in range(80))
STREAMS = 5


@dataclass
class Stack:
    postgres: EmbeddedPostgres
    database_url: str
    api_port: int
    api_env: dict[str, str]
    api: subprocess.Popen[bytes]
    key: str
    tmp: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )

    def start_api(self) -> None:
        with open(self.tmp / "api.log", "ab") as log:
            self.api = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "api.asgi:app_from_env",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.api_port),
                ],
                env=self.api_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=self.url, timeout=3) as http:
            while time.monotonic() < deadline:
                assert self.api.poll() is None, (self.tmp / "api.log").read_text()[-3000:]
                try:
                    if (await http.get("/api/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError("the API did not get ready")


@pytest.fixture
async def stack(tmp_path: Path, settings: Settings) -> AsyncIterator[Stack]:
    postgres = EmbeddedPostgres(tmp_path / "pg")
    database_url = await asyncio.to_thread(postgres.start)
    await apply_schema_at(database_url)
    org = f"outage-{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(database_url)
    try:
        await create_org(conn, org, rate_limit_per_minute=100_000)
        key = await create_key(conn, org, role="admin", name="outage admin")
    finally:
        await conn.close()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "CONTROLPLANE_SECRET_KEY": settings.secret_key,
        "CONTROLPLANE_URL": f"http://127.0.0.1:{port}",
        "CONTROLPLANE_HOME": str(tmp_path / "home"),
    }
    stack = Stack(postgres, database_url, port, env, None, key.key, tmp_path)  # type: ignore[arg-type]
    stack.start_api()
    try:
        await stack.wait_ready()
        yield stack
    finally:
        await stop(stack.api)
        await asyncio.to_thread(postgres.stop)


async def serve_queue(
    stack: Stack, fake_llm: FakeAnthropicServer
) -> tuple[str, subprocess.Popen[bytes]]:
    """A queue of the stack's organization with a real worker process serving it."""
    async with stack.client() as http:
        env = await http.post("/api/v1/environments", json={"name": "prod"})
        queue = await http.post(
            f"/api/v1/environments/{env.json()['id']}/worker-queues", json={"name": "q"}
        )
        queue_id = queue.json()["id"]
        worker_key = await http.post(
            "/api/v1/api-keys",
            json={"name": "worker", "role": "worker", "worker_queue_id": queue_id},
        )
        assert worker_key.status_code == 201, worker_key.text
        worker = start_worker_process(queue_id, worker_key.json()["key"], stack.url, fake_llm)
        deadline = time.monotonic() + 60
        while not (await http.get(f"/api/v1/worker-queues/{queue_id}/workers")).json()["total"]:
            assert worker.poll() is None and time.monotonic() < deadline, "no worker"
            await asyncio.sleep(0.2)
    return queue_id, worker


async def start_streams(
    stack: Stack, fake_llm: FakeAnthropicServer, queue_id: str
) -> list[tuple[str, str]]:
    """STREAMS one-shot executions whose model streams ANSWER slowly; (execution, token) once
    each has streamed a chunk."""
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    started = []
    async with stack.client() as http:
        for _ in range(STREAMS):
            token = uuid.uuid4().hex
            await fake.script(token, [text_reply(ANSWER, delay_per_chunk_ms=150)])
            agent = await http.post(
                "/api/v1/agents",
                json={
                    "name": f"a-{token[:8]}",
                    "system_prompt": f"You help. [{token}]",
                    "configuration": {"one_shot": True},
                },
            )
            execution = await http.post(
                f"/api/v1/agents/{agent.json()['id']}/execute",
                json={"prompt": "Talk", "worker_queue_id": queue_id},
            )
            assert execution.status_code == 200, execution.text
            started.append((execution.json()["execution_id"], token))
        for execution_id, _ in started:
            await wait_until(http, execution_id, None, chunk=True)
    return started


async def wait_until(
    http: httpx.AsyncClient, execution_id: str, done: Any, *, chunk: bool = False
) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if chunk:
            events = await read_events(http, execution_id, until_terminal=False)
            if any(kind == "message_chunk" for kind, _ in events):
                return {}
        else:
            response = await http.get(f"/api/v1/executions/{execution_id}")
            if response.status_code == 200 and done(response.json()):
                return dict(response.json())
        await asyncio.sleep(0.3)
    raise AssertionError(f"execution {execution_id} did not get there")


async def read_events(
    http: httpx.AsyncClient, execution_id: str, *, until_terminal: bool = True
) -> list[tuple[str, dict[str, Any]]]:
    """The stream's stored events (history and, with until_terminal, live to `done`)."""
    import json

    events: list[tuple[str, dict[str, Any]]] = []
    async with http.stream("GET", f"/api/v1/executions/{execution_id}/stream") as response:
        assert response.status_code == 200
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if kind == "history_complete" and not until_terminal:
                    return events
                if kind not in ("connected", "history_complete"):
                    events.append((kind, data.get("data", data)))
    return events


async def finish_and_check(
    stack: Stack, fake_llm: FakeAnthropicServer, started: list[tuple[str, str]]
) -> None:
    """Every execution completed with one model call, and its stream joins to its answer."""
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    assert len(started) == STREAMS
    async with stack.client() as http:
        for execution_id, token in started:
            final = await wait_until(
                http, execution_id, lambda body: body["status"] in ("completed", "failed")
            )
            assert final["status"] == "completed", final
            assert final["response"] == ANSWER
            assert len(await fake.requests(token)) == 1  # the model was not called again
            events = await read_events(http, execution_id)
            as_rows = [{"event_type": kind, "data": data} for kind, data in events]
            assert joined_under_reset(as_rows) == ANSWER
            assert not any(kind == "message_reset" for kind, _ in events)
            session = (await http.get(f"/api/v1/executions/{execution_id}/session")).json()
            assert [m["role"] for m in session["messages"]] == ["user", "assistant"]


async def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(process.wait, 30)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait, 10)


async def test_postgres_down_for_ten_seconds_costs_no_model_call_and_no_500(
    stack: Stack, fake_llm: FakeAnthropicServer
) -> None:
    queue_id, worker = await serve_queue(stack, fake_llm)
    try:
        started = await start_streams(stack, fake_llm, queue_id)
        execution_id = started[0][0]
        answers = []
        async with stack.client() as http, stack.client() as watcher:
            # A stream open when Postgres goes stays open through the outage, and says so.
            live = watcher.stream("GET", f"/api/v1/executions/{execution_id}/stream")
            async with live as stream:
                lines = stream.aiter_lines()
                said = [await anext(lines)]  # connected: the stream is open
                await asyncio.to_thread(stack.postgres.stop)
                down_since = time.monotonic()
                while time.monotonic() - down_since < 10:
                    for method, path in (
                        ("GET", "/api/v1/agents"),
                        ("GET", f"/api/v1/executions/{execution_id}"),
                        ("POST", "/api/v1/environments"),
                        ("GET", "/api/ready"),
                    ):
                        response = await http.request(method, path, json={"name": "x"})
                        answers.append(response)
                    await asyncio.sleep(0.5)
                await asyncio.to_thread(stack.postgres.start_again)
                async for line in lines:
                    said.append(line)
                    if line == "event: recovered":
                        break
            text = "\n".join(said)
            assert "event: degraded" in text and "is unavailable" in text, text[-2000:]
        assert answers
        statuses = {response.status_code for response in answers}
        assert statuses == {503}, statuses
        for response in answers:
            if response.url.path != "/api/ready":
                error = response.json()["error"]
                assert error["code"] == "SERVICE_UNAVAILABLE", error
                assert response.headers["Retry-After"] == "5"
        await finish_and_check(stack, fake_llm, started)
        # The API recovered without a restart, and the worker is still a live worker.
        async with stack.client() as http:
            workers = (await http.get(f"/api/v1/worker-queues/{queue_id}/workers")).json()
            assert [w["is_active"] for w in workers["items"]] == [True]
            assert (await http.get("/api/v1/agents")).status_code == 200
    finally:
        await stop(worker)


async def test_the_api_restarting_costs_no_model_call(
    stack: Stack, fake_llm: FakeAnthropicServer
) -> None:
    queue_id, worker = await serve_queue(stack, fake_llm)
    try:
        started = await start_streams(stack, fake_llm, queue_id)
        stack.api.send_signal(signal.SIGKILL)
        await asyncio.to_thread(stack.api.wait, 10)
        await asyncio.sleep(3)  # the outage: nothing answers on the API's port
        stack.start_api()
        await stack.wait_ready()
        await finish_and_check(stack, fake_llm, started)
    finally:
        await stop(worker)


def test_what_a_dying_connection_raises_counts_as_the_database_down() -> None:
    """Seen once in CI: a stream's read on a connection the server was closing raised asyncpg's
    InternalClientError, which ended the stream instead of degrading it."""
    dying = asyncpg.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    assert backend_down(dying) == "the database"
    assert backend_down(asyncpg.CannotConnectNowError("shutting down")) == "the database"
    assert backend_down(ValueError("a bug")) is None
