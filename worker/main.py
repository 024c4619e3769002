"""`controlplane worker --queue-id ID`: start on a queue through the control plane, poll the
queue's Temporal task queue, heartbeat, and disconnect on shutdown.

The worker needs only the control-plane URL and a worker key of its queue (read from a file or
stdin: worker/credentials.py keeps it out of reach of the tools). Temporal settings come back
from `POST /worker-queues/{id}/start`: the organization's namespace and a short-lived JWT
(`<namespace>:worker`), renewed through the heartbeat before it expires. It never holds
database credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import shutil
import signal
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.service import TLSConfig
from temporalio.worker import Worker

from activities.mcp_client import McpActivities
from activities.queue_probe import answer_probe
from activities.reporting import ControlPlane, ReportingActivities
from activities.runtime import RuntimeActivities
from activities.tool_runner import ToolActivities
from activities.tools import protect_worker_process
from activities.workspaces import sweep_forever, workspace_root
from controlplane import VERSION
from controlplane.logs import configure_logging
from worker.credentials import (
    CREDENTIALS_FD_FLAG,
    ENV_API_KEY,
    ENV_API_KEY_FILE,
    CredentialError,
    Credentials,
    hand_over_environment_credentials,
    load,
)
from worker.task_counter import TaskCounter
from workflows.registry import WORKFLOWS

log = logging.getLogger("controlplane.worker")
# SIGTERM lets in-flight activities finish for this long before they are cancelled.
DRAIN_SECONDS = 30
OUTAGE_RETRY_SECONDS = 5.0


class WorkerStartError(Exception):
    """A one-line reason the worker could not start."""


# A heartbeat carries the system info this often (reference §6: a full heartbeat every 5 min).
SYSTEM_INFO_EVERY_SECONDS = 300
STARTED = time.monotonic()


def system_info() -> dict[str, Any]:
    """What the runner is and how loaded it is (reference §6's fields, those the standard
    library can tell)."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "os_name": platform.system(),
        "os_version": platform.release(),
        "python_version": platform.python_version(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "cpu_count": os.cpu_count(),
        "sdk_version": VERSION,
        "cli_version": VERSION,
        "supported_runtimes": ["default", "claude_code"],
        "uptime_seconds": round(time.monotonic() - STARTED),
    }
    with contextlib.suppress(OSError, AttributeError):
        info["load_average"] = [round(load, 2) for load in os.getloadavg()]
    with contextlib.suppress(OSError, ValueError, AttributeError):
        page, pages = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES")
        available = os.sysconf("SC_AVPHYS_PAGES")
        info["memory_total"] = page * pages
        info["memory_used"] = page * (pages - available)
        info["memory_percent"] = round(100 * (pages - available) / pages, 1)
    with contextlib.suppress(OSError):
        disk = shutil.disk_usage(os.getcwd())
        info["disk_total"], info["disk_used"] = disk.total, disk.used
        info["disk_percent"] = round(100 * disk.used / disk.total, 1) if disk.total else 0.0
    return info


def activity_methods(instance: object) -> list[Any]:
    """The bound @activity.defn methods of an activities object."""
    return [
        getattr(instance, name)
        for name in dir(type(instance))
        if hasattr(getattr(type(instance), name), "__temporal_activity_definition")
    ]


async def register(http: httpx.AsyncClient, queue_id: str, runner_name: str) -> dict[str, Any]:
    try:
        response = await http.post(
            f"/api/v1/worker-queues/{queue_id}/start",
            json={
                "worker_sdk_version": VERSION,
                "runner_name": runner_name,
                "system_info": system_info(),
            },
        )
    except httpx.HTTPError as exc:
        raise WorkerStartError(f"control plane unreachable at {http.base_url}: {exc}") from exc
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise WorkerStartError(f"start refused ({response.status_code}): {message}")
    config: dict[str, Any] = response.json()
    return config


class TemporalToken:
    """The worker's Temporal JWT and when to ask for the next one (at half its life)."""

    def __init__(self, token: str | None, expires_at: str | None) -> None:
        self.token = token
        self.renew_at = _half_life(expires_at)

    def due(self) -> bool:
        return self.renew_at is not None and datetime.now(UTC) >= self.renew_at

    def update(self, token: str, expires_at: str | None) -> None:
        self.token = token
        self.renew_at = _half_life(expires_at)


def _half_life(expires_at: str | None) -> datetime | None:
    if not expires_at:
        return None
    expires = datetime.fromisoformat(expires_at)
    return datetime.now(UTC) + (expires - datetime.now(UTC)) / 2


async def heartbeat_forever(
    http: httpx.AsyncClient,
    worker_id: str,
    interval: float,
    tasks: TaskCounter,
    token: TemporalToken,
    client: Client,
) -> None:
    info_due = time.monotonic() + SYSTEM_INFO_EVERY_SECONDS
    while True:
        renew = token.due()
        beat: dict[str, Any] = {
            "status": tasks.status,
            "tasks_processed": tasks.finished,
            "renew_temporal_token": renew,
        }
        if time.monotonic() >= info_due:
            beat["system_info"] = system_info()
            info_due = time.monotonic() + SYSTEM_INFO_EVERY_SECONDS
        landed = False
        try:
            response = await http.post(f"/api/v1/workers/{worker_id}/heartbeat", json=beat)
            landed = response.status_code == 200
            if not landed:
                log.warning("heartbeat refused", extra={"status": response.status_code})
            elif renew and response.json().get("temporal_api_key"):
                body = response.json()
                token.update(body["temporal_api_key"], body.get("temporal_api_key_expires_at"))
                client.api_key = token.token
                log.info("Temporal token renewed")
        except httpx.HTTPError as exc:
            log.warning("heartbeat failed", extra={"error": str(exc)})
        # A heartbeat lost to an outage of the control plane is sent again soon, so a short
        # outage never makes the worker look dead; never sleep past the token's renewal time.
        wait = interval if landed else min(interval, OUTAGE_RETRY_SECONDS)
        if token.renew_at is not None:
            wait = max(1.0, min(wait, (token.renew_at - datetime.now(UTC)).total_seconds()))
        await asyncio.sleep(wait)


