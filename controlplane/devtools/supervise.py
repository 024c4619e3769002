"""How `controlplane dev` watches the processes it runs.

Each child is declared, when it is started, fatal or restartable:

- fatal (Temporal, the API, the system worker, the fake Anthropic server): nothing works
  without it, so its exit ends the run, with one line saying which process died and where its
  log is;
- restartable (a worker): Temporal hands the work of a dead worker to the next one polling its
  queue, so the child is started again, after a delay that grows while it keeps dying.

Postgres is watched too, but it is not a child (pg_ctl starts it as a daemon): see
`DevRun.serve`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# How often a restarted child's `ready` probe is asked, until it answers.
READY_PROBE_INTERVAL = 1.0


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """Whether `pid` runs (zombies count as gone) and, where /proc tells, its command line
    contains `marker`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True
    try:
        if "\nState:\tZ" in (proc / "status").read_text():
            return False
        if marker is not None:
            return marker in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return True


def describe_exit(code: int, verb: str = "exited") -> str:
    """`exited with code -9 (SIGKILL)`: Popen's return code, with the signal's name if a signal
    ended the process."""
    if code < 0:
        try:
            return f"{verb} with code {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"{verb} with code {code}"


@dataclass(frozen=True)
class Backoff:
    """The wait before a restart: `first`, doubling at each exit up to `longest`. A child that
    stayed up `stable_after` seconds starts from `first` again: its exit was a one-off, not a
    crash loop."""

    first: float = 1.0
    longest: float = 30.0
    stable_after: float = 60.0

    def delay(self, previous: float | None, uptime: float) -> float:
        """The wait before starting again a child that ran for `uptime` seconds; `previous` is
        the wait before its last start (None: it never restarted)."""
        if previous is None or uptime >= self.stable_after:
            return self.first
        return min(previous * 2, self.longest)


@dataclass(frozen=True)
class Restart:
    """Declares a child restartable. `launch` starts it (again); `ready`, if given, tells when a
    restarted child serves again: None until then, then a few words for the terminal."""

    launch: Callable[[], subprocess.Popen[bytes]]
    backoff: Backoff = Backoff()
    ready: Callable[[subprocess.Popen[bytes]], str | None] | None = None


@dataclass
class Child:
    """A process dev mode started and watches. `restart` None: its exit ends the run."""

    name: str
    process: subprocess.Popen[bytes]
    log_file: Path
    restart: Restart | None = None
    started_at: float = field(default_factory=time.monotonic)
    # Restart state: the wait before the latest start, when the next start is due (set while
    # the child is down), and whether its return is still to be announced.
    last_delay: float | None = None
    restart_at: float | None = None
    announce: bool = False
    next_probe: float = 0.0

    @property
    def pid_key(self) -> str:
        """Its name in dev.pids: `worker`, `system`, `api`, `temporal`, `fake`."""
        return self.name.split()[0].lower()


def _tell(message: str) -> None:
    print(f"controlplane dev: {message}", file=sys.stderr, flush=True)


def _say(message: str) -> None:
    print(message, flush=True)


class Supervisor:
    """The children of one dev run. `check()` is called in a loop; `on_restart` is told of
    every restarted child (to record its new pid)."""

    def __init__(self, on_restart: Callable[[Child], None]) -> None:
        self.children: list[Child] = []
        self.on_restart = on_restart

    def add(self, child: Child) -> None:
        self.children.append(child)

    def check(self) -> Child | None:
        """One look at every child: a restartable child that exited is scheduled for a restart
        and started again when its wait is over. Returns a fatal child that exited, after
        saying so: the run must end."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._start_again(child)
                continue
            code = child.process.poll()
            if code is None:
                self._announce_if_ready(child, now)
                continue
            if child.restart is None:
                _tell(
                    f"the {child.name} {describe_exit(code, 'exited unexpectedly')} "
                    f"(see {child.log_file}); stopping the rest"
                )
                return child
            delay = child.restart.backoff.delay(child.last_delay, now - child.started_at)
            child.last_delay, child.restart_at, child.announce = delay, now + delay, False
            _tell(
                f"the {child.name} {describe_exit(code)} (see {child.log_file}); "
                f"restarting it in {delay:g} s"
            )
        return None

    def _start_again(self, child: Child) -> None:
        assert child.restart is not None
        child.process = child.restart.launch()
        child.started_at = time.monotonic()
        child.restart_at = None
        self.on_restart(child)
        if child.restart.ready is None:
            _say(f"  {child.name} restarted (pid {child.process.pid})")
        else:
            child.announce, child.next_probe = True, 0.0

    def _announce_if_ready(self, child: Child, now: float) -> None:
        if not child.announce or child.restart is None or child.restart.ready is None:
            return
        if now < child.next_probe:
            return
        child.next_probe = now + READY_PROBE_INTERVAL
        note = child.restart.ready(child.process)
        if note is not None:
            child.announce = False
            _say(f"  {child.name} restarted (pid {child.process.pid}), {note}")
