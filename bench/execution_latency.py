"""What an agent execution costs end to end: starting it, running it to `done`, and how many
run per second, with a model that answers at once.

    .venv/bin/python bench/execution_latency.py [--quick] [--only-start] [--starts N]
                                                [--duration S] [--concurrency C]

Starts in a temp dir an embedded Postgres, a headless Temporal dev server, the fake Anthropic
server (`--zero-latency`), one API process and ONE worker process (`python -m worker`) on a
worker queue, and a one-shot agent on `anthropic/claude-sonnet-4-5`. Then, from this process:

(a) start latency: `POST /agents/{id}/execute` on a queue no worker polls (so only the start is
    measured: authentication, the run's one read and its one write; the API starts the workflow
    after answering), interleaved with a bare temporalio `client.start_workflow` of
    `QueueProbeWorkflow` on another unpolled task queue of the same Temporal server, as the
    baseline. Each pair waits until the execution's workflow exists (DescribeWorkflowExecution
    answers), so the API's start does not overlap the next bare one; that wait is reported too,
    from the POST's sending. With `--only-start`, only this;
(b) one execution at a time: POST, then `GET /executions/{id}/stream` until `done`, timing the
    POST answer, the `status: running` event, the first `message_chunk` and `done`, both as seen
    by this client and as stamped by the API (the event rows' `created_at`; same clock);
(c) throughput: `--concurrency` executions in flight for `--duration` seconds, each followed
    over SSE to `done`/`error`; executions/s counts those done within the window;
(d) the baseline of (c): a plain temporalio worker process (bench/_plain_worker.py) running the
    one-activity QueueProbeWorkflow on the same Temporal server, `--concurrency` in flight for
    the same `--duration`; (c) / (d) is the share of a bare Temporal's throughput we keep.

It also reports the CPU time per execution of each process (from /proc, Linux only) and, from the
API's request log, the requests per execution by route. Everything it started is stopped at the
end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from _stack import ORG, CpuMeter, Stack, interrupt, machine_cpu, percentile, seed, wait_ready
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError

from controlplane.services import free_port, stop_process, wait_for_port
from controlplane.settings import Settings
from workflows.contracts import QUEUE_PROBE_WORKFLOW

MODEL = "anthropic/claude-sonnet-4-5"
PROMPT = "Say hello to the benchmark."
RUN_TIMEOUT = 60.0  # seconds one execution may take before it counts as failed
HISTORY_SAMPLE = 100  # executions per phase whose Temporal history is read for the breakdown
DRAIN_TIMEOUT = 90.0  # seconds to let executions in flight at the end of (c) finish
WIDTHS = (9, 9, 10, 10)
STAGES = ("post", "running", "first_chunk", "done")
STAGE_NAMES = {
    "post": "POST /execute answered",
    "running": "event status: running",
    "first_chunk": "first message_chunk",
    "done": "event done",
}


@dataclass
class Run:
    """One execution as this client saw it; times in seconds from sending the POST."""

    seen: dict[str, float] = field(default_factory=dict)
    sent_at: float = 0.0  # perf_counter when the POST was sent
    stamped: dict[str, float] = field(default_factory=dict)  # event created_at - POST sent
    error: str | None = None
    finished_at: float = 0.0  # perf_counter when it ended
    workflow_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and "done" in self.seen


@dataclass
class Setup:
    agent_id: str
    served_queue: str
    unpolled_queue: str


def ms(values: list[float], q: float) -> float:
    return percentile([v * 1000 for v in values], q)


def _stamp(data: dict[str, Any]) -> float | None:
    with contextlib.suppress(KeyError, TypeError, ValueError):
        return datetime.fromisoformat(str(data["timestamp"])).timestamp()
    return None


async def execute_once(
    client: httpx.AsyncClient, setup: Setup, *, follow: bool = True, queue: str | None = None
) -> Run:
    """POST an execution and, with `follow`, read its stream to the end."""
    run = Run()
    sent_wall, sent = time.time(), time.perf_counter()
    run.sent_at = sent
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            response = await client.post(
                f"/api/v1/agents/{setup.agent_id}/execute",
                json={"prompt": PROMPT, "worker_queue_id": queue or setup.served_queue},
            )
            run.seen["post"] = time.perf_counter() - sent
            if response.status_code != 200:
                run.error = f"POST /execute {response.status_code}: {response.text[:120]}"
                return run
            body = response.json()
            run.workflow_id = str(body["workflow_id"])
            if follow:
                await _follow(client, body["execution_id"], run, sent, sent_wall)
    except TimeoutError:
        run.error = f"no done/error event within {RUN_TIMEOUT:.0f} s"
    except httpx.HTTPError as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        run.finished_at = time.perf_counter()
    return run


async def _follow(
    client: httpx.AsyncClient, execution_id: str, run: Run, sent: float, sent_wall: float
) -> None:
    async with client.stream("GET", f"/api/v1/executions/{execution_id}/stream") as response:
        if response.status_code != 200:
            run.error = f"GET /stream {response.status_code}"
            return
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
                continue
            if not line.startswith("data: "):
                continue
            now = time.perf_counter() - sent
            data: dict[str, Any] = json.loads(line[6:])
            stage = None
            if event == "status" and data.get("status") == "running":
                stage = "running"
            elif event == "message_chunk":
                stage = "first_chunk"
            elif event in ("done", "error"):
                stage = "done"
                if event == "error":
                    run.error = f"error event: {str(data.get('error'))[:120]}"
            if stage is not None and stage not in run.seen:
                run.seen[stage] = now
                stamp = _stamp(data)
                if stamp is not None:
                    run.stamped[stage] = stamp - sent_wall
            if stage == "done":
                return
    run.error = run.error or "stream ended without done"


# --- set-up ------------------------------------------------------------------------------------


async def prepare(client: httpx.AsyncClient) -> Setup:
    async def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await client.post(url, json=body)
        if response.status_code != 201:
            raise RuntimeError(f"POST {url}: {response.status_code} {response.text[:200]}")
        created: dict[str, Any] = response.json()
        return created

    env = await post("/api/v1/environments", {"name": "bench"})
    queues = f"/api/v1/environments/{env['id']}/worker-queues"
    served = await post(queues, {"name": "served"})
    unpolled = await post(queues, {"name": "unpolled"})
    agent = await post(
        "/api/v1/agents",
        {"name": "bench-agent", "model_id": MODEL, "configuration": {"one_shot": True}},
    )
    return Setup(str(agent["id"]), str(served["id"]), str(unpolled["id"]))


async def wait_worker(client: httpx.AsyncClient, queue_id: str, worker: Any) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode}")
        page = (await client.get(f"/api/v1/worker-queues/{queue_id}/workers")).json()
        if page.get("total", 0) >= 1:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the worker did not register within 60 s")


# --- the phases --------------------------------------------------------------------------------


@dataclass
class StartResult:
    bare: list[float]
    post: list[float]
    errors: int
    # From sending the POST until DescribeWorkflowExecution finds the workflow (an upper bound:
    # the describe calls are 1 ms apart and take their own time).
    exists: list[float] = field(default_factory=list)
    wall_start: float = 0.0  # the timed pairs' window, for the API's request log
    wall_end: float = 0.0


async def measure_starts(
    client: httpx.AsyncClient, temporal: Client, setup: Setup, warmup: int, count: int
) -> StartResult:
    """(a): interleaved, so drift on a shared machine hits both alike."""
    result = StartResult([], [], 0)
    task_queue = f"bench-unpolled-{uuid.uuid4().hex[:8]}"
    started: list[str] = []
    for i in range(warmup + count):
        workflow_id = f"bench-start-{uuid.uuid4()}"
        before = time.perf_counter()
        await temporal.start_workflow(
            QUEUE_PROBE_WORKFLOW, "bench", id=workflow_id, task_queue=task_queue
        )
        bare = time.perf_counter() - before
        started.append(workflow_id)
        run = await execute_once(client, setup, follow=False, queue=setup.unpolled_queue)
        if run.workflow_id is not None:
            started.append(run.workflow_id)
            exists = await wait_exists(temporal, run.workflow_id) - run.sent_at
        if i < warmup:
            result.wall_start = time.time()
            continue
        result.bare.append(bare)
        if run.error is None:
            result.post.append(run.seen["post"])
            result.exists.append(exists)
        else:
            result.errors += 1
    result.wall_end = time.time()
    # Nothing will ever poll these; end them so Temporal holds no open work.
    limit = asyncio.Semaphore(8)

    async def end(workflow_id: str) -> None:
        async with limit:
            with contextlib.suppress(Exception):
                await temporal.get_workflow_handle(workflow_id).terminate(reason="bench done")

    await asyncio.gather(*(end(w) for w in started))
    return result


async def wait_exists(temporal: Client, workflow_id: str) -> float:
    """When the workflow was first found (perf_counter)."""
    handle = temporal.get_workflow_handle(workflow_id)
    while True:
        with contextlib.suppress(RPCError):
            await handle.describe()
            return time.perf_counter()
        await asyncio.sleep(0.001)


async def measure_sequential(client: httpx.AsyncClient, setup: Setup, count: int) -> list[Run]:
    """(b): one execution at a time, each followed to `done`."""
    return [await execute_once(client, setup) for _ in range(count)]


@dataclass
class LoadResult:
    runs: list[Run]
    started: float
    deadline: float
    wall_start: float
    wall_end: float

    @property
    def in_window(self) -> list[Run]:
        return [r for r in self.runs if r.ok and r.finished_at <= self.deadline]


async def measure_load(
    client: httpx.AsyncClient, setup: Setup, concurrency: int, duration: float
) -> LoadResult:
    """(c): `concurrency` slots, each starting its next execution once the last one ended."""
    runs: list[Run] = []
    started = time.perf_counter()
    wall_start = time.time()
    deadline = started + duration

    async def slot() -> None:
        while time.perf_counter() < deadline:
            runs.append(await execute_once(client, setup))

    async with asyncio.timeout(duration + DRAIN_TIMEOUT), asyncio.TaskGroup() as slots:
        for _ in range(concurrency):
            slots.create_task(slot())
    return LoadResult(runs, started, deadline, wall_start, wall_start + duration)


async def measure_plain(stack: Stack, temporal: Client, concurrency: int, duration: float) -> float:
    """(d): one-activity workflows/s of a plain temporalio worker, same server and load shape."""
    task_queue = f"bench-plain-{uuid.uuid4().hex[:8]}"
    worker = stack.spawn(
        [
            sys.executable,
            "bench/_plain_worker.py",
            stack.temporal_address,
            temporal.namespace,
            task_queue,
        ],
        "plain-worker.log",
    )
    try:
        await temporal.execute_workflow(  # warm: the worker polls once this answers
            QUEUE_PROBE_WORKFLOW, "warm", id=f"plain-{uuid.uuid4()}", task_queue=task_queue
        )
        done = 0
        deadline = time.perf_counter() + duration

        async def slot() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await temporal.execute_workflow(
                    QUEUE_PROBE_WORKFLOW, "x", id=f"plain-{uuid.uuid4()}", task_queue=task_queue
                )
                if time.perf_counter() <= deadline:
                    done += 1

        async with asyncio.TaskGroup() as slots:
            for _ in range(concurrency):
                slots.create_task(slot())
        return done / duration
    finally:
        stop_process(worker)


async def history_breakdown(
    temporal: Client, runs: list[Run], limit: int
) -> dict[str, list[float]]:
    """Where each execution's workflow spent its time, per its Temporal history (seconds summed
    per execution): workflow tasks and activities waiting in the task queue, workflow tasks on
    the worker, and each activity's run (for the reports: the HTTP call to the API)."""
    spent: dict[str, list[float]] = defaultdict(list)
    for run in [r for r in runs if r.ok and r.workflow_id][:limit]:
        assert run.workflow_id is not None
        history = await temporal.get_workflow_handle(run.workflow_id).fetch_history()
        at: dict[int, float] = {}
        names: dict[int, str] = {}
        sums: dict[str, float] = defaultdict(float)
        first = last = 0.0
        for event in history.events:
            now = event.event_time.ToMicroseconds() / 1e6
            at[event.event_id] = now
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                first = now
            elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
                last = now
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                attrs = event.workflow_task_started_event_attributes
                sums["workflow task: queued"] += now - at[attrs.scheduled_event_id]
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                done = event.workflow_task_completed_event_attributes
                sums["workflow task: on the worker"] += now - at[done.started_event_id]
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                names[event.event_id] = (
                    event.activity_task_scheduled_event_attributes.activity_type.name
                )
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = event.activity_task_started_event_attributes
                sums["activity: queued"] += now - at[started.scheduled_event_id]
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                finished = event.activity_task_completed_event_attributes
                name = names[finished.scheduled_event_id]
                sums[f"activity {name}: running"] += now - at[finished.started_event_id]
        if not last:
            continue
        total = last - first
        sums["other (between tasks)"] = total - sum(sums.values())
        sums["workflow: started -> completed"] = total
        for part, seconds in sums.items():
            spent[part].append(seconds)
    return spent