def temporal_tls(config: dict[str, Any]) -> TLSConfig | bool:
    if not config.get("temporal_tls"):
        return False
    ca = config.get("temporal_tls_ca")
    return TLSConfig(
        server_root_ca_cert=ca.encode() if ca else None,
        domain=config.get("temporal_tls_server_name"),
    )


async def run(
    queue_id: str,
    control_plane_url: str,
    credentials: Credentials,
    stop: asyncio.Event,
    runner_name: str | None = None,
) -> int:
    headers = {"Authorization": f"Bearer {credentials.api_key}"}
    async with httpx.AsyncClient(base_url=control_plane_url, headers=headers, timeout=15) as http:
        config = await register(http, queue_id, runner_name or socket.gethostname())
        worker_id = config["worker_id"]
        log.info("worker started", extra={"worker_id": worker_id, "queue_id": queue_id})
        control_plane = ControlPlane(control_plane_url, config["worker_token"])
        worker_http = control_plane.http
        exit_code, error = 0, None
        heartbeats: asyncio.Task[None] | None = None
        sweeper: asyncio.Task[None] | None = None
        try:
            token = TemporalToken(
                config.get("temporal_api_key"), config.get("temporal_api_key_expires_at")
            )
            client = await Client.connect(
                config["temporal_host"],
                namespace=config["temporal_namespace"],
                api_key=token.token,
                tls=temporal_tls(config),
            )
            tasks = TaskCounter()
            worker = Worker(
                client,
                interceptors=[tasks],
                task_queue=config["task_queue_name"],
                workflows=WORKFLOWS,
                activities=[
                    answer_probe,
                    *activity_methods(ReportingActivities(control_plane)),
                    *activity_methods(
                        RuntimeActivities(control_plane, credentials.anthropic_api_key)
                    ),
                    *activity_methods(ToolActivities(control_plane, workspace_root())),
                    *activity_methods(McpActivities(control_plane)),
                ],
                identity=f"{socket.gethostname()}:{os.getpid()}:{worker_id}",
                graceful_shutdown_timeout=timedelta(seconds=DRAIN_SECONDS),
                # Heartbeats carry cancellation to running activities: send them often so a
                # cancelled execution stops its model call within seconds.
                max_heartbeat_throttle_interval=timedelta(seconds=2),
            )
            heartbeats = asyncio.create_task(
                heartbeat_forever(
                    worker_http, worker_id, config["heartbeat_interval"], tasks, token, client
                )
            )
            sweeper = asyncio.create_task(sweep_forever(workspace_root()))
            async with worker:
                await stop.wait()
                log.info("draining in-flight work before stopping")
        except Exception as exc:
            exit_code, error = 1, str(exc)
            log.exception("worker failed")
        finally:
            for task in (heartbeats, sweeper):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            with contextlib.suppress(httpx.HTTPError):
                await worker_http.post(
                    f"/api/v1/workers/{worker_id}/disconnect",
                    json={
                        "reason": "shutdown" if exit_code == 0 else "error",
                        "exit_code": exit_code,
                        "error_message": error,
                    },
                )
            await worker_http.aclose()
        log.info("worker stopped", extra={"worker_id": worker_id, "exit_code": exit_code})
        return exit_code


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="controlplane worker")
    parser.add_argument("--queue-id", required=True, help="the worker queue to serve")
    parser.add_argument(
        "--runner-name",
        default=os.environ.get("CONTROLPLANE_RUNNER_NAME") or socket.gethostname(),
        help="the infrastructure this worker runs on, as /api/v1/runners lists it "
        "(env CONTROLPLANE_RUNNER_NAME; default the host name)",
    )
    parser.add_argument(
        "--control-plane-url",
        default=os.environ.get("CONTROLPLANE_URL", "http://127.0.0.1:8001"),
        help="control plane API base URL (env CONTROLPLANE_URL)",
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key-file",
        default=os.environ.get(ENV_API_KEY_FILE),
        help=f"a file holding a worker key of the queue (env {ENV_API_KEY_FILE}); "
        f"{ENV_API_KEY} works too, but the file keeps it out of reach of tools",
    )
    keys.add_argument("--api-key-stdin", action="store_true", help="read the worker key from stdin")
    parser.add_argument(CREDENTIALS_FD_FLAG, type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace, credentials: Credentials) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run(
            args.queue_id,
            args.control_plane_url.rstrip("/"),
            credentials,
            stop,
            runner_name=args.runner_name,
        )
    except WorkerStartError as exc:
        print(f"controlplane worker: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    # First of all: no credential may stay in this process's environment (see credentials.py).
    hand_over_environment_credentials(argv)
    args = parse_args(argv)
    try:
        credentials = load(
            credentials_fd=args.credentials_fd,
            api_key_file=args.api_key_file,
            api_key_stdin=args.api_key_stdin,
        )
    except CredentialError as exc:
        print(f"controlplane worker: {exc}", file=sys.stderr)
        return 1
    protect_worker_process()
    configure_logging()
    code = asyncio.run(_main(args, credentials))
    # The Temporal client's native runtime can crash at interpreter exit (sdk-python issue 300);
    # we are done, so flush and leave without running finalizers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
