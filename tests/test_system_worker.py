"""The system worker as a real process: it creates the housekeeping Schedule, its rounds settle
executions whose workflow ended behind the control plane's back, and a round it dies in is
finished by the next system worker. Plus the replay of recorded HousekeepingWorkflow histories."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.worker import Replayer

from controlplane.settings import Settings
from controlplane.system.worker import HOUSEKEEPING_SCHEDULE, system_workflows
from tests.conftest import Tenant
from tests.execution_helpers import execute, make_agent, make_queue, started_workflow
from workflows.contracts import HOUSEKEEPING_WORKFLOW

HISTORIES = Path(__file__).parent / "histories" / "system"


def system_worker(settings: Settings, task_queue: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "CONTROLPLANE_SECRET_KEY": settings.secret_key,
        "SYSTEM_TASK_QUEUE": task_queue,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "controlplane.cli", "system-worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def task_queue() -> str:
    # A queue of its own per test: a system worker of another test never takes its rounds.
    return f"system-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def started(settings: Settings, task_queue: str) -> Iterator[subprocess.Popen[bytes]]:
    process = system_worker(settings, task_queue)
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


async def round_result(client: Client, workflow_id: str, timeout: float = 60) -> Any:
    return await asyncio.wait_for(client.get_workflow_handle(workflow_id).result(), timeout)


async def wait_for_schedule(client: Client, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            await client.get_schedule_handle(HOUSEKEEPING_SCHEDULE).describe()
            return
        except Exception:
            await asyncio.sleep(0.1)
    raise AssertionError("the housekeeping schedule never appeared")


async def test_a_round_settles_executions_whose_workflow_ended_outside(
    settings: Settings,
    tenant: Tenant,
    temporal_address: str,
    db: Any,
    task_queue: str,
    started: subprocess.Popen[bytes],
) -> None:
    system = await Client.connect(temporal_address, namespace=settings.temporal_namespace)
    await wait_for_schedule(system, started)
    described = await system.get_schedule_handle(HOUSEKEEPING_SCHEDULE).describe()
    assert described.schedule.action.workflow == HOUSEKEEPING_WORKFLOW  # type: ignore[attr-defined]

    queue = await make_queue(tenant, "sys")  # no worker: the execution stays pending
    execution_id = await execute(tenant, await make_agent(tenant, "sys"), queue["id"])
    handle = await started_workflow(tenant, temporal_address, execution_id)
    await handle.terminate("by hand")
    await db.execute(
        "UPDATE executions SET updated_at = now() - interval '1 hour' WHERE id = $1",
        uuid.UUID(execution_id),
    )
    # One round, as the Schedule starts it, on this test's system worker.
    round_id = f"housekeeping-test-{uuid.uuid4().hex[:6]}"
    await system.start_workflow(HOUSEKEEPING_WORKFLOW, id=round_id, task_queue=task_queue)
    result = await round_result(system, round_id)
    assert result["settled"] >= 1
    body = (await tenant.viewer.get(f"/api/v1/executions/{execution_id}")).json()
    assert body["status"] == "failed"
    assert "terminated outside the control plane" in body["error_message"]
    await record(system, round_id, "housekeeping_round")


async def test_a_round_the_system_worker_died_in_is_finished_by_the_next(
    settings: Settings, temporal_address: str, task_queue: str
) -> None:
    system = await Client.connect(temporal_address, namespace=settings.temporal_namespace)
    round_id = f"housekeeping-test-{uuid.uuid4().hex[:6]}"
    # The round is waiting for a system worker when the first one is killed ...
    first = system_worker(settings, task_queue)
    await wait_for_schedule(system, first)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    await system.start_workflow(HOUSEKEEPING_WORKFLOW, id=round_id, task_queue=task_queue)
    # ... and the next system worker takes it from where it is.
    second = system_worker(settings, task_queue)
    try:
        result = await round_result(system, round_id)
        assert result["pruned"] >= 0 and result["settled"] >= 0
        described = await system.get_workflow_handle(round_id).describe()
        assert described.status == WorkflowExecutionStatus.COMPLETED
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)


async def record(client: Client, workflow_id: str, name: str) -> None:
    """With RECORD_HISTORIES=1, keep the history for the replay test below."""
    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    HISTORIES.mkdir(parents=True, exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())


@pytest.mark.parametrize(
    "path", sorted(HISTORIES.glob("*.json")), ids=lambda path: str(Path(path).stem)
)
async def test_recorded_system_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=system_workflows()).replay_workflow(history)
    assert result.replay_failure is None


def test_system_histories_were_recorded() -> None:
    assert {path.stem for path in HISTORIES.glob("*.json")} >= {"housekeeping_round"}
