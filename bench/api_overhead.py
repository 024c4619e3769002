"""What one API process costs per request: throughput and latency of authenticated reads and
writes, next to the unauthenticated health check on the same server as a baseline.

    .venv/bin/python bench/api_overhead.py [--requests N] [--concurrency C] [--compare DIR]

Starts an embedded Postgres and a headless Temporal dev server in a temp dir, one uvicorn process
of the API on loopback, and drives it from this process with httpx over keep-alive connections.
The client shares the machine with the server, so compare the ratios more than the absolutes.
Besides client-side latency it reports the server's own time per request (from the API's request
log, matched by X-Request-Id) and the CPU time per request of the API process, Postgres and this
client (from /proc, Linux only). Everything it started is stopped at the end, also on Ctrl-C.

`--compare DIR` runs a second API from another checkout (e.g. `git archive BASE | tar -x -C DIR`)
on a database of its own, and measures both side by side: the timed requests of each row are
sent in `--rounds` slices, alternating between the two servers, so that load from elsewhere on
the machine falls on both alike.
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
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _stack import CpuMeter, Stack, interrupt, percentile, seed, wait_ready

from controlplane.services import free_port
from controlplane.settings import REPO_ROOT

SEED_PROJECTS = 50
REQUEST_ID = "bench-{scenario}-{seq}"

# Given a sequence number, the (method, url, json body) to send.
RequestFor = Callable[[int], tuple[str, str, Any]]


@dataclass
class Scenario:
    name: str
    request_for: RequestFor
    expect: int
    authenticated: bool = True


@dataclass
class Server:
    """One API process under test."""

    label: str
    source: Path
    base_url: str
    key: str
    log: Path
    pid: int


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds over the timed slices
    server: list[float] = field(default_factory=list)  # server-side durations, ms

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def p(self, q: float) -> float:
        return percentile([x * 1000 for x in self.latencies], q)

    def cpu_ms_per_request(self, part: str) -> float:
        done = len(self.latencies) + self.errors
        return self.cpu[part] * 1000 / done if part in self.cpu and done else math.nan


async def run_phase(
    client: httpx.AsyncClient,
    scenario: Scenario,
    tag: int,
    sequence: range,
    concurrency: int,
    deadline: float,
    key: str,
) -> tuple[list[float], int]:
    """Send the requests of `sequence` from `concurrency` workers; stop early at `deadline`."""
    latencies: list[float] = []
    errors = 0
    shared: Iterator[int] = iter(sequence)

    async def worker() -> None:
        nonlocal errors
        for seq in shared:
            if time.perf_counter() > deadline:
                return
            method, url, body = scenario.request_for(seq)
            headers = {"X-Request-Id": REQUEST_ID.format(scenario=tag, seq=seq)}
            if scenario.authenticated:
                headers["Authorization"] = f"Bearer {key}"
            started = time.perf_counter()
            response = await client.request(method, url, json=body, headers=headers)
            latency = time.perf_counter() - started
            if response.status_code == scenario.expect:
                latencies.append(latency)
            else:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def scenarios() -> list[Scenario]:
    run = uuid.uuid4().hex[:8]

    def create(i: int) -> tuple[str, str, Any]:
        return "POST", "/api/v1/projects", {"name": f"bench {run} {i}", "key": f"B{run}{i}"}

    return [
        Scenario("GET /api/health (no key)", lambda _: ("GET", "/api/health", None), 200, False),
        # A key, and no query: what authentication and routing cost without Postgres.
        Scenario("GET /api/v1/runtimes", lambda _: ("GET", "/api/v1/runtimes", None), 200),
        Scenario(
            "GET /api/v1/projects?limit=50",
            lambda _: ("GET", "/api/v1/projects?limit=50", None),
            200,
        ),
        Scenario(
            "GET /api/v1/projects?limit=1", lambda _: ("GET", "/api/v1/projects?limit=1", None), 200
        ),
        Scenario("POST /api/v1/projects", create, 201),
    ]


async def measure(
    servers: list[Server], meter: CpuMeter, args: argparse.Namespace
) -> dict[str, list[Result]]:
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    clients = {
        s.label: httpx.AsyncClient(base_url=s.base_url, limits=limits, timeout=30) for s in servers
    }
    plan = scenarios()
    results = {s.label: [Result(scenario.name) for scenario in plan] for s in servers}
    per_round = math.ceil(args.requests / args.rounds)
    try:
        for server in servers:
            client = clients[server.label]
            for i in range(SEED_PROJECTS):
                response = await client.post(
                    "/api/v1/projects",
                    json={"name": f"seed {i}", "key": f"SEED{i}"},
                    headers={"Authorization": f"Bearer {server.key}"},
                )
                response.raise_for_status()
            for tag, scenario in enumerate(plan):
                warm = range(args.warmup)
                await run_phase(client, scenario, tag, warm, args.concurrency, math.inf, server.key)
        for round_ in range(args.rounds):
            first = args.warmup + round_ * per_round
            timed = range(first, min(first + per_round, args.warmup + args.requests))
            for tag, scenario in enumerate(plan):
                # Alternate which server goes first, so neither always follows the other.
                order = servers if round_ % 2 == 0 else servers[::-1]
                for server in order:
                    result = results[server.label][tag]
                    before = meter.sample()
                    started = time.perf_counter()
                    deadline = started + args.max_seconds / args.rounds
                    latencies, errors = await run_phase(
                        clients[server.label],
                        scenario,
                        tag,
                        timed,
                        args.concurrency,
                        deadline,
                        server.key,
                    )
                    result.elapsed += time.perf_counter() - started
                    after = meter.sample()
                    result.latencies += latencies
                    result.errors += errors
                    for part in after:
                        name = "api" if part == server.label else part
                        result.cpu[name] = result.cpu.get(name, 0.0) + after[part] - before[part]
    finally:
        for client in clients.values():
            await client.aclose()
    return results


def attach_server_times(results: list[Result], api_log: Path, warmup: int) -> None:
    """The API logs `duration_ms` per request under our X-Request-Id."""
    with open(api_log, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, IndexError):
                entry = json.loads(line)
                parts = str(entry["request_id"]).split("-")
                if entry.get("message") != "request" or parts[0] != "bench":
                    continue
                if int(parts[2]) >= warmup:
                    results[int(parts[1])].server.append(float(entry["duration_ms"]))


def report(
    servers: list[Server], all_results: dict[str, list[Result]], args: argparse.Namespace
) -> None:
    print(
        f"\nconcurrency {args.concurrency}; per row {args.warmup} warm-up requests, then up to "
        f"{args.requests} timed ones (at most {args.max_seconds:.0f} s) in {args.rounds} "
        f"slices; {len(servers)} API process(es), measured in turn; {os.cpu_count()} CPUs; "
        f"Python {sys.version.split()[0]}"
        + (f"; uvicorn {args.uvicorn_args}" if args.uvicorn_args else "")
        + (f"; compared with {args.compare_uvicorn_args}" if args.compare_uvicorn_args else "")
    )
    head = ("req/s", "p50 ms", "p99 ms", "srv p50", "srv p99", "api cpu", "pg cpu", "cli cpu")
    for server in servers:
        results = all_results[server.label]
        print(f"\n{server.label}: {server.source}")
        print(f"{'scenario':<30} {'ok':>5} {'err':>4}" + "".join(f" {h:>8}" for h in head))
        for r in results:
            cells = [
                r.rate,
                r.p(0.5),
                r.p(0.99),
                percentile(r.server, 0.5),
                percentile(r.server, 0.99),
                r.cpu_ms_per_request("api"),
                r.cpu_ms_per_request("postgres"),
                r.cpu_ms_per_request("client"),
            ]
            print(
                f"{r.name:<30} {len(r.latencies):>5} {r.errors:>4}"
                + "".join(f" {c:>8.0f}" if i == 0 else f" {c:>8.2f}" for i, c in enumerate(cells))
            )
        health = results[0]
        for r in results[1:]:
            if r.rate and health.rate:
                print(
                    f"cost ratio {r.name} / health: {health.rate / r.rate:.2f}x by throughput, "
                    f"{r.p(0.5) / health.p(0.5):.2f}x by client p50, "
                    f"{r.cpu_ms_per_request('api') / health.cpu_ms_per_request('api'):.2f}x "
                    "by API CPU"
                )
    print("\n(srv = time inside the API per its request log; cpu = CPU ms per request)")


def main() -> int:
    parser = argparse.ArgumentParser(description="API overhead per request, against a baseline.")
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per row")
    parser.add_argument("--warmup", type=int, default=300, help="untimed requests per row")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=30, help="time cap per row")
    parser.add_argument("--rounds", type=int, default=1, help="slices of each row's requests")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    parser.add_argument(
        "--compare", type=Path, help="another checkout's API, measured side by side"
    )
    parser.add_argument(
        "--uvicorn-args",
        default="",
        help='extra uvicorn options, e.g. "--http h11 --loop asyncio"',
    )
    parser.add_argument(
        "--compare-uvicorn-args",
        default="",
        help="extra uvicorn options of the compared API (a base that ran on h11 and asyncio: "
        '"--http h11 --loop asyncio")',
    )
    args = parser.parse_args()
    if args.compare is not None and args.rounds == 1:
        args.rounds = 6
    signal.signal(signal.SIGTERM, interrupt)

    stack = Stack(keep=args.keep)
    try:
        print(f"starting Postgres and Temporal in {stack.work} ...", flush=True)
        stack.start_services()
        sources = [("this checkout", REPO_ROOT, args.uvicorn_args)]
        if args.compare is not None:
            sources.append(("compared", args.compare.resolve(), args.compare_uvicorn_args))

        async def start() -> list[Server]:
            servers = []
            for i, (label, source, uvicorn_args) in enumerate(sources):
                database_url = await stack.create_database(f"bench_{i}")
                port = free_port()
                log = f"api-{i}.log"
                # Connections wait idle while the other server is measured: keep them open.
                api = stack.start_api(
                    port,
                    ["--timeout-keep-alive", "600", *shlex.split(uvicorn_args)],
                    source=source,
                    database_url=database_url,
                    log_name=log,
                )
                base_url = f"http://127.0.0.1:{port}"
                await wait_ready(base_url, api, timeout=60)
                key = await seed(database_url, apply_schema=False)
                servers.append(Server(label, source, base_url, key, stack.work / log, api.pid))
            return servers

        servers = asyncio.run(start())
        meter = CpuMeter({s.label: s.pid for s in servers}, stack.work / "pgdata")
        print("API ready; measuring ...", flush=True)
        results = asyncio.run(measure(servers, meter, args))
        for server in servers:
            attach_server_times(results[server.label], server.log, args.warmup)
        report(servers, results, args)
        return 1 if any(r.errors for rs in results.values() for r in rs) else 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
        for name in ("api-0.log", "api-1.log"):
            print(stack.log_tail(name), file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        stack.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    raise SystemExit(main())
