"""What a task plan costs: wall time of `POST /api/v1/tasks/plan` end to end, where the time
goes, and the tokens and dollars of each model step, with a model that answers at once.

    .venv/bin/python bench/planning_latency.py [--plans N] [--agents N]

Starts in a temp dir an embedded Postgres, a headless Temporal dev server, the fake Anthropic
server (`--zero-latency`: it answers each forced tool call with input generated from the tool's
schema, and counts tokens as characters / 4), one API process and one system worker process.
Seeds an organization with an environment, a worker queue and `--agents` agents (the planning
tools read them), then plans `--plans` tasks one after another through the synchronous route.

Per plan it reports the client's wall time, and from the generation's events (their
`created_at`, stamped by Postgres) how long each stage took: the start (the route's checks and
writes, the workflow's start and first activity), the planning tools, the analysis call and the
plan call (each an activity: the prompt, the model's stream, validation), and the finish (names
to ids, costs, the lifecycle's writes) until the answer reached the client. The per-step
usage (tokens, USD at the planner model's catalogue prices) is the execution's own record.
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

STAGES = ("start", "tools", "analysis", "plan", "answer")
STAGE_NAMES = {
    "start": "  start: workflow to running",
    "tools": "  planning tools (4)",
    "analysis": "  analysis call",
    "plan": "  plan call + finish",
    "answer": "  route: checks, writes, wake",
}
TASK = "Rotate the TLS certificates of the payments API and check nothing breaks"


def _seconds(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


def stage_times(created: datetime, events: list[dict[str, Any]], wall: float) -> dict[str, float]:
    """Seconds per stage, from the event stamps (one clock, Postgres's): the execution row's
    insert, `begin`, the last `tool_result`, `plan` (the analysis call has ended), `done` (the
    plan call and the finish, which resolves ids, costs the plan and records it). What the
    client waited beyond insert-to-done is the route's own work and its wake-up."""
    first: dict[str, datetime] = {}
    tools_done: datetime | None = None
    for event in events:
        kind = event["event_type"]
        key = event["data"].get("stage") if kind == "progress" else kind
        first.setdefault(str(key), event["created_at"])
        if kind == "tool_result":
            tools_done = event["created_at"]
    begin, plan, done = first["begin"], first["plan"], first["done"]
    tools_done = tools_done or begin
    return {
        "start": _seconds(created, begin),
        "tools": _seconds(begin, tools_done),
        "analysis": _seconds(tools_done, plan),
        "plan": _seconds(plan, done),
        "answer": wall - _seconds(created, done),
    }


async def bench(stack: Stack, key: str, base_url: str, args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as http:
        env = (await http.post("/api/v1/environments", json={"name": "prod"})).json()
        await http.post(f"/api/v1/environments/{env['id']}/worker-queues", json={"name": "q"})
        for index in range(args.agents):
            await http.post(
                "/api/v1/agents",
                json={
                    "name": f"agent-{index}",
                    "description": f"Agent number {index}",
                    "model_id": "anthropic/claude-sonnet-4-5",
                    "capabilities": ["shell", "kubernetes"],
                },
            )
        deadline = time.monotonic() + 60
        while not (await http.get("/api/v1/tasks/plan/health")).json()["system_worker"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the system worker never polled its task queue")
            await asyncio.sleep(0.2)
        conn = await asyncpg.connect(stack.database_url)
        walls: list[float] = []
        stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
        steps: dict[str, list[dict[str, Any]]] = {"analysis": [], "plan": []}
        try:
            for index in range(args.warmup + args.plans):
                posted = time.monotonic()
                response = await http.post(
                    "/api/v1/tasks/plan", json={"description": f"{TASK} ({uuid.uuid4().hex})"}
                )
                answered = time.monotonic()
                if response.status_code != 200:
                    raise RuntimeError(f"plan failed: {response.status_code} {response.text}")
                if index < args.warmup:
                    continue
                execution_id = uuid.UUID(response.json()["execution_id"])
                row = await conn.fetchrow(
                    "SELECT created_at, usage FROM executions WHERE id = $1", execution_id
                )
                assert row is not None
                rows = await conn.fetch(
                    "SELECT event_type, data, created_at FROM execution_events "
                    "WHERE execution_id = $1 ORDER BY seq",
                    execution_id,
                )
                events = [{**dict(r), "data": json.loads(r["data"])} for r in rows]
                walls.append(answered - posted)
                for stage, seconds in stage_times(
                    row["created_at"], events, answered - posted
                ).items():
                    stages[stage].append(seconds)
                for step in json.loads(row["usage"])["steps"]:
                    steps[step["step"]].append(step)
        finally:
            await conn.close()
    ms = 1000.0
    print(f"\n{args.plans} plans, one at a time, {args.agents} agents in the organization\n")
    print(f"{'':<28}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    print(
        f"{'wall time (client)':<28}{percentile(walls, 0.5) * ms:>9.0f}"
        f"{percentile(walls, 0.95) * ms:>9.0f}{max(walls) * ms:>9.0f}"
    )
    for stage in STAGES:
        values = stages[stage]
        print(
            f"{STAGE_NAMES[stage]:<28}{percentile(values, 0.5) * ms:>9.0f}"
            f"{percentile(values, 0.95) * ms:>9.0f}{max(values) * ms:>9.0f}"
        )
    print(f"\n{'step':<10}{'calls':>6}{'in tokens':>11}{'out tokens':>11}{'USD':>11}")
    total = 0.0
    for name, found in steps.items():
        cost = statistics.mean(s["cost_usd"] for s in found)
        total += cost
        print(
            f"{name:<10}{statistics.mean(s['calls'] for s in found):>6.1f}"
            f"{statistics.mean(s['input_tokens'] for s in found):>11.0f}"
            f"{statistics.mean(s['output_tokens'] for s in found):>11.0f}{cost:>11.6f}"
        )
    print(f"{'per plan':<38}{total:>11.6f}  (mean; planner anthropic/claude-sonnet-4-5)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Task plan latency and per-step cost.")
    parser.add_argument("--plans", type=int, default=20, help="timed plans")
    parser.add_argument("--warmup", type=int, default=2, help="untimed plans first")
    parser.add_argument("--agents", type=int, default=5, help="agents the tools list")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    stack = Stack(keep=args.keep)
    try:
        print(
            f"starting Postgres, Temporal, the fake model, the API, a system worker in {stack.work}"
        )
        sys.stdout.flush()
        stack.start_services()
        key = asyncio.run(seed(stack.database_url))
        fake_port = free_port()
        command = [sys.executable, "-m", "controlplane.devtools.fake_anthropic", "--zero-latency"]
        fake = stack.spawn([*command, "--port", str(fake_port)], "fake.log")
        wait_for_port(fake_port, timeout=30, process=fake)
        port = free_port()
        api = stack.start_api(port, [])
        asyncio.run(wait_ready(f"http://127.0.0.1:{port}", api, 60))
        worker_env = os.environ | {
            "DATABASE_URL": stack.database_url,
            "TEMPORAL_ADDRESS": stack.temporal_address,
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{fake_port}",
            "ANTHROPIC_API_KEY": "bench",
        }
        system = [sys.executable, "-m", "controlplane.cli", "system-worker"]
        stack.spawn(system, "system-worker.log", worker_env)
        return asyncio.run(bench(stack, key, f"http://127.0.0.1:{port}", args))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
        for name in ("api.log", "system-worker.log"):
            print(f"--- {name}\n{stack.log_tail(name)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        stack.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    code = main()
    # The Temporal client's native runtime can crash at interpreter exit (sdk-python issue 300).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
