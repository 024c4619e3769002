"""A system worker process for the tests that plan: it runs PlanGenerationWorkflow on a task
queue, calling the fake Anthropic server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from temporalio.client import Client

from controlplane.devtools.fake_anthropic import FakeAnthropicServer
from controlplane.planning.generation import system_worker_polling
from controlplane.settings import Settings


def start_system_worker(
    settings: Settings, task_queue: str, fake: FakeAnthropicServer, model_key: str | None
) -> subprocess.Popen[bytes]:
    """`controlplane system-worker` on `task_queue`, with the model key (None: without one)."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "CONTROLPLANE_SECRET_KEY": settings.secret_key,
        "SYSTEM_TASK_QUEUE": task_queue,
        "ANTHROPIC_BASE_URL": fake.base_url,
    }
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY_FILE", None)
    if model_key is not None:
        env["ANTHROPIC_API_KEY"] = model_key
    return subprocess.Popen(
        [sys.executable, "-m", "controlplane.cli", "system-worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def wait_polled(temporal: Client, task_queue: str, process: subprocess.Popen[bytes]) -> None:
    """Until the system worker polls its task queue (what the planning routes check)."""
    for _ in range(600):
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        if await system_worker_polling(temporal, task_queue):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the system worker never polled its task queue")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
