"""The stack the benchmarks start in a temp dir: embedded Postgres, a headless Temporal dev server,
API processes and other children on loopback, stopped in reverse order at the end. Also the
small measuring pieces the benchmarks share (percentiles, CPU time per process from /proc)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import asyncpg
import httpx

from controlplane.schema import apply_schema_at
from controlplane.services import EmbeddedPostgres, free_port, start_temporal, stop_process
from controlplane.settings import REPO_ROOT
from controlplane.tenancy import create_key, create_org

ORG = "bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so the `finally` that stops the stack runs."""
    raise KeyboardInterrupt


class CpuMeter:
    """CPU seconds used so far by named processes, all Postgres processes and this process."""

    def __init__(self, pids: dict[str, int], pgdata: Path) -> None:
        self.pids = pids
        self.pgdata = pgdata
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _stat(self, pid: int) -> list[str] | None:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        return raw.rsplit(")", 1)[1].split()  # the fields after the command name

    def _seconds(self, pid: int) -> float:
        fields = self._stat(pid)
        return (int(fields[11]) + int(fields[12])) / self.ticks if fields else 0.0

    def _postgres_pids(self) -> list[int]:
        try:
            postmaster = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        pids = [postmaster]
        for entry in Path("/proc").iterdir():
            fields = self._stat(int(entry.name)) if entry.name.isdigit() else None
            if fields and int(fields[1]) == postmaster:
                pids.append(int(entry.name))
        return pids

    def sample(self) -> dict[str, float]:
        if not Path("/proc/self/stat").exists():
            return {}
        seconds = {name: self._seconds(pid) for name, pid in self.pids.items()}
        seconds["postgres"] = sum(self._seconds(pid) for pid in self._postgres_pids())
        seconds["client"] = time.process_time()
        return seconds


def machine_cpu() -> tuple[float, float]:
    """Busy and total CPU time of the whole machine so far (all CPUs, in clock ticks), from
    /proc/stat: other jobs on a shared machine show as busy time that no process of ours used."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return float(total - idle), float(total)


async def seed(database_url: str, *, apply_schema: bool = True) -> str:
    """The schema (unless the API process has applied its own), the bench organization (a limit
    the rate limiter never reaches) and an admin key of it."""
    if apply_schema:
        await apply_schema_at(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await create_org(conn, ORG, rate_limit_per_minute=100_000_000)
        key = await create_key(conn, ORG, role="admin", name="bench admin")
    finally:
        await conn.close()
    return key.key


async def wait_ready(base_url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the API exited with code {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/api/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the API was not ready within {timeout:.0f} s")


class Stack:
    """Children started in `work`, stopped in reverse order by `stop()`."""

    def __init__(self, keep: bool = False) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="cp-bench-"))
        self.keep = keep
        self.postgres = EmbeddedPostgres(self.work / "pgdata")
        self.processes: list[subprocess.Popen[bytes]] = []
        self.database_url = ""
        self.temporal_port = 0

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    def start_services(self) -> None:
        """Postgres, then Temporal (SQLite in WAL mode, as `controlplane dev` runs it)."""
        self.database_url = self.postgres.start()
        self.temporal_port = free_port()
        temporal = start_temporal(
            self.work / "temporal.db",
            port=self.temporal_port,
            ui_port=None,
            log_file=self.work / "temporal.log",
        )
        self.processes.append(temporal)

    def spawn(
        self,
        command: list[str],
        log_name: str,
        env: dict[str, str] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> subprocess.Popen[bytes]:
        """A child in its own session (Ctrl-C reaches only us; we stop it), stderr to a log."""
        with open(self.work / log_name, "wb") as log:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def start_api(
        self,
        port: int,
        extra: list[str],
        env: dict[str, str] | None = None,
        source: Path = REPO_ROOT,
        database_url: str = "",
        log_name: str = "api.log",
    ) -> subprocess.Popen[bytes]:
        """One uvicorn process of the API; its JSON request log goes to `log_name`. `source`: the
        checkout whose API runs (another one, e.g. `git archive` of a base commit, to compare);
        it applies that checkout's migrations at start-up, to `database_url` (default: the
        server's first database)."""
        api_env = os.environ | {
            "DATABASE_URL": database_url or self.database_url,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "CONTROLPLANE_HOME": str(self.work / "home"),
            # First on the path: the venv's editable install may point at another checkout.
            "PYTHONPATH": str(source),
            **(env or {}),
        }
        command = [sys.executable, "-m", "uvicorn", "--factory", "api.asgi:app_from_env"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *extra]
        return self.spawn(command, log_name, api_env, cwd=source)

    async def create_database(self, name: str) -> str:
        """Another database on the Postgres server; returns its URL."""
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        head, sep, query = self.database_url.partition("?")
        return f"{head.rsplit('/', 1)[0]}/{name}{sep}{query}"

    def log_tail(self, name: str, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.work / name).read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        self.postgres.stop()
        if self.keep:
            print(f"kept {self.work}", file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)
