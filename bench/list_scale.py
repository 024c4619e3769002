"""List routes in a large organization: 100,000 projects, agents, environments, worker queues
and executions, and the time to serve a page of 50 of each.

    .venv/bin/python bench/list_scale.py [--rows N] [--requests N] [--source DIR]

Starts an embedded Postgres and a headless Temporal dev server in a temp dir and one uvicorn
process of the API (which applies its migrations), then seeds the `bench` organization straight
in SQL: `--rows` projects (every tenth archived; one `Default` project that every agent joins, as
agents created through the API do, and every fifth agent in one other project too), environments,
worker queues (one in each environment but the newest, which has 1,000; two live workers on each
of the 1,000 oldest), agents (two environments each) and executions (of 1,000 agents, statuses
mixed). Then
`VACUUM ANALYZE`, as autovacuum would have done by then. Each row of the table is one URL asked
`--requests` times one after another (after untimed warm-up requests), so the server time is the
request's own and not a wait behind others. Columns:

- `p50`, `p99`: client latency, ms; `srv p50`, `srv p99`: time inside the API per its request
  log (matched by X-Request-Id), ms;
- `api cpu`, `pg cpu`: CPU ms per request of the API process and of all Postgres processes.

`--source DIR` runs the API of another checkout (e.g. `git archive BASE | tar -x -C DIR`), with
its own migrations, to compare a change against its base on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from _stack import ORG, CpuMeter, Stack, interrupt, percentile, seed, wait_ready

from controlplane.services import free_port
from controlplane.settings import REPO_ROOT

REQUEST_ID = "bench-{scenario}-{seq}"
PROJECT_SETTINGS = (
    '{"goals": null, "policy_ids": [], "default_model": null, "restrict_to_environment": false}'
)
BIG_ENVIRONMENT_QUEUES = 1000
LIVE_WORKER_QUEUES = 1000
EXECUTION_AGENTS = 1000


def seed_sql(rows: int) -> list[str]:
    """Statements that fill the bench organization; they run against any release's schema."""
    return [
        "INSERT INTO projects (id, organization_id, name, key, settings, visibility, created_at) "
        f"VALUES (gen_random_uuid(), '{ORG}', 'Default', 'DEFAULT', '{PROJECT_SETTINGS}', 'org', "
        "now() - interval '2 days')",
        "INSERT INTO projects (id, organization_id, name, key, settings, status, created_at) "
        f"SELECT gen_random_uuid(), '{ORG}', 'project ' || i, 'P' || i, '{PROJECT_SETTINGS}', "
        "CASE WHEN i % 10 = 0 THEN 'archived' ELSE 'active' END, "
        "now() - interval '1 day' + i * interval '1 ms' "
        f"FROM generate_series(1, {rows - 1}) i",
        "INSERT INTO environments (id, organization_id, name, worker_token, status, created_at) "
        f"SELECT gen_random_uuid(), '{ORG}', 'env-' || i, gen_random_uuid(), "
        "CASE WHEN i % 10 = 0 THEN 'inactive' ELSE 'ready' END, "
        "now() - interval '1 day' + i * interval '1 ms' "
        f"FROM generate_series(1, {rows}) i",
        # One queue in each environment but the newest, which has BIG_ENVIRONMENT_QUEUES.
        "INSERT INTO worker_queues (id, organization_id, environment_id, name, status, created_at) "
        f"SELECT gen_random_uuid(), '{ORG}', e.id, 'q-' || e.n, "
        "CASE WHEN e.n % 10 = 0 THEN 'inactive' ELSE 'active' END, e.created_at "
        "FROM (SELECT id, created_at, row_number() OVER (ORDER BY created_at, id) AS n "
        f"FROM environments WHERE organization_id = '{ORG}') e "
        f"WHERE e.n <= {rows - BIG_ENVIRONMENT_QUEUES}",
        "INSERT INTO worker_queues (id, organization_id, environment_id, name, created_at) "
        f"SELECT gen_random_uuid(), '{ORG}', e.id, 'q-' || j, e.created_at + j * interval '1 us' "
        f"FROM (SELECT id, created_at FROM environments WHERE organization_id = '{ORG}' "
        "ORDER BY created_at DESC LIMIT 1) e, "
        f"generate_series(1, {BIG_ENVIRONMENT_QUEUES}) j",
        # Two live workers on each of the oldest queues (and so the oldest environments).
        "INSERT INTO workers (id, organization_id, worker_queue_id, status, last_heartbeat) "
        f"SELECT gen_random_uuid(), '{ORG}', q.id, (ARRAY['active', 'idle', 'busy'])[1 + n % 3], "
        "now() + interval '1 hour' "
        f"FROM (SELECT id FROM worker_queues WHERE organization_id = '{ORG}' "
        f"ORDER BY created_at, id LIMIT {LIVE_WORKER_QUEUES}) q, generate_series(1, 2) n",
        "INSERT INTO agents (id, organization_id, name, model_id, configuration, environment_ids, "
        f"created_at) SELECT gen_random_uuid(), '{ORG}', 'agent ' || i, "
        "'anthropic/claude-sonnet-4-5', "
        """'{"system_prompt": "You are a helpful assistant.", "one_shot": true}', """
        f"(SELECT jsonb_agg(id) FROM (SELECT id FROM environments WHERE organization_id = '{ORG}' "
        "ORDER BY created_at LIMIT 2) x), now() - interval '1 day' + i * interval '1 ms' "
        f"FROM generate_series(1, {rows}) i",
        "INSERT INTO project_agents (id, project_id, agent_id) "
        f"SELECT gen_random_uuid(), (SELECT id FROM projects WHERE organization_id = '{ORG}' "
        f"AND key = 'DEFAULT'), a.id FROM agents a WHERE a.organization_id = '{ORG}'",
        "INSERT INTO project_agents (id, project_id, agent_id) "
        "SELECT gen_random_uuid(), p.id, a.id "
        "FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) n FROM projects "
        f"WHERE organization_id = '{ORG}' AND key <> 'DEFAULT') p "
        "JOIN (SELECT id, row_number() OVER (ORDER BY created_at, id) n FROM agents "
        f"WHERE organization_id = '{ORG}') a ON a.n = p.n WHERE p.n % 5 = 0",
        "INSERT INTO executions (id, organization_id, execution_type, entity_id, entity_name, "
        "prompt, status, response, usage, created_at) "
        f"SELECT gen_random_uuid(), '{ORG}', 'agent', a.id, a.name, 'Say hello', "
        "(ARRAY['completed', 'completed', 'completed', 'failed', 'running'])[1 + i % 5], "
        """'Hello there', '{"turns": 1}', now() - interval '1 day' + i * interval '1 ms' """
        f"FROM generate_series(1, {rows}) i JOIN (SELECT id, name, "
        "row_number() OVER (ORDER BY created_at, id) - 1 AS n FROM agents "
        f"WHERE organization_id = '{ORG}') a ON a.n = i % {EXECUTION_AGENTS}",
    ]


