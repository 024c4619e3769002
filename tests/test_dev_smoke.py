"""`controlplane dev` end to end, as a user runs it: real Postgres, Temporal, API and worker
processes in a temporary home, on free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from controlplane.dev import pid_alive
from controlplane.services import free_port

RUNNING = "controlplane dev is running"


@dataclass
class Dev:
    home: Path
    port: int
    temporal_port: int
    ui_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
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
        ]

    def env(self) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in ("DATABASE_URL", "TEMPORAL_ADDRESS", "CONTROLPLANE_URL")
        }
        env["CONTROLPLANE_HOME"] = str(self.home)
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


def start(dev: Dev, name: str) -> Run:
    out, err = dev.home.parent / f"{name}.out", dev.home.parent / f"{name}.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(
            dev.args(), stdout=stdout, stderr=stderr, env=dev.env(), cwd=dev.home.parent
        )
    run = Run(process, out, err)
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


def test_dev_starts_restarts_and_stops(tmp_path: Path) -> None:
    dev = Dev(tmp_path / "home", free_port(), free_port(), free_port())
    key_file = dev.home / "dev-api-key"

    # First run: everything is created; the key is printed once and kept in a 0600 file.
    run = start(dev, "first")
    key = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key in run.stdout()
    pids = service_pids(dev)
    assert set(pids) == {"temporal", "api", "worker", "postgres"}
    assert all(pid_alive(pid) for pid in pids.values()), pids
    with client(dev, key) as http:
        default_queue(http)
        assert httpx.get(f"{dev.url}/api/ready").status_code == 200
    run.process.send_signal(signal.SIGTERM)
    assert wait_exit(run) == 0, run.stderr()
    assert_gone(pids)
    assert not (dev.home / "dev.pids").exists()
    assert "Traceback" not in run.stderr()

    # Second run: the same state and key; the key is not printed again. Revoke it.
    run = start(dev, "second")
    assert key_file.read_text().strip() == key
    assert key not in run.stdout()
    with client(dev, key) as http:
        queue = default_queue(http)
        assert queue["active_workers"] == 1
        keys = http.get("/api/v1/api-keys").json()["items"]
        (dev_key,) = [k for k in keys if key.startswith(k["prefix"])]
        assert http.delete(f"/api/v1/api-keys/{dev_key['id']}").status_code == 200
    run.process.send_signal(signal.SIGINT)
    assert wait_exit(run) == 0, run.stderr()

    # Third run: the revoked key is replaced and the new one shown. Then the worker dies:
    # dev says so, stops the rest and exits 1.
    run = start(dev, "third")
    new_key = key_file.read_text().strip()
    assert new_key != key
    assert new_key in run.stdout()
    assert "no longer worked" in run.stdout()
    with client(dev, new_key) as http:
        default_queue(http)
    pids = service_pids(dev)
    os.kill(pids["worker"], signal.SIGKILL)
    assert wait_exit(run) == 1
    message = run.stderr().strip()
    assert len(message.splitlines()) == 1, message
    assert "worker" in message
    assert str(dev.home / "logs" / "worker.log") in message
    assert_gone(pids)


def test_dev_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        dev = Dev(tmp_path / "home", free_port(), port, free_port())
        result = subprocess.run(dev.args(), env=dev.env(), capture_output=True, timeout=30)
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"port {port} is already in use" in lines[0]
    assert "--temporal-port" in lines[0]
    assert not (dev.home / "postgres").exists()
