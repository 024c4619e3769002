"""What the policy check before every tool call costs.

    .venv/bin/python bench/policy_overhead.py [--calls N]

Starts in a temp dir an embedded Postgres, a headless Temporal dev server and one API process,
then creates two agents with a `sleep` skill: one with no policy and one with five Rego policies
attached (all allowing, so every call runs the whole way). For each, from this process, it runs
the real `run_tool` activity (`ToolActivities.run_tool` in an `ActivityEnvironment`, talking to
the API over HTTP with a worker token, exactly as a worker does) for a `sleep 0` call N times,
timing the whole call and, inside it, the enforcement request (`POST /policies/enforce`).

Printed: per agent, p50/p99 of the tool call and of its enforcement step, the ratio of the call
with enforcement to the call without it (the same call minus its enforcement step), and the
in-process engine's cost per policy evaluation. Ratios, because the machine is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _stack import Stack, interrupt, percentile, seed, wait_ready
from temporalio.testing import ActivityEnvironment

from activities.reporting import ControlPlane
from activities.tool_runner import ToolActivities
from controlplane.policy_engine import PolicySource, RegorusEngine
from controlplane.services import free_port
from controlplane.vault import new_key
from workflows.contracts import PolicyContext, ToolCall, ToolSpec

ALLOW_POLICY = """package bench.p{n}
import rego.v1

default allow := false

allow if input.action in {{"tool_execution", "agent_execution"}}