# --- reporting ---------------------------------------------------------------------------------


def request_mix(api_log: Path, start: float, end: float) -> dict[str, list[float]]:
    """Server-side durations (ms) by `METHOD route` of the requests logged in [start, end]."""
    found: dict[str, list[float]] = defaultdict(list)
    with open(api_log, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                if entry.get("message") != "request":
                    continue
                at = datetime.fromisoformat(entry["time"]).timestamp()
                if start <= at <= end:
                    found[f"{entry['method']} {entry['route']}"].append(float(entry["duration_ms"]))
    return found


def print_cpu(cpu: dict[str, float], executions: int, elapsed: float) -> None:
    if not cpu or not executions:
        return
    cores = os.cpu_count() or 1
    parts = "  ".join(f"{name} {seconds * 1000 / executions:.1f}" for name, seconds in cpu.items())
    busy = sum(cpu.values()) / (elapsed * cores) * 100
    print(f"  CPU ms per execution: {parts}  (all: {busy:.0f}% of {cores} CPUs)")


def report_starts(result: StartResult, api_log: Path) -> None:
    print(f"\n(a) start latency, {len(result.bare)} interleaved pairs (ms)")
    print(f"  {'':<46} {'p50':>8} {'p99':>8}")
    bare = (ms(result.bare, 0.5), ms(result.bare, 0.99))
    post = (ms(result.post, 0.5), ms(result.post, 0.99))
    print(f"  {'temporalio client.start_workflow (bare)':<46} {bare[0]:>8.1f} {bare[1]:>8.1f}")
    print(f"  {'POST /agents/{id}/execute (unpolled queue)':<46} {post[0]:>8.1f} {post[1]:>8.1f}")
    mix = request_mix(api_log, result.wall_start, result.wall_end)
    server = mix.get("POST /api/v1/agents/{agent_id}/execute", [])
    if server:
        cells = f"{percentile(server, 0.5):>8.1f} {percentile(server, 0.99):>8.1f}"
        print(f"  {'  of which inside the API (its request log)':<46} {cells}")
    print(f"  {'ratio POST / bare':<46} {post[0] / bare[0]:>7.2f}x {post[1] / bare[1]:>7.2f}x")
    exists = (ms(result.exists, 0.5), ms(result.exists, 0.99))
    print(
        f"  {'POST sent -> its workflow found by describe':<46} {exists[0]:>8.1f} {exists[1]:>8.1f}"
    )
    if result.errors:
        print(f"  POST errors: {result.errors}")


def report_runs(title: str, runs: list[Run]) -> None:
    ok = [r for r in runs if r.ok]
    print(
        f"\n{title}: {len(ok)} completed, {len(runs) - len(ok)} failed (ms from sending the POST)"
    )
    heads = ("seen p50", "seen p99", "stamp p50", "stamp p99")
    print(f"  {'stage':<26} " + " ".join(f"{h:>{w}}" for h, w in zip(heads, WIDTHS, strict=True)))
    for stage in STAGES:
        seen = [r.seen[stage] for r in ok if stage in r.seen]
        stamped = [r.stamped[stage] for r in ok if stage in r.stamped]
        cells = [ms(seen, 0.5), ms(seen, 0.99), ms(stamped, 0.5), ms(stamped, 0.99)]
        text = " ".join(
            f"{'-' if math.isnan(c) else f'{c:.1f}':>{w}}"
            for c, w in zip(cells, WIDTHS, strict=True)
        )
        print(f"  {STAGE_NAMES[stage]:<26} {text}")
    print_failures(runs)


def print_failures(runs: list[Run]) -> None:
    reasons: dict[str, int] = defaultdict(int)
    for run in runs:
        if not run.ok:
            reasons[run.error or "no done event"] += 1
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1])[:5]:
        print(f"  failed x{count}: {reason}")


