"""What coordinating a team costs: a team of 3 in `parallel` mode (no model: the answers are
joined) against the slowest of its members run alone, with a model that answers at once.

    .venv/bin/python bench/team_overhead.py [--rounds N] [--chunk-delay-ms MS]

Starts in a temp dir an embedded Postgres, a headless Temporal dev server, the fake Anthropic
server (`--zero-latency`), one API process and one worker process. Each round runs the three
members one after another as one-shot agent executions, then the team once, each followed over
SSE from `POST .../execute` to `done`. The team's run records three member runs with the control
plane and runs them as child workflows at once; the overhead is its wall time over the slowest
member's in the same round (a ratio: the machine is noisy, the rounds interleave). With a
zero-latency model every run is pure CPU, so three members at once on two cores also compete
for it: the sum of the members alone is printed beside it. `--chunk-delay-ms` gives the model a
latency (per streamed chunk), which is what a real team waits on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any

import httpx
from _stack import Stack, interrupt, percentile, seed, wait_ready

from controlplane.services import free_port, wait_for_port

MODEL = "anthropic/claude-sonnet-4-5"
MEMBERS = 3


async def run_to_done(client: httpx.AsyncClient, url: str, queue_id: str) -> float:
    """Seconds from sending the execute POST to the stream's `done`."""
    sent = time.perf_counter()
    started = await client.post(url, json={"prompt": "Say hello.", "worker_queue_id": queue_id})
    if started.status_code != 200:
        raise RuntimeError(f"POST {url}: {started.status_code} {started.text[:200]}")
    stream = f"/api/v1/executions/{started.json()['execution_id']}/stream"
    async with client.stream("GET", stream) as response:
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("done", "error"):
                if event == "error":
                    raise RuntimeError(f"{url} ended with an error: {line[:200]}")
                return time.perf_counter() - sent
    raise RuntimeError(f"{url}: the stream ended without done")


async def created(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(url, json=body)
    if response.status_code != 201:
        raise RuntimeError(f"POST {url}: {response.status_code} {response.text[:200]}")
    result: dict[str, Any] = response.json()
    return result


async def bench(stack: Stack, key: str, api: Any, base_url: str, args: argparse.Namespace) -> int:
    await wait_ready(base_url, api, timeout=60)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        environment = await created(client, "/api/v1/environments", {"name": "bench"})
        queue = await created(
            client, f"/api/v1/environments/{environment['id']}/worker-queues", {"name": "q"}
        )
        members = [
            await created(
                client,
                "/api/v1/agents",
                {"name": f"member-{i}", "model_id": MODEL, "configuration": {"one_shot": True}},
            )
            for i in range(MEMBERS)
        ]
        team = await created(
            client,
            "/api/v1/teams",
            {
                "name": "bench-team",
                "coordination_type": "parallel",
                "configuration": {"member_ids": [m["id"] for m in members], "one_shot": True},
            },
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

        team_url = f"/api/v1/teams/{team['id']}/execute"
        member_urls = [f"/api/v1/agents/{m['id']}/execute" for m in members]
        await run_to_done(client, team_url, queue["id"])  # warm-up
        slowest, summed, teams, ratios = [], [], [], []
        for _ in range(args.rounds):
            alone = [await run_to_done(client, url, queue["id"]) for url in member_urls]
            together = await run_to_done(client, team_url, queue["id"])
            slowest.append(max(alone))
            summed.append(sum(alone))
            teams.append(together)
            ratios.append(together / max(alone))
    model = f"{args.chunk_delay_ms} ms per chunk" if args.chunk_delay_ms else "zero-latency"
    print(f"team of {MEMBERS}, parallel, {model} model, {args.rounds} rounds")
    print(f"  slowest member alone   p50 {percentile(slowest, 0.5) * 1000:7.1f} ms")
    print(f"  members one by one     p50 {percentile(summed, 0.5) * 1000:7.1f} ms")
    print(f"  team (3 at once)       p50 {percentile(teams, 0.5) * 1000:7.1f} ms")
    print(f"  team / slowest member  p50 {percentile(ratios, 0.5):7.2f}x")
    overhead = (percentile(teams, 0.5) - percentile(slowest, 0.5)) * 1000
    print(f"  coordination overhead  p50 {overhead:7.1f} ms")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--chunk-delay-ms", type=int, default=0, help="model latency per chunk")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    stack = Stack(keep=args.keep)
    try:
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
        return asyncio.run(bench(stack, key, api, f"http://127.0.0.1:{port}", args))
    except (KeyboardInterrupt, RuntimeError) as error:
        print(f"bench failed: {error}", file=sys.stderr)
        for name in ("api.log", "worker.log"):
            print(f"--- {name}\n{stack.log_tail(name)}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
