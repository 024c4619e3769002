"""`controlplane dev` end to end, as a user runs it: real Postgres, Temporal, API and worker
processes (and with `--fake-llm` the fake Anthropic server) in a temporary home, on free ports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from controlplane.devtools.fake_anthropic import FakeAnthropicClient, text_reply
from controlplane.devtools.supervise import pid_alive
from controlplane.services import free_port
from controlplane.system.worker import HOUSEKEEPING_SCHEDULE

CHECKOUT = Path(__file__).resolve().parents[2]
RUNNING = "controlplane dev is running"
NO_KEY_NOTE = "ANTHROPIC_API_KEY is not set: executions will fail"


@dataclass
class Dev:
    home: Path
    port: int
    temporal_port: int
    ui_port: int
    runs: list[Run] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "controlplane.cli",
            "dev",
            "--port",
            str(self.port),
            "--temporal-port",
            str(self.temporal_port),
            "--ui-port",
            str(self.ui_port),
            *extra,
        ]

    def env(self) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if name
            not in (
                "DATABASE_URL",
                "TEMPORAL_ADDRESS",
                "CONTROLPLANE_URL",
                "ANTHROPIC_API_KEY",
                "ANTHROPIC_BASE_URL",
            )
        }
        env["CONTROLPLANE_HOME"] = str(self.home)
        # The processes run in a temporary directory, where `python -m controlplane.cli` would
        # import whatever checkout the venv's editable install points at: make it this one.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
        return env


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()


def diagnostics(dev: Dev, run: Run) -> str:
    """What dev and its children said, for a failure message."""
    parts = [f"dev exit code: {run.process.poll()}", "dev stderr:", run.stderr()[-3000:]]
    for log in sorted((dev.home / "logs").glob("*.log")):
        parts += [f"--- {log.name} (tail)", "\n".join(log.read_text().splitlines()[-15:])]
    return "\n".join(parts)


def start(dev: Dev, name: str, *extra: str) -> Run:
    out, err = dev.home.parent / f"{name}.out", dev.home.parent / f"{name}.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(
            dev.args(*extra), stdout=stdout, stderr=stderr, env=dev.env(), cwd=dev.home.parent
        )
    run = Run(process, out, err)
    dev.runs.append(run)
    deadline = time.monotonic() + 45
    while RUNNING not in run.stdout():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"dev did not start:\n{run.stdout()}\n{run.stderr()}")
        time.sleep(0.2)
    return run


def service_pids(dev: Dev) -> dict[str, int]:
    pids: dict[str, int] = json.loads((dev.home / "dev.pids").read_text())
    pids.pop("dev")
    postmaster = (dev.home / "postgres" / "postmaster.pid").read_text().splitlines()[0]
    pids["postgres"] = int(postmaster)
    return pids


def wait_exit(run: Run, timeout: float = 45) -> int:
    try:
        return run.process.wait(timeout)
    except subprocess.TimeoutExpired:
        run.process.kill()
        raise


def assert_gone(pids: dict[str, int]) -> None:
    deadline = time.monotonic() + 5
    while any(pid_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [name for name, pid in pids.items() if pid_alive(pid)], pids


def cli(dev: Dev, *args: str) -> subprocess.CompletedProcess[str]:
    """`controlplane <args>` in the directory holding the dev home, with its default home."""
    env = {name: value for name, value in dev.env().items() if name != "CONTROLPLANE_HOME"}
    command = [sys.executable, "-m", "controlplane.cli", *args]
    return subprocess.run(
        command, env=env, cwd=dev.home.parent, capture_output=True, text=True, timeout=60
    )


def client(dev: Dev, key: str) -> httpx.Client:
    return httpx.Client(base_url=dev.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def default_queue(http: httpx.Client) -> dict[str, object]:
    response = http.get("/api/v1/environments")
    assert response.status_code == 200, response.text
    environments = [e for e in response.json()["items"] if e["name"] == "default"]
    assert len(environments) == 1
    response = http.get(f"/api/v1/environments/{environments[0]['id']}/worker-queues")
    assert response.status_code == 200, response.text
    queues = [q for q in response.json()["items"] if q["name"] == "default"]
    assert len(queues) == 1
    queue: dict[str, object] = queues[0]
    return queue


def process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(entry.split("=", 1) for entry in raw.split("\0") if "=" in entry)


def loaded_libraries(pid: int) -> str:
    """The shared objects the process has mapped (its C extensions among them)."""
    return Path(f"/proc/{pid}/maps").read_text()


def start_agent(http: httpx.Client, queue_id: object, prompt: str) -> str:
    """Create a one-shot agent and start an execution of it on the queue; returns its id."""
    agent = http.post(
        "/api/v1/agents",
        json={
            "name": f"smoke-{uuid.uuid4().hex[:8]}",
            "model_id": "anthropic/claude-sonnet-4-5",
            "system_prompt": "You are a helpful assistant.",
            "configuration": {"one_shot": True},
        },
    )
    assert agent.status_code == 201, agent.text
    started = http.post(
        f"/api/v1/agents/{agent.json()['id']}/execute",
        json={"prompt": prompt, "worker_queue_id": queue_id},
    )
    assert started.status_code in (200, 201, 202), started.text
    execution_id: str = started.json()["execution_id"]
    return execution_id


def wait_execution(http: httpx.Client, execution_id: str, timeout: float) -> dict[str, object]:
    """The execution once it has ended: its event stream (which replays what already happened)
    closes after the terminal event."""
    path = f"/api/v1/executions/{execution_id}/stream"
    deadline = time.monotonic() + timeout
    with http.stream("GET", path, timeout=timeout) as events:
        assert events.status_code == 200, events.read()
        for _ in events.iter_lines():
            assert time.monotonic() < deadline, f"execution {execution_id} still running"
    execution: dict[str, object] = http.get(f"/api/v1/executions/{execution_id}").json()
    return execution


def run_agent(http: httpx.Client, queue_id: object, prompt: str) -> dict[str, object]:
    """Create a one-shot agent, execute it on the queue and wait for the execution to end."""
    return wait_execution(http, start_agent(http, queue_id, prompt), timeout=20)


def wait_for(
    what: str,
    condition: Callable[[], object],
    dev: Dev,
    run: Run,
    timeout: float,
    interval: float = 0.2,
) -> None:
    """Poll `condition` until it holds. Conditions that call the API poll slower, to stay
    within the key's rate limit (100 requests a minute)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{diagnostics(dev, run)}")
        time.sleep(interval)