def report_history(spent: dict[str, list[float]]) -> None:
    """Per execution: p50/p99 of each part, and its share of all workflow time."""
    totals = spent.get("workflow: started -> completed", [])
    if not totals:
        return
    whole = sum(totals)
    print(f"  per Temporal history ({len(totals)} executions; ms per execution, summed parts):")
    for part, seconds in sorted(spent.items(), key=lambda item: -sum(item[1])):
        cells = f"p50 {ms(seconds, 0.5):>7.1f}  p99 {ms(seconds, 0.99):>7.1f}"
        print(f"    {part:<46} {cells}  {sum(seconds) / whole * 100:>5.1f}%")


def report_load(load: LoadResult, mix: dict[str, list[float]], concurrency: int) -> None:
    duration = load.deadline - load.started
    done = load.in_window
    failed = [r for r in load.runs if not r.ok]
    late = [r for r in load.runs if r.ok and r.finished_at > load.deadline]
    print(
        f"\n(c) {concurrency} in flight for {duration:.0f} s: {len(done)} completed in the window "
        f"= {len(done) / duration:.1f} executions/s; {len(failed)} failed; "
        f"{len(late)} more completed after the window"
    )
    report_runs("  latency under load", load.runs)
    if done:
        print(f"  API requests in the window per completed execution (server ms, {len(done)}):")
        for route, durations in sorted(mix.items(), key=lambda item: -len(item[1])):
            share = sum(durations) / 1000 / duration
            print(
                f"    {route:<48} {len(durations) / len(done):>5.2f}/exec  "
                f"p50 {percentile(durations, 0.5):>7.1f}  p99 {percentile(durations, 0.99):>7.1f}"
                f"  busy {share:>5.2f}"
            )
        print("    (busy = summed server time / window: concurrent requests per second of wall)")


