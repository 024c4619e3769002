"""What executing a plan costs: wall time of a diamond of four tasks (A; then B and C at once;
then D) from `POST /api/v1/tasks/plan/execute` to the end of its stream, where each task's time
goes, and each task's tokens and dollars, with a model that answers at once.

    PYTHONPATH=. .venv/bin/python bench/plan_execution.py [--plans N] [--chunk-delay-ms MS]

Starts in a temp dir an embedded Postgres, a headless Temporal dev server, the fake Anthropic
server (`--zero-latency`, or `--chunk-delay-ms` per streamed chunk), one API process, one system
worker process (it runs PlanOrchestratorWorkflow) and one worker process on a queue (it runs the
tasks, one-shot agent executions). Each round runs one agent execution alone (the baseline: what
one task's execution costs without a plan around it), then one plan.

The plan's critical path is three executions (A, B or C, D). Per task, from Postgres's stamps:
`start` is the run marking the task running to its execution's row (the start activity: the
checks and policies of any execution, the child's workflow started); `execution` its execution's
row to its `completed`; `await` its execution's `completed` to the run recording the task
completed (woken by the NOTIFY, then the record activity). The per-task cost is the run's
`usage.steps` (tokens from the fake, a token per 4 characters; USD at the agent model's
catalogue prices).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx
from _stack import Stack, interrupt, percentile, seed, wait_ready

from controlplane.services import free_port, wait_for_port

MODEL = "anthropic/claude-sonnet-4-5"
TASKS = [(1, "Collect the facts", []), (2, "Left", [1]), (3, "Right", [1]), (4, "Join", [2, 3])]


def diamond() -> dict[str, Any]:
    return {
        "title": "Diamond",
        "summary": "A; then B and C at once; then D",
        "team_breakdown": [
            {
                "team_name": "Bench",
                "tasks": [
                    {
                        "id": i,
                        "title": t,
                        "description": f"{t} ({uuid.uuid4().hex[:6]})",
                        "dependencies": d,
                    }
                    for i, t, d in TASKS
                ],
            }
        ],
    }


async def to_end(client: httpx.AsyncClient, stream: str) -> str:
    """The stream's last event: done or error."""
    async with client.stream("GET", stream) as response:
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("done", "error"):
                return event
    raise RuntimeError(f"{stream}: the stream ended without done or error")


