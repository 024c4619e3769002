"""Schema-driven fuzzing of every route: schemathesis reads the OpenAPI document a live API
serves, sends every operation boundary and invalid values for each parameter and body field
(its coverage phase) and then random valid and invalid requests (fuzzing, seeded), and checks
that no answer is a 5xx, that every status is documented and that every body (the error
envelope included) matches its documented schema. It runs as a fresh organization's admin
over every operation, and as a worker (its worker token) over the worker protocol, which no
key may speak.

The suite's pass is cheap and deterministic: FUZZ_EXAMPLES random requests per operation and
mode (default 3), seed FUZZ_SEED (default 1). A longer fuzz, e.g. before a release (100
examples take some 20 minutes on two cores):

    FUZZ_EXAMPLES=100 FUZZ_SEED=$RANDOM .venv/bin/pytest tests/test_fuzz.py

Failures come with a curl command that reproduces each; a 500 in the API's log has its
traceback under the same request id.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from api.app import all_endpoints
from api.openapi import operation_id
from api.routes import planning as planning_routes
from controlplane.devtools.fake_anthropic import FakeAnthropicServer
from controlplane.settings import Settings
from controlplane.temporal import TemporalGateway
from tests.conftest import client_for, make_tenant, worker_key_for
from tests.planning_helpers import start_system_worker, stop, wait_polled
from tests.resource_helpers import create_environment, create_queue

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


# The planning routes that answer only once a plan is made (seconds each, under load).
WAIT_FOR_A_PLAN = (
    planning_routes.plan_task,
    planning_routes.plan_task_for_client,
    planning_routes.plan_task_stream,
    planning_routes.plan_task_stream_for_client,
)


@dataclass
class Credentials:
    admin_key: str
    worker_token: str


@pytest.fixture
async def credentials(app: Starlette, db: Any) -> Credentials:
    # Rate limited only in name: a long fuzz sends thousands of requests a minute.
    tenant = await make_tenant(app, db, rate_limit=1_000_000_000)
    environment = await create_environment(tenant.admin, "fuzz")
    queue = await create_queue(tenant.admin, environment["id"], "fuzz")
    starter = client_for(app, await worker_key_for(tenant, queue["id"]))
    started = await starter.post(f"/api/v1/worker-queues/{queue['id']}/start", json={})
    assert started.status_code == 200, started.text
    return Credentials(tenant.keys["admin"], started.json()["worker_token"])


@pytest.fixture
async def planner(settings: Settings, fake_llm: FakeAnthropicServer) -> AsyncIterator[None]:
    """A system worker on the live API's system task queue, planning with the fake model: the
    planning routes plan (and do not answer 503 for want of one)."""
    process = start_system_worker(settings, settings.system_task_queue, fake_llm, "fuzz-key")
    try:
        temporal = await TemporalGateway(settings).system_client()
        await wait_polled(temporal, settings.system_task_queue, process)
        yield
    finally:
        await asyncio.to_thread(stop, process)


@dataclass
class Fuzz:
    process: subprocess.Popen[bytes]
    report: Path
    operations: int

    def check(self) -> None:
        code = self.process.wait(timeout=3600)
        report = self.report.read_text()
        failures = report.partition("= FAILURES =")[2].partition("= WARNINGS =")[0]
        assert code == 0, f"{self.report}:\n{failures or report[-10_000:]}"
        assert f"Tested: {self.operations}" in report, f"{self.report}:\n{report[-3_000:]}"


def start_fuzz(
    live_api: str,
    credential: str,
    workdir: Path,
    only: list[str],
    phases: str = "examples,coverage,fuzzing",
) -> Fuzz:
    """schemathesis over the operations named in `only`, started in the background."""
    workdir.mkdir()
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{live_api}/api/openapi.json",
        f"--header=Authorization: Bearer {credential}",
        f"--max-examples={os.environ.get('FUZZ_EXAMPLES', '3')}",
        f"--seed={os.environ.get('FUZZ_SEED', '1')}",
        f"--checks={','.join(CHECKS)}",
        "--generation-database=none",
        f"--phases={phases}",
        # Its threads share state that schemathesis 4.32 does not guard: one worker per run,
        # several runs in parallel instead.
        "--workers=1",
        "--no-color",
        *(f"--include-operation-id={name}" for name in only),
    ]
    report = workdir / "schemathesis.txt"
    with report.open("w") as output:
        # In workdir: the CLI keeps a cache in .schemathesis/ under its working directory.
        process = subprocess.Popen(command, cwd=workdir, stdout=output, stderr=subprocess.STDOUT)
    return Fuzz(process, report, len(only))


def test_no_route_answers_5xx_or_off_schema(
    live_api: str, credentials: Credentials, planner: None, tmp_path: Path
) -> None:
    planning = sorted(operation_id(ep) for ep in all_endpoints() if ep.handler in WAIT_FOR_A_PLAN)
    everything = sorted(
        operation_id(ep) for ep in all_endpoints() if ep.handler not in WAIT_FOR_A_PLAN
    )
    protocol = [operation_id(ep) for ep in all_endpoints() if ep.role == "worker_token"]
    # Two halves and the worker protocol at once: each run keeps about one core busy.
    runs = [
        start_fuzz(live_api, credentials.admin_key, tmp_path / "admin-1", everything[0::2]),
        start_fuzz(live_api, credentials.admin_key, tmp_path / "admin-2", everything[1::2]),
        start_fuzz(live_api, credentials.worker_token, tmp_path / "worker", protocol),
        # Each valid request to these waits for a whole plan; their body is the one
        # /plans/generate takes, which gets the coverage phase above.
        start_fuzz(
            live_api, credentials.admin_key, tmp_path / "planning", planning, "examples,fuzzing"
        ),
    ]
    try:
        for run in runs:
            run.check()
    finally:
        for run in runs:
            run.process.kill()