async def fill(database_url: str, rows: int) -> dict[str, str]:
    """Seed the organization; returns ids the scenarios ask for."""
    conn = await asyncpg.connect(database_url)
    try:
        for statement in seed_sql(rows):
            await conn.execute(statement)
        await conn.execute("VACUUM ANALYZE")
        agent = await conn.fetchval(
            "SELECT entity_id FROM executions WHERE organization_id = $1 LIMIT 1", ORG
        )
        environment = await conn.fetchval(
            "SELECT id FROM environments WHERE organization_id = $1 "
            "ORDER BY created_at DESC LIMIT 1",
            ORG,
        )
    finally:
        await conn.close()
    return {"agent": str(agent), "environment": str(environment)}


def scenarios(rows: int, ids: dict[str, str]) -> list[tuple[str, str]]:
    """(label, URL); the first is the unauthenticated baseline."""
    deep = max(0, rows - 100)
    return [
        ("health (no key)", "/api/health"),
        ("projects", "/api/v1/projects?limit=50"),
        ("projects archived", "/api/v1/projects?limit=50&status_filter=archived"),
        (f"projects offset {deep}", f"/api/v1/projects?limit=50&offset={deep}"),
        ("agents", "/api/v1/agents?limit=50"),
        ("environments", "/api/v1/environments?limit=50"),
        ("worker-queues", "/api/v1/worker-queues?limit=50"),
        (
            "env's worker-queues",
            f"/api/v1/environments/{ids['environment']}/worker-queues?limit=50",
        ),
        ("executions", "/api/v1/executions?limit=50"),
        ("executions running", "/api/v1/executions?limit=50&status_filter=running"),
        ("executions of an agent", f"/api/v1/executions?limit=50&entity_id={ids['agent']}"),
    ]


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    server: list[float] = field(default_factory=list)

    def cpu_ms(self, part: str) -> float:
        done = len(self.latencies) + self.errors
        return self.cpu[part] * 1000 / done if part in self.cpu and done else math.nan