def worker_registered(http: httpx.Client, queue_id: object, pid: int) -> bool:
    """Whether the worker process `pid` is a live worker of the queue."""
    workers = http.get(f"/api/v1/worker-queues/{queue_id}/workers").json()["items"]
    return any(w["is_active"] and w["system_info"]["pid"] == pid for w in workers)


def housekeeping_scheduled(dev: Dev) -> bool:
    """Whether the dev Temporal holds the system worker's housekeeping Schedule."""

    async def look() -> bool:
        client = await Client.connect(f"127.0.0.1:{dev.temporal_port}")
        try:
            await client.get_schedule_handle(HOUSEKEEPING_SCHEDULE).describe()
        except RPCError:
            return False
        return True

    return asyncio.run(look())


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    """A dev home at the default place (.controlplane in the working directory), on free ports.
    A run the test left running (it failed) is stopped, so its services do not outlive it."""
    dev = Dev(tmp_path / ".controlplane", free_port(), free_port(), free_port())
    yield dev
    for run in dev.runs:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGTERM)
            try:
                run.process.wait(60)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()


def test_dev_starts_restarts_and_stops(dev: Dev) -> None:
    key_file = dev.home / "dev-api-key"

    # First run: everything is created; the key is printed once and kept in a 0600 file.
    run = start(dev, "first")
    key = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key in run.stdout()
    assert NO_KEY_NOTE in run.stdout()
    pids = service_pids(dev)
    assert set(pids) == {"temporal", "api", "system", "worker", "postgres"}
    assert all(pid_alive(pid) for pid in pids.values()), pids
    with client(dev, key) as http:
        # The summary is printed once the worker serves the queue.
        assert worker_registered(http, default_queue(http)["id"], pids["worker"])
        assert httpx.get(f"{dev.url}/api/ready").status_code == 200
    # The API serves with uvicorn[standard]'s C parser and event loop.
    api_libraries = loaded_libraries(pids["api"])
    assert "/httptools/" in api_libraries and "/uvloop/" in api_libraries
    # The system worker has the database; the queue's worker does not.
    assert "DATABASE_URL" in process_env(pids["system"])
    assert "DATABASE_URL" not in process_env(pids["worker"])
    # It made the housekeeping Schedule.
    wait_for(
        "the housekeeping schedule",
        lambda: housekeeping_scheduled(dev),
        dev,
        run,
        timeout=30,
        interval=0.5,
    )
    # The CLI beside it, as a new user runs it (no DATABASE_URL, no CONTROLPLANE_HOME), finds the
    # dev stack through its dev.json, and says so.
    record_file = dev.home / "dev.json"
    assert record_file.stat().st_mode & 0o777 == 0o600
    assert json.loads(record_file.read_text())["pid"] == run.process.pid
    created = cli(dev, "orgs", "create", "acme")
    assert created.returncode == 0, created.stderr
    assert created.stderr.strip() == (
        f"controlplane: using the dev stack's database in .controlplane (pid {run.process.pid})"
    )
    assert "Temporal namespace org-acme is ready" in created.stdout
    run.process.send_signal(signal.SIGTERM)
    assert wait_exit(run) == 0, run.stderr()
    assert_gone(pids)
    assert not (dev.home / "dev.pids").exists()
    assert not record_file.exists()
    assert "Traceback" not in run.stderr()
    refused = cli(dev, "orgs", "list")
    assert refused.returncode == 1
    assert "no dev stack is running in .controlplane" in refused.stderr, refused.stderr

    # Second run, with --fake-llm: the same state and key; the key is not printed again. An
    # agent runs to completion on the fake's default reply. Revoke the key.
    fake_port = free_port()
    run = start(dev, "second", "--fake-llm", "--fake-llm-port", str(fake_port))
    assert key_file.read_text().strip() == key
    assert key not in run.stdout()
    assert f"fake Anthropic server at http://127.0.0.1:{fake_port}" in run.stdout()
    assert NO_KEY_NOTE not in run.stdout()
    pids = service_pids(dev)
    assert set(pids) == {"temporal", "api", "system", "fake", "worker", "postgres"}
    # Only the worker is pointed at the fake. It holds its keys in memory only: the model key
    # it was given in its environment is scrubbed, and its worker key comes from a 0600 file.
    worker_env, api_env = process_env(pids["worker"]), process_env(pids["api"])
    assert worker_env["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{fake_port}"
    assert "ANTHROPIC_API_KEY" not in worker_env and "CONTROLPLANE_API_KEY" not in worker_env
    assert key not in " ".join(worker_env.values())
    worker_key_file = dev.home / "dev-worker-key"
    assert worker_key_file.stat().st_mode & 0o777 == 0o600
    assert worker_key_file.read_text().strip() != key
    assert "ANTHROPIC_BASE_URL" not in api_env and "ANTHROPIC_API_KEY" not in api_env
    # The system worker (the planner) calls the fake too.
    assert process_env(pids["system"])["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{fake_port}"
    # Webhooks to a receiver on this machine work in development, from the API (test sends)
    # and the system worker (deliveries).
    system_env = process_env(pids["system"])
    assert api_env["CONTROLPLANE_WEBHOOK_ALLOW_PRIVATE"] == "true"
    assert system_env["CONTROLPLANE_WEBHOOK_ALLOW_PRIVATE"] == "true"
    with client(dev, key) as http:
        queue = default_queue(http)
        assert queue["active_workers"] == 1
        assert worker_registered(http, queue["id"], pids["worker"])
        try:
            execution = run_agent(http, queue["id"], "Say hello")
        except httpx.HTTPError as error:
            raise AssertionError(diagnostics(dev, run)) from error
        assert execution["status"] == "completed", execution
        assert execution["response"] == "Fake reply to: Say hello"

        # Task planning works in dev: the system worker plans with the fake.
        wait_for(
            "the planner ready",
            lambda: http.get("/api/v1/tasks/plan/health").json()["system_worker"],
            dev,
            run,
            timeout=30,
            interval=0.5,
        )
        planned = http.post("/api/v1/tasks/plan", json={"description": "Greet"}, timeout=60)
        assert planned.status_code == 200, (planned.text, diagnostics(dev, run))
        assert planned.json()["plan"]["recommended_execution"]["entity_type"] == "agent"

        # The worker is killed mid-answer: dev starts another one, and the execution finishes
        # on it once Temporal sees the first one's heartbeats stop (20 s for a model call).
        fake = FakeAnthropicClient(f"http://127.0.0.1:{fake_port}")
        token = uuid.uuid4().hex
        slow = text_reply("never finished " * 20, delay_per_chunk_ms=1000)
        fake.script(token, [slow, text_reply("Finished by the new worker")])
        execution_id = start_agent(http, queue["id"], f"Answer slowly {token}")
        wait_for("the model call", lambda: fake.requests(token), dev, run, timeout=20, interval=0.5)
        os.kill(pids["worker"], signal.SIGKILL)
        wait_for(
            "the restart line",
            lambda: "the worker exited with code -9 (SIGKILL)" in run.stderr(),
            dev,
            run,
            timeout=10,
        )
        assert "restarting it in 1 s" in run.stderr()
        wait_for(
            "a new worker's pid",
            lambda: service_pids(dev)["worker"] != pids["worker"],
            dev,
            run,
            timeout=10,
        )
        new_pids = service_pids(dev)
        assert new_pids == {**pids, "worker": new_pids["worker"]}, (pids, new_pids)
        wait_for(
            "the new worker registered",
            lambda: worker_registered(http, queue["id"], new_pids["worker"]),
            dev,
            run,
            timeout=30,
            interval=1,
        )
        wait_for(
            "the restart announced",
            lambda: f"worker restarted (pid {new_pids['worker']})" in run.stdout(),
            dev,
            run,
            timeout=10,
        )
        execution = wait_execution(http, execution_id, timeout=60)
        assert execution["status"] == "completed", (execution, diagnostics(dev, run))
        assert execution["response"] == "Finished by the new worker"
        assert len(fake.requests(token)) == 2
        assert run.process.poll() is None
        pids = new_pids
        keys = http.get("/api/v1/api-keys").json()["items"]
        (dev_key,) = [k for k in keys if key.startswith(k["prefix"])]
        assert http.delete(f"/api/v1/api-keys/{dev_key['id']}").status_code == 200
    run.process.send_signal(signal.SIGINT)
    assert wait_exit(run) == 0, run.stderr()
    assert_gone(pids)
    stopped = [line.strip() for line in run.stdout().splitlines() if line.endswith(" stopped")]
    assert stopped[:2] == ["worker stopped", "fake Anthropic server stopped"], stopped
    assert "Traceback" not in run.stderr()

    # Third run: the revoked key is replaced and the new one shown. Then the API dies: dev says
    # so, stops the rest and exits 1.
    run = start(dev, "third")
    new_key = key_file.read_text().strip()
    assert new_key != key
    assert new_key in run.stdout()
    assert "no longer worked" in run.stdout()
    with client(dev, new_key) as http:
        default_queue(http)
    pids = service_pids(dev)
    os.kill(pids["api"], signal.SIGKILL)
    assert wait_exit(run) == 1
    message = run.stderr().strip()
    assert len(message.splitlines()) == 1, message
    assert "the API exited unexpectedly with code -9" in message
    assert str(dev.home / "logs" / "api.log") in message
    assert_gone(pids)

    # Fourth run: the system worker dies, and so does the run, saying so.
    run = start(dev, "fourth")
    pids = service_pids(dev)
    os.kill(pids["system"], signal.SIGKILL)
    assert wait_exit(run) == 1
    message = run.stderr().strip()
    assert "the system worker exited unexpectedly with code -9" in message, message
    assert str(dev.home / "logs" / "system-worker.log") in message
    assert_gone(pids)


@pytest.mark.parametrize("flag", ["--temporal-port", "--fake-llm-port"])
def test_dev_port_in_use(tmp_path: Path, flag: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        if flag == "--temporal-port":
            dev = Dev(tmp_path / "home", free_port(), port, free_port())
            args = dev.args()
        else:
            dev = Dev(tmp_path / "home", free_port(), free_port(), free_port())
            args = dev.args("--fake-llm", "--fake-llm-port", str(port))
        result = subprocess.run(args, env=dev.env(), capture_output=True, timeout=30)
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"port {port} is already in use" in lines[0]
    assert flag in lines[0]
    assert not (dev.home / "postgres").exists()