# --- main --------------------------------------------------------------------------------------


async def bench(stack: Stack, key: str, api: Any, base_url: str, args: argparse.Namespace) -> int:
    await wait_ready(base_url, api, timeout=60)
    limits = httpx.Limits(
        max_connections=args.concurrency + 8, max_keepalive_connections=args.concurrency + 8
    )
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=RUN_TIMEOUT
    ) as client:
        setup = await prepare(client)
        worker_env = os.environ | {
            "CONTROLPLANE_URL": base_url,
            "CONTROLPLANE_API_KEY": key,
            "ANTHROPIC_BASE_URL": args.fake_url,
            "ANTHROPIC_API_KEY": "bench-key",
        }
        worker_env.pop("DATABASE_URL", None)
        command = [sys.executable, "-m", "worker", "--queue-id", setup.served_queue]
        worker = stack.spawn(command, "worker.log", worker_env)
        await wait_worker(client, setup.served_queue, worker)
        warm = await measure_sequential(client, setup, args.warmup)
        if not all(r.ok for r in warm):
            report_runs("warm-up", warm)
            raise RuntimeError("warm-up executions failed")
        print("stack ready; measuring ...", flush=True)
        args.load_average = " ".join(f"{x:.2f}" for x in os.getloadavg())

        # The organization's namespace: its executions' histories are there (issue 7).
        namespace = Settings.from_env(secret_key="").namespace_for(ORG)
        temporal = await Client.connect(stack.temporal_address, namespace=namespace)
        starts = await measure_starts(client, temporal, setup, args.warmup, args.starts)
        if args.only_start:
            del temporal  # see below
            print(f"\nload average at the start {args.load_average}; {os.cpu_count()} CPUs")
            report_starts(starts, stack.work / "api.log")
            return 1 if starts.errors else 0

        pids = {
            "api": api.pid,
            "worker": worker.pid,
            "temporal": stack.processes[0].pid,
            "fake": args.fake_pid,
        }
        meter = CpuMeter(pids, stack.work / "pgdata")
        before, began = meter.sample(), time.perf_counter()
        sequential = await measure_sequential(client, setup, args.runs)
        after, elapsed = meter.sample(), time.perf_counter() - began
        cpu_sequential = {k: after[k] - before[k] for k in after}

        before, machine_before = meter.sample(), machine_cpu()
        load = await measure_load(client, setup, args.concurrency, args.duration)
        after, machine_after = meter.sample(), machine_cpu()
        # CPU over the window and the drain; per execution of all that completed.
        cpu_load = {k: after[k] - before[k] for k in after}
        load_elapsed = time.perf_counter() - load.started
        plain_rate = await measure_plain(stack, temporal, args.concurrency, args.duration)
        spent_sequential = await history_breakdown(temporal, sequential, HISTORY_SAMPLE)
        spent_load = await history_breakdown(temporal, load.in_window, HISTORY_SAMPLE)
        del temporal  # no close() in the SDK; the process ends with os._exit (sdk-python #300)

        counts = {}
        for status in ("completed", "failed", "pending", "running"):
            page = await client.get("/api/v1/executions", params={"status": status, "limit": 1})
            counts[status] = page.json().get("total")

    print(
        f"\none API process, one worker process, fake model with zero latency; "
        f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}; load average at the start "
        f"{args.load_average}"
    )
    report_starts(starts, stack.work / "api.log")
    report_runs(f"(b) {args.runs} sequential executions, execute -> done", sequential)
    print_cpu(cpu_sequential, sum(r.ok for r in sequential), elapsed)
    report_history(spent_sequential)
    mix = request_mix(stack.work / "api.log", load.wall_start, load.wall_end)
    report_load(load, mix, args.concurrency)
    print_cpu(cpu_load, sum(r.ok for r in load.runs), load_elapsed)
    busy = machine_after[0] - machine_before[0]
    total = machine_after[1] - machine_before[1]
    if total:
        print(f"  machine CPU busy meanwhile, all processes: {busy / total * 100:.0f}%")
    report_history(spent_load)
    rate = len(load.in_window) / args.duration
    print(
        f"\n(d) plain temporalio worker, one-activity workflow, {args.concurrency} in flight for "
        f"{args.duration:.0f} s: {plain_rate:.1f} workflows/s; executions/s of (c) / that: "
        f"{rate / plain_rate:.2f}"
    )
    print(f"\nexecutions by status per the API at the end: {counts}")
    failed = sum(not r.ok for r in sequential + load.runs) + starts.errors
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Agent execution latency and throughput.")
    parser.add_argument("--quick", action="store_true", help="a short run (about 30 s)")
    parser.add_argument(
        "--only-start", action="store_true", help="only (a), the start latency (about 20 s)"
    )
    parser.add_argument("--starts", type=int, help="timed start pairs in (a); default 200")
    parser.add_argument("--runs", type=int, help="sequential executions in (b); default 50")
    parser.add_argument("--duration", type=float, help="seconds of (c); default 60")
    parser.add_argument("--concurrency", type=int, default=16, help="executions in flight in (c)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed executions and starts")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and its logs")
    args = parser.parse_args()
    args.starts = args.starts or (30 if args.quick else 200)
    args.runs = args.runs or (10 if args.quick else 50)
    args.duration = args.duration or (10.0 if args.quick else 60.0)
    signal.signal(signal.SIGTERM, interrupt)

    stack = Stack(keep=args.keep)
    try:
        print(f"starting Postgres, Temporal, the fake model and the API in {stack.work} ...")
        sys.stdout.flush()
        stack.start_services()
        key = asyncio.run(seed(stack.database_url))
        fake_port = free_port()
        command = [sys.executable, "-m", "controlplane.devtools.fake_anthropic", "--zero-latency"]
        fake = stack.spawn([*command, "--port", str(fake_port)], "fake.log")
        wait_for_port(fake_port, timeout=30, process=fake)
        args.fake_url, args.fake_pid = f"http://127.0.0.1:{fake_port}", fake.pid
        port = free_port()
        api = stack.start_api(port, [])
        return asyncio.run(bench(stack, key, api, f"http://127.0.0.1:{port}", args))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
        for name in ("api.log", "worker.log"):
            print(f"--- {name}\n{stack.log_tail(name)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        stack.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    code = main()
    # The Temporal client's native runtime can crash at interpreter exit (sdk-python issue 300):
    # everything is stopped and printed, so flush and leave without finalizers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