violations contains msg if {{
    input.tool.risk_level == "critical"
    msg := "no critical tools"
}}
"""


class TimedToolActivities(ToolActivities):
    """The real activity, with the time of its enforcement request recorded."""

    def __init__(self, control_plane: ControlPlane, workspace_root: Path) -> None:
        super().__init__(control_plane, workspace_root)
        self.enforce_seconds: list[float] = []

    async def _enforce(self, call: ToolCall, arguments: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return await super()._enforce(call, arguments)
        finally:
            self.enforce_seconds.append(time.perf_counter() - started)


async def make_agent(api: httpx.AsyncClient, name: str, policies: int) -> str:
    skill = await api.post(
        "/api/v1/skills", json={"name": f"sleep-{name}", "type": "sleep", "configuration": {}}
    )
    skill.raise_for_status()
    agent = await api.post(
        "/api/v1/agents",
        json={
            "name": name,
            "model_id": "anthropic/claude-sonnet-4-5",
            "skill_ids": [skill.json()["id"]],
        },
    )
    agent.raise_for_status()
    agent_id = str(agent.json()["id"])
    for n in range(policies):
        policy = await api.post(
            "/api/v1/policies",
            json={"name": f"{name}-{n}", "policy_content": ALLOW_POLICY.format(n=n)},
        )
        policy.raise_for_status()
        association = await api.post(
            "/api/v1/policies/associations",
            json={"policy_id": policy.json()["id"], "entity_type": "agent", "entity_id": agent_id},
        )
        association.raise_for_status()
    return agent_id


async def measure(
    base_url: str, token: str, execution_id: str, agent_id: str, calls: int
) -> tuple[list[float], list[float]]:
    control_plane = ControlPlane(base_url, token)
    activities = TimedToolActivities(control_plane, Path(tempfile.mkdtemp(prefix="bench-ws-")))
    spec = ToolSpec(
        name="sleep",
        description="sleep",
        input_schema={"type": "object"},
        category="sleep",
        risk_level="low",
        configuration={"max_seconds": 1},
    )
    policy = PolicyContext(organization_id="bench", execution_id=execution_id, agent_id=agent_id)
    totals: list[float] = []
    environment = ActivityEnvironment()
    try:
        for i in range(calls + 20):  # the first 20 warm up
            call = ToolCall(execution_id, 1, f"toolu_{i}", spec, {"seconds": 0}, policy)
            started = time.perf_counter()
            outcome = await environment.run(activities.run_tool, call)
            elapsed = time.perf_counter() - started
            if outcome.status != "success":
                raise RuntimeError(f"tool call failed: {outcome.output}")
            if i >= 20:
                totals.append(elapsed)
    finally:
        await control_plane.aclose()
    return totals, activities.enforce_seconds[20:]


async def engine_microseconds(evaluations: int) -> float:
    engine = RegorusEngine()
    policy = PolicySource(id="p", version=1, content=ALLOW_POLICY.format(n=0))
    tool_input = {"action": "tool_execution", "tool": {"name": "sleep", "risk_level": "low"}}
    await engine.evaluate([policy], tool_input)  # compile once
    started = time.perf_counter()
    for _ in range(evaluations):
        await engine.evaluate([policy], tool_input)
    return (time.perf_counter() - started) / evaluations * 1e6


async def bench(stack: Stack, calls: int) -> None:
    key = await seed(stack.database_url)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    api_process = stack.start_api(port, [], env={"CONTROLPLANE_SECRET_KEY": new_key()})
    await wait_ready(base_url, api_process, timeout=60)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as api:
        env = await api.post("/api/v1/environments", json={"name": "bench"})
        env.raise_for_status()
        queue = await api.post(
            f"/api/v1/environments/{env.json()['id']}/worker-queues", json={"name": "q"}
        )
        queue.raise_for_status()
        queue_id = queue.json()["id"]
        # No worker polls this queue: the executions exist only to scope the tool calls.
        worker = await api.post(f"/api/v1/worker-queues/{queue_id}/start", json={})
        worker.raise_for_status()
        token = worker.json()["worker_token"]
        rows = []
        for name, policies in (("no-policy", 0), ("five-policies", 5)):
            agent_id = await make_agent(api, name, policies)
            execution = await api.post(
                f"/api/v1/agents/{agent_id}/execute",
                json={"prompt": "bench", "worker_queue_id": queue_id},
            )
            execution.raise_for_status()
            totals, enforce = await measure(
                base_url, token, execution.json()["execution_id"], agent_id, calls
            )
            without = [t - e for t, e in zip(totals, enforce, strict=True)]
            rows.append((name, totals, enforce, without))
    micro = await engine_microseconds(20_000)

    print(f"\n{calls} `sleep 0` tool calls per agent through run_tool (ms)")
    print(
        f"{'agent':<15}{'call p50':>10}{'call p99':>10}{'check p50':>11}{'check p99':>11}"
        f"{'with/without':>14}"
    )
    for name, totals, enforce, without in rows:
        ratio = percentile(totals, 0.5) / percentile(without, 0.5)
        call = (percentile(totals, 0.5) * 1e3, percentile(totals, 0.99) * 1e3)
        check = (percentile(enforce, 0.5) * 1e3, percentile(enforce, 0.99) * 1e3)
        print(
            f"{name:<15}{call[0]:>10.2f}{call[1]:>10.2f}{check[0]:>11.2f}{check[1]:>11.2f}"
            f"{ratio:>13.2f}x"
        )
    five, none = rows[1][2], rows[0][2]
    print(
        f"\nenforcement step, five policies / none (p50): "
        f"{percentile(five, 0.5) / percentile(none, 0.5):.2f}x"
    )
    print(f"in-process engine: {micro:.1f} µs per policy evaluation (regorus, 20,000 runs)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300, help="tool calls per agent")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    stack = Stack()
    code = 0
    try:
        print(f"starting Postgres, Temporal and the API in {stack.work} ...", file=sys.stderr)
        stack.start_services()
        asyncio.run(bench(stack, args.calls))
    except KeyboardInterrupt:
        code = 130
    except Exception as error:
        print(f"bench failed: {error}\n{stack.log_tail('api.log')}", file=sys.stderr)
        code = 1
    finally:
        stack.stop()
    sys.stdout.flush()
    sys.stderr.flush()
    # A process that made Temporal clients can crash at interpreter exit (sdk-python #300).
    os._exit(code)


if __name__ == "__main__":
    main()