async def created(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(url, json=body)
    if response.status_code not in (200, 201):
        raise RuntimeError(f"POST {url}: {response.status_code} {response.text[:300]}")
    result: dict[str, Any] = response.json()
    return result


def _ms(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() * 1000


async def task_times(conn: asyncpg.Connection[Any], run_id: uuid.UUID) -> list[dict[str, float]]:
    """Per task: start, execution and await, in ms, from the rows' and events' stamps."""
    events = await conn.fetch(
        "SELECT data, created_at FROM execution_events WHERE execution_id = $1 "
        "AND event_type = 'task_status' ORDER BY seq",
        run_id,
    )
    marked: dict[str, datetime] = {}
    recorded: dict[str, datetime] = {}
    for event in events:
        data = json.loads(event["data"])
        key = str(data["task_id"])
        if data["status"] == "running":
            marked.setdefault(key, event["created_at"])
        elif data["status"] == "completed":
            recorded.setdefault(key, event["created_at"])
    children = await conn.fetch(
        "SELECT delegation_key, created_at, completed_at FROM executions "
        "WHERE parent_execution_id = $1",
        run_id,
    )
    times = []
    for child in children:
        key = child["delegation_key"]
        times.append(
            {
                "start": _ms(marked.get(key, child["created_at"]), child["created_at"]),
                "execution": _ms(child["created_at"], child["completed_at"]),
                "await": _ms(child["completed_at"], recorded[key]),
            }
        )
    return times


async def bench(stack: Stack, key: str, api: Any, base_url: str, args: argparse.Namespace) -> int:
    await wait_ready(base_url, api, timeout=60)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as client:
        environment = await created(client, "/api/v1/environments", {"name": "bench"})
        queue = await created(
            client, f"/api/v1/environments/{environment['id']}/worker-queues", {"name": "q"}
        )
        agent = await created(
            client,
            "/api/v1/agents",
            {"name": "tasker", "model_id": MODEL, "configuration": {"one_shot": True}},
        )
        worker_key = await created(
            client,
            "/api/v1/api-keys",
            {"name": "bench worker", "role": "worker", "worker_queue_id": queue["id"]},
        )
        worker_env = os.environ | {
            "CONTROLPLANE_URL": base_url,
            "CONTROLPLANE_API_KEY": worker_key["key"],
            "ANTHROPIC_BASE_URL": args.fake_url,
            "ANTHROPIC_API_KEY": "bench-key",
        }
        worker_env.pop("DATABASE_URL", None)
        worker = stack.spawn(
            [sys.executable, "-m", "worker", "--queue-id", queue["id"]], "worker.log", worker_env
        )
        deadline = time.monotonic() + 60
        while not (await client.get(f"/api/v1/worker-queues/{queue['id']}/workers")).json()[
            "total"
        ]:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{stack.log_tail('worker.log')}")
            await asyncio.sleep(0.2)

        async def one_execution() -> float:
            sent = time.perf_counter()
            started = await created(
                client,
                f"/api/v1/agents/{agent['id']}/execute",
                {"prompt": "Collect the facts", "worker_queue_id": queue["id"]},
            )
            if (
                await to_end(client, f"/api/v1/executions/{started['execution_id']}/stream")
                != "done"
            ):
                raise RuntimeError("the baseline execution failed")
            return time.perf_counter() - sent

        async def one_plan() -> tuple[float, uuid.UUID]:
            sent = time.perf_counter()
            started = await created(
                client,
                "/api/v1/tasks/plan/execute",
                {"plan": diamond(), "worker_queue_id": queue["id"], "agent_id": agent["id"]},
            )
            if await to_end(client, started["stream_url"]) != "done":
                raise RuntimeError(f"plan {started['execution_id']} did not complete")
            return time.perf_counter() - sent, uuid.UUID(started["execution_id"])

        await one_execution()  # warm-up
        await one_plan()
        alone, plans = [], []
        stages: dict[str, list[float]] = {"start": [], "execution": [], "await": []}
        costs: list[dict[str, Any]] = []
        conn = await asyncpg.connect(stack.database_url)
        try:
            for _ in range(args.plans):
                alone.append(await one_execution())
                wall, run_id = await one_plan()
                plans.append(wall)
                for times in await task_times(conn, run_id):
                    for stage, value in times.items():
                        stages[stage].append(value)
                usage = json.loads(
                    await conn.fetchval("SELECT usage FROM executions WHERE id = $1", run_id)
                )
                costs.extend(usage["steps"].values())
        finally:
            await conn.close()
    ms = 1000.0
    model = f"{args.chunk_delay_ms} ms per chunk" if args.chunk_delay_ms else "zero-latency"
    print(f"\n{args.plans} diamond plans (4 tasks, 3 on the critical path), {model} model\n")
    print(f"{'':<34}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for name, values in (("one agent execution alone", alone), ("plan, execute to done", plans)):
        print(
            f"{name:<34}{percentile(values, 0.5) * ms:>9.0f}"
            f"{percentile(values, 0.95) * ms:>9.0f}{max(values) * ms:>9.0f}"
        )
    overhead = (percentile(plans, 0.5) - 3 * percentile(alone, 0.5)) / 3 * ms
    ratio = percentile(plans, 0.5) / (3 * percentile(alone, 0.5))
    print(f"{'plan / 3 executions alone':<34}{ratio:>8.2f}x")
    print(f"{'orchestration per critical step':<34}{overhead:>9.0f}")
    print("\nper task")
    for stage, label in (
        ("start", "  start: marked running to its row"),
        ("execution", "  its execution, row to completed"),
        ("await", "  await: completed to recorded"),
    ):
        values = stages[stage]
        print(
            f"{label:<34}{percentile(values, 0.5):>9.0f}"
            f"{percentile(values, 0.95):>9.0f}{max(values):>9.0f}"
        )
    print(f"\n{'per task (mean)':<20}{'in tokens':>11}{'out tokens':>11}{'USD':>11}")
    print(
        f"{'':<20}{statistics.mean(c['input_tokens'] for c in costs):>11.0f}"
        f"{statistics.mean(c['output_tokens'] for c in costs):>11.0f}"
        f"{statistics.mean(c['cost_usd'] for c in costs):>11.6f}"
    )
    per_plan = statistics.mean(c["cost_usd"] for c in costs) * len(TASKS)
    print(f"{'per plan (4 tasks)':<42}{per_plan:>11.6f}  (agent model {MODEL})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=int, default=20, help="timed plans")
    parser.add_argument("--chunk-delay-ms", type=int, default=0, help="model latency per chunk")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    stack = Stack(keep=args.keep)
    try:
        print(
            f"starting Postgres, Temporal, the fake model, the API and two workers in {stack.work}"
        )
        sys.stdout.flush()
        stack.start_services()
        key = asyncio.run(seed(stack.database_url))
        fake_port = free_port()
        command = [sys.executable, "-m", "controlplane.devtools.fake_anthropic"]
        if args.chunk_delay_ms:
            command += ["--chunk-delay-ms", str(args.chunk_delay_ms)]
        else:
            command += ["--zero-latency"]
        fake = stack.spawn([*command, "--port", str(fake_port)], "fake.log")
        wait_for_port(fake_port, timeout=30, process=fake)
        args.fake_url = f"http://127.0.0.1:{fake_port}"
        port = free_port()
        api = stack.start_api(port, [])
        system_env = os.environ | {
            "DATABASE_URL": stack.database_url,
            "TEMPORAL_ADDRESS": stack.temporal_address,
            "CONTROLPLANE_HOME": str(stack.work / "home"),
        }
        system = [sys.executable, "-m", "controlplane.cli", "system-worker"]
        stack.spawn(system, "system-worker.log", system_env)
        return asyncio.run(bench(stack, key, api, f"http://127.0.0.1:{port}", args))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
        for name in ("api.log", "system-worker.log", "worker.log"):
            print(f"--- {name}\n{stack.log_tail(name)}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
