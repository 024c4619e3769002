"""How many database round trips starting an execution takes: `POST /agents/{id}/execute` as a
whole (authentication included), and `start_execution` alone for an agent, for a team and for a
team member's run (`record_member_execution`), each printed with its statements in order; and,
beside them, the check a worker makes before every tool call (`check_tool_call`).

    .venv/bin/python bench/execute_round_trips.py [--quiet]

Starts in a temp dir an embedded Postgres and a headless Temporal dev server, runs the API app in
this process (so its pool can be watched) and seeds one organization with what a run inherits: a
project, an environment with a worker queue, an environment skill and a policy, context on the
organization and on the agent, an agent on a team of two. Each connection of the pool gets an
asyncpg query logger; every statement sent is one round trip (BEGIN, COMMIT and the pool's
reset on release included), counted only while the measured call runs. Each call is made a few
times untimed first so every statement is prepared on every connection: a first use costs one
more round trip (parse/describe) that later calls do not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from _stack import ORG, Stack, interrupt, seed
from asyncpg.connection import LoggedQuery

from api.app import create_app
from controlplane.executions.launch import (
    Caller,
    LaunchRequest,
    Services,
    record_member_execution,
    start_execution,
)
from controlplane.policies import check_tool_call
from controlplane.policy_engine import get_engine
from controlplane.settings import Settings

POOL = 4  # connections, all made at start-up (min = max) so each gets the logger
WARMUP = 2 * POOL  # untimed calls of each kind: every statement prepared on every connection
MODEL = "anthropic/claude-sonnet-4-5"
ALLOW = "package bench.allow\nimport rego.v1\n\ndefault allow := true\n"

RESET = "SELECT pg_advisory_unlock_all();"  # what asyncpg's pool runs on every release

recording: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "recording", default=None
)


def log_query(query: LoggedQuery) -> None:
    # asyncpg calls loggers with loop.call_soon, which carries the context of the query's task.
    sink = recording.get()
    if sink is not None:
        sink.append(" ".join(query.query.split()))


async def count(call: Callable[[], Awaitable[Any]]) -> list[str]:
    statements: list[str] = []

    async def run() -> None:
        recording.set(statements)
        await call()
        await asyncio.sleep(0)  # let the loggers scheduled by the last statement run

    await asyncio.create_task(run())
    await asyncio.sleep(0)
    return statements


def show(title: str, statements: list[str], quiet: bool) -> None:
    resets = sum(sql.startswith(RESET) for sql in statements)
    print(f"\n{title}: {len(statements)} round trips ({resets} of them the pool's reset)")
    if not quiet:
        for n, sql in enumerate(statements, start=1):
            print(f"  {n:>2}. {sql[:110]}{'...' if len(sql) > 110 else ''}")


async def created(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(url, json=body)
    if response.status_code not in (200, 201):
        raise RuntimeError(f"POST {url}: {response.status_code} {response.text[:300]}")
    result: dict[str, Any] = response.json()
    return result


async def setup(client: httpx.AsyncClient) -> dict[str, str]:
    """An organization whose agent inherits something at every layer."""
    env = await created(
        client,
        "/api/v1/environments",
        {"name": "bench", "execution_environment": {"env_vars": {"STAGE": "bench"}}},
    )
    queue = await created(client, f"/api/v1/environments/{env['id']}/worker-queues", {"name": "q"})
    project = await created(client, "/api/v1/projects", {"name": "bench", "key": "BEN"})
    skill = await created(
        client,
        "/api/v1/skills",
        {"name": "shell", "type": "shell", "configuration": {"allowed_commands": ["echo"]}},
    )
    await created(
        client,
        f"/api/v1/skills/associations/environment/{env['id']}/skills",
        {"skill_id": skill["id"]},
    )
    agents = [
        await created(
            client,
            "/api/v1/agents",
            {
                "name": f"bench-{n}",
                "model_id": MODEL,
                "configuration": {"one_shot": True},
                "environment_ids": [env["id"]],
            },
        )
        for n in range(2)
    ]
    team = await created(
        client,
        "/api/v1/teams",
        {
            "name": "bench-team",
            "coordination_type": "parallel",
            "configuration": {"member_ids": [a["id"] for a in agents]},
        },
    )
    await created(client, f"/api/v1/projects/{project['id']}/agents", {"agent_id": agents[0]["id"]})
    policy = await created(client, "/api/v1/policies", {"name": "allow", "policy_content": ALLOW})
    for entity_type, entity_id in (("environment", env["id"]), ("agent", agents[0]["id"])):
        await created(
            client,
            "/api/v1/policies/associations",
            {"policy_id": policy["id"], "entity_type": entity_type, "entity_id": entity_id},
        )
    for path in (f"organization/{ORG}", f"agent/{agents[0]['id']}"):
        response = await client.put(
            f"/api/v1/context/{path}", json={"knowledge_uuids": [str(uuid.uuid4())]}
        )
        if response.status_code != 200:
            raise RuntimeError(f"PUT context {path}: {response.status_code} {response.text}")
    return {
        "queue": queue["id"],
        "agent": agents[0]["id"],
        "member": agents[1]["id"],
        "team": team["id"],
    }


async def measure(settings: Settings, key: str, quiet: bool) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        state = app.state.cp
        pool = state.pool
        held = [await pool.acquire() for _ in range(POOL)]
        for conn in held:
            conn.add_query_logger(log_query)
        for conn in held:
            await pool.release(conn)
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", headers=headers
        ) as client:
            ids = await setup(client)
            services = Services(state.temporal, get_engine(settings), settings.policy_fail_open)
            caller = Caller(ORG, "bench", "admin")
            queue = uuid.UUID(ids["queue"])

            async def post() -> None:
                response = await client.post(
                    f"/api/v1/agents/{ids['agent']}/execute",
                    json={"prompt": "hi", "worker_queue_id": ids["queue"]},
                )
                if response.status_code != 200:
                    raise RuntimeError(f"execute: {response.status_code} {response.text}")

            agent_runs: list[uuid.UUID] = []

            async def agent() -> None:
                request = LaunchRequest(
                    caller, "hi", queue, agent_id=uuid.UUID(ids["agent"]), trigger_source="api"
                )
                agent_runs.append((await start_execution(pool, services, request)).execution_id)

            async def tool_check() -> None:
                decision = await check_tool_call(
                    pool,
                    services.policy_engine,
                    ORG,
                    queue_id=queue,
                    execution_id=agent_runs[0],
                    tool_name="shell",
                    arguments={"command": "echo hi"},
                    mcp_server=None,
                    fail_open=False,
                )
                if not decision.allowed:
                    raise RuntimeError(f"the tool check refused: {decision.violations}")

            team_runs: list[uuid.UUID] = []

            async def team() -> None:
                request = LaunchRequest(
                    caller, "hi", queue, team_id=uuid.UUID(ids["team"]), trigger_source="api"
                )
                team_runs.append((await start_execution(pool, services, request)).execution_id)

            # The team's run is read before counting (the route reads it too).
            await team()
            run_row = await pool.fetchrow("SELECT * FROM executions WHERE id = $1", team_runs[0])

            async def member() -> None:
                await record_member_execution(
                    pool,
                    services,
                    run_row,
                    uuid.UUID(ids["member"]),
                    "do it",
                    f"turn-{uuid.uuid4().hex}",
                )

            async def member_again() -> None:
                await record_member_execution(
                    pool, services, run_row, uuid.UUID(ids["member"]), "do it", "retried"
                )

            cases = [
                ("POST /api/v1/agents/{id}/execute (auth included)", post),
                ("start_execution, agent", agent),
                ("start_execution, team (parallel, 2 members)", team),
                ("record_member_execution, new delegation", member),
                ("record_member_execution, same delegation again", member_again),
                ("check_tool_call (a worker's check before a tool call)", tool_check),
            ]
            for title, call in cases:
                for _ in range(WARMUP):
                    await call()
                show(title, await count(call), quiet)
            # Nothing polls the queue: end the workflows so Temporal holds no open work.
            client_t = await state.temporal.client(ORG)
            for (workflow_id,) in await pool.fetch(
                "SELECT temporal_workflow_id FROM executions WHERE organization_id = $1", ORG
            ):
                with contextlib.suppress(Exception):  # already ended
                    await client_t.get_workflow_handle(workflow_id).terminate(reason="bench")


def main() -> int:
    parser = argparse.ArgumentParser(description="Database round trips per execution start.")
    parser.add_argument("--quiet", action="store_true", help="counts only, no statements")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    stack = Stack(keep=args.keep)
    try:
        print(f"starting Postgres and Temporal in {stack.work} ...", flush=True)
        stack.start_services()
        key = asyncio.run(seed(stack.database_url))
        settings = Settings.from_env(
            database_url=stack.database_url,
            temporal_address=stack.temporal_address,
            home=stack.work / "home",
            db_pool_min=POOL,
            db_pool_max=POOL,
        )
        asyncio.run(measure(settings, key, args.quiet))
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the Temporal client may crash at interpreter exit (sdk-python #300)
