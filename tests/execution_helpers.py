"""Shared pieces of the execution tests: the fake model server, a queue served by a real
worker process, agents, and readers of the execution status and SSE stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from controlplane.devtools.fake_anthropic import FakeAnthropicServer
from tests.conftest import Tenant, temporal_for, worker_key_for


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeAnthropicServer]:
    server = FakeAnthropicServer().start()
    yield server
    server.stop()


@pytest.fixture
async def running_queue(
    tenant: Tenant, live_api: str, fake_llm: FakeAnthropicServer
) -> AsyncIterator[dict[str, Any]]:
    """A queue of the tenant with one real worker process serving it; `worker_key` starts
    another on the same queue."""
    queue = await make_queue(tenant, "prod")
    queue["worker_key"] = await worker_key_for(tenant, queue["id"])
    process = start_worker_process(queue["id"], queue["worker_key"], live_api, fake_llm)
    queue["process"] = process
    # Tests time their own steps, not a worker's start (slow on a busy machine): they begin
    # once it serves the queue.
    await wait_registered(tenant, queue["id"], process)
    yield queue
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)


async def wait_registered(
    tenant: Tenant, queue_id: str, process: subprocess.Popen[bytes], timeout: float = 120
) -> None:
    """Until a worker has registered on the queue (and the worker process is alive)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        workers = (await tenant.viewer.get(f"/api/v1/worker-queues/{queue_id}/workers")).json()
        if workers["total"] >= 1:
            return
        assert process.poll() is None, f"the worker exited with code {process.returncode}"
        assert asyncio.get_running_loop().time() < deadline, "the worker did not register"
        await asyncio.sleep(0.2)


async def make_queue(tenant: Tenant, environment: str) -> dict[str, Any]:
    """A new environment with one worker queue `q` in it (no worker serves it)."""
    env = await tenant.member.post("/api/v1/environments", json={"name": environment})
    assert env.status_code == 201, env.text
    queue = await tenant.member.post(
        f"/api/v1/environments/{env.json()['id']}/worker-queues", json={"name": "q"}
    )
    assert queue.status_code == 201, queue.text
    body: dict[str, Any] = queue.json()
    return body


def start_worker_process(
    queue_id: str,
    worker_key: str,
    live_api: str,
    fake_llm: FakeAnthropicServer,
    anthropic_api_key: str | None = "test-key",
    extra_args: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """`python -m worker` on a queue, as an operator runs it: no database credentials, its
    worker key in a file (mode 0600), the model key in its environment (which it scrubs)."""
    fd, key_file = tempfile.mkstemp(prefix="worker-key-")
    with os.fdopen(fd, "w") as handle:
        handle.write(worker_key)
    env = {
        **os.environ,
        "CONTROLPLANE_URL": live_api,
        "ANTHROPIC_BASE_URL": fake_llm.base_url,
    }
    for name in ("DATABASE_URL", "ANTHROPIC_API_KEY", "CONTROLPLANE_API_KEY"):
        env.pop(name, None)
    if anthropic_api_key is not None:
        env["ANTHROPIC_API_KEY"] = anthropic_api_key
    return subprocess.Popen(
        [
            sys.executable,
            *("-m", "worker", "--queue-id", queue_id, "--api-key-file", key_file),
            *extra_args,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def execute(tenant: Tenant, agent_id: str, queue_id: str, prompt: str = "Hi") -> str:
    response = await tenant.member.post(
        f"/api/v1/agents/{agent_id}/execute", json={"prompt": prompt, "worker_queue_id": queue_id}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["execution_id"])


async def make_agent(tenant: Tenant, token: str, **configuration: Any) -> str:
    response = await tenant.member.post(
        "/api/v1/agents",
        json={
            "name": f"agent-{uuid.uuid4().hex[:6]}",
            "model_id": "anthropic/claude-sonnet-4-5",
            "system_prompt": f"You help. [{token}]",
            "configuration": configuration,
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def wait_status(
    tenant: Tenant, execution_id: str, *wanted: str, timeout: float = 30
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body: dict[str, Any] = (
            await tenant.viewer.get(f"/api/v1/executions/{execution_id}")
        ).json()
        if body["status"] in wanted:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"status {body['status']}, wanted {wanted}")
        await asyncio.sleep(0.1)


async def wait_answer(tenant: Tenant, execution_id: str, text: str) -> dict[str, Any]:
    """Wait until the execution waits for input again with `text` as its latest answer."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        body = await wait_status(tenant, execution_id, "waiting_for_input")
        if body["response"] == text:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"latest answer {body['response']!r}, wanted {text!r}")
        await asyncio.sleep(0.05)


async def read_stream(
    client: httpx.AsyncClient, execution_id: str, **headers: str
) -> list[tuple[int | None, str, dict[str, Any]]]:
    events: list[tuple[int | None, str, dict[str, Any]]] = []
    async with client.stream(
        "GET", f"/api/v1/executions/{execution_id}/stream", headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        event_id, event_type = None, ""
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("event: "):
                event_type = line[7:]
            elif line.startswith("data: "):
                events.append((event_id, event_type, json.loads(line[6:])))
                event_id = None
    return events


HISTORIES = Path(__file__).parent / "histories"


async def record_history(
    tenant: Tenant, temporal_address: str, execution_id: str, name: str, kind: str = "agent"
) -> None:
    """With RECORD_HISTORIES=1, keep this execution's workflow history for the replay tests
    (tests/test_replay.py), so a later change that breaks determinism fails CI."""
    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    client = await temporal_for(temporal_address, tenant)
    workflow_id = f"{kind}-execution-{execution_id}"
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())


async def started_workflow(
    tenant: Tenant, temporal_address: str, execution_id: str, timeout: float = 20
) -> WorkflowHandle[Any, Any]:
    """The handle of the execution's agent workflow, once it exists: an execute answers before
    its workflow starts (controlplane/executions/starting.py)."""
    client = await temporal_for(temporal_address, tenant)
    handle = client.get_workflow_handle(f"agent-execution-{execution_id}")
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await handle.describe()
            return handle
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no workflow for execution {execution_id}") from None
        await asyncio.sleep(0.02)


async def events_of(db: Any, execution_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT seq, event_type, data, event_key FROM execution_events "
        "WHERE execution_id = $1 ORDER BY seq",
        uuid.UUID(execution_id),
    )
    return [dict(row) for row in rows]
