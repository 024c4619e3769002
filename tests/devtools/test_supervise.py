"""The dev stack's supervision rules, on real (tiny) processes: restartable children come back
with backoff, fatal ones end the run."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.devtools.supervise import Backoff, Child, Restart, Supervisor, describe_exit


def sh(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", script])


def check_until(
    supervisor: Supervisor, done: Callable[[], bool], timeout: float = 10
) -> Child | None:
    """Call check() until `done()` holds or a fatal child exited; returns that child."""
    deadline = time.monotonic() + timeout
    while not done():
        fatal = supervisor.check()
        if fatal is not None:
            return fatal
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return None


def test_backoff_doubles_to_its_cap_and_starts_over_after_a_stable_run() -> None:
    backoff = Backoff(first=1, longest=30, stable_after=60)
    delays: list[float] = []
    previous: float | None = None
    for _ in range(7):
        previous = backoff.delay(previous, uptime=2)
        delays.append(previous)
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(30, uptime=60) == 1


def test_exit_descriptions_name_the_signal() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-9) == "exited with code -9 (SIGKILL)"
    assert (
        describe_exit(-15, "exited unexpectedly") == "exited unexpectedly with code -15 (SIGTERM)"
    )


def test_a_restartable_child_is_started_again_with_growing_delays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    launched: list[subprocess.Popen[bytes]] = []

    def launch() -> subprocess.Popen[bytes]:
        # Dies at once twice, then stays up.
        launched.append(sh("exit 3" if len(launched) < 2 else "sleep 30"))
        return launched[-1]

    restarted: list[int] = []
    supervisor = Supervisor(on_restart=lambda child: restarted.append(child.process.pid))
    backoff = Backoff(first=0.05, longest=0.1, stable_after=60)
    child = Child("worker", launch(), tmp_path / "worker.log", Restart(launch, backoff))
    supervisor.add(child)
    try:
        assert check_until(supervisor, lambda: len(launched) == 3) is None
        assert child.process is launched[2]
        assert restarted == [launched[1].pid, launched[2].pid]
        out, err = capsys.readouterr()
        assert err.splitlines() == [
            f"controlplane dev: the worker exited with code 3 (see {child.log_file}); "
            "restarting it in 0.05 s",
            f"controlplane dev: the worker exited with code 3 (see {child.log_file}); "
            "restarting it in 0.1 s",
        ]
        assert f"worker restarted (pid {launched[2].pid})" in out
        assert supervisor.check() is None  # up, nothing to say
        assert capsys.readouterr() == ("", "")
    finally:
        for process in launched:
            process.kill()
            process.wait()


def test_a_restarted_child_is_announced_once_ready(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    launched: list[subprocess.Popen[bytes]] = []
    ready_now: list[bool] = [False]

    def launch() -> subprocess.Popen[bytes]:
        launched.append(sh("exit 1" if not launched else "sleep 30"))
        return launched[-1]

    def ready(process: subprocess.Popen[bytes]) -> str | None:
        return "serving" if ready_now[0] else None

    supervisor = Supervisor(on_restart=lambda child: None)
    restart = Restart(launch, Backoff(first=0.01), ready)
    child = Child("worker", launch(), tmp_path / "worker.log", restart)
    supervisor.add(child)
    try:
        check_until(supervisor, lambda: len(launched) == 2)
        supervisor.check()
        assert "restarted" not in capsys.readouterr().out
        ready_now[0] = True
        check_until(supervisor, lambda: not child.announce)
        assert capsys.readouterr().out == f"  worker restarted (pid {launched[1].pid}), serving\n"
    finally:
        for process in launched:
            process.kill()
            process.wait()


def test_a_fatal_child_ends_the_run_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    supervisor = Supervisor(on_restart=lambda child: None)
    api = Child("API", sh("exit 2"), tmp_path / "api.log")
    supervisor.add(api)
    assert check_until(supervisor, lambda: False) is api
    assert capsys.readouterr().err == (
        f"controlplane dev: the API exited unexpectedly with code 2 (see {api.log_file}); "
        "stopping the rest\n"
    )