async def measure(
    base_url: str, key: str, meter: CpuMeter, plan: list[tuple[str, str]], args: argparse.Namespace
) -> list[Result]:
    results = []
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        for tag, (name, url) in enumerate(plan):
            result = Result(name)
            headers = {"Authorization": f"Bearer {key}"} if tag else {}
            for seq in range(args.warmup + args.requests):
                if seq == args.warmup:
                    before = meter.sample()
                request_id = REQUEST_ID.format(scenario=tag, seq=seq)
                started = time.perf_counter()
                response = await client.get(url, headers=headers | {"X-Request-Id": request_id})
                latency = time.perf_counter() - started
                if seq < args.warmup:
                    continue
                if response.status_code == 200:
                    result.latencies.append(latency)
                else:
                    result.errors += 1
                    if result.errors == 1:
                        print(f"{name}: {response.status_code} {response.text[:300]}")
            after = meter.sample()
            result.cpu = {part: after[part] - before[part] for part in after}
            results.append(result)
    return results


def attach_server_times(results: list[Result], api_log: Path, warmup: int) -> None:
    with open(api_log, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, IndexError):
                entry = json.loads(line)
                parts = str(entry["request_id"]).split("-")
                if entry.get("message") != "request" or parts[0] != "bench":
                    continue
                if int(parts[2]) >= warmup:
                    results[int(parts[1])].server.append(float(entry["duration_ms"]))


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\n{args.rows} rows per list; per row {args.warmup} warm-up requests, then "
        f"{args.requests} timed ones, one at a time; source {args.source}; "
        f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}"
        + (f"; uvicorn {args.uvicorn_args}" if args.uvicorn_args else "")
        + "\n"
    )
    head = ("p50", "p99", "srv p50", "srv p99", "api cpu", "pg cpu")
    print(f"{'GET, limit=50':<28} {'err':>4}" + "".join(f" {h:>8}" for h in head))
    for r in results:
        ms = [x * 1000 for x in r.latencies]
        cells = [
            percentile(ms, 0.5),
            percentile(ms, 0.99),
            percentile(r.server, 0.5),
            percentile(r.server, 0.99),
            r.cpu_ms("api"),
            r.cpu_ms("postgres"),
        ]
        print(f"{r.name:<28} {r.errors:>4}" + "".join(f" {c:>8.2f}" for c in cells))
    print("(ms; srv = time inside the API per its request log; cpu = CPU ms per request)")


def main() -> int:
    parser = argparse.ArgumentParser(description="List routes at 100,000 rows per organization.")
    parser.add_argument("--rows", type=int, default=100_000, help="rows per list")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per URL")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per URL")
    parser.add_argument("--source", type=Path, default=REPO_ROOT, help="checkout of the API")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    parser.add_argument("--uvicorn-args", default="", help="extra uvicorn options")
    args = parser.parse_args()
    args.source = args.source.resolve()
    signal.signal(signal.SIGTERM, interrupt)

    stack = Stack(keep=args.keep)
    try:
        print(f"starting Postgres and Temporal in {stack.work} ...", flush=True)
        stack.start_services()
        port = free_port()
        api = stack.start_api(port, shlex.split(args.uvicorn_args), source=args.source)
        base_url = f"http://127.0.0.1:{port}"
        meter = CpuMeter({"api": api.pid}, stack.work / "pgdata")

        async def run() -> list[Result]:
            await wait_ready(base_url, api, timeout=60)
            key = await seed(stack.database_url, apply_schema=False)
            print(f"API ready; seeding {args.rows} rows per list ...", flush=True)
            started = time.perf_counter()
            ids = await fill(stack.database_url, args.rows)
            print(f"seeded in {time.perf_counter() - started:.0f} s; measuring ...", flush=True)
            return await measure(base_url, key, meter, scenarios(args.rows, ids), args)

        results = asyncio.run(run())
        attach_server_times(results, stack.work / "api.log", args.warmup)
        report(results, args)
        return 1 if any(r.errors for r in results) else 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
        print(stack.log_tail("api.log"), file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        stack.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    raise SystemExit(main())
