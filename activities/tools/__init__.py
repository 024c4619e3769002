"""Built-in tools that really run on the worker: `shell`, `file_system`, `python`, `http`, `sleep`.

Each tool is `async def run(name, arguments, config, *, workspace, env) -> ToolResult` and is safe
by construction: it checks its arguments against its configuration before it does anything, and
a refusal is an error result for the model, never an exception. Processes get a minimal
environment (PATH, HOME = the workspace, LANG) plus the execution environment's variables,
never the worker's own (no CONTROLPLANE_API_KEY), and die with their whole process group on
timeout, on an output cap, or when the activity is cancelled. Before the first tool process
starts, the worker makes itself non-dumpable so that tools cannot read its environment or memory
through /proc (`protect_worker_process`). Every directory a tool is
configured with (`working_dir`, `base_dir`) lies inside the execution's workspace
(`confined_dir`), and every output is text Postgres can store: NUL bytes are escaped as `\\x00`
(`nul_free`), since the output travels as JSON into a text column that cannot hold them.

Configuration keys and defaults follow controlplane/tool_catalogue.py; each module applies its
own defaults, so a skill saved with a partial configuration still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
TRUNCATED = "[truncated]"


@dataclass
class ToolResult:
    output: str
    is_error: bool = False


class ToolRefused(Exception):
    """A call a tool will not run (bad arguments or configuration, a path, command or host it
    refuses). The message goes back to the model as an error result."""


def tool_env(workspace: Path, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The environment of a tool process: PATH, HOME and LANG, then the execution environment
    (its variables and secrets by name). Nothing else of the worker's environment."""
    env = {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "HOME": str(workspace),
        "LANG": os.environ.get("LANG") or "C.UTF-8",
    }
    for name, value in (extra or {}).items():
        if value is not None:
            env[str(name)] = str(value)
    return env


NUL_ESCAPE = "\\x00"


def nul_free(text: str) -> str:
    """`text` without NUL characters (each shown as `\\x00`): Postgres text cannot hold them, and
    a tool printing one must not fail the run that reports its output."""
    return text.replace("\0", NUL_ESCAPE) if "\0" in text else text


def confined_dir(configured: str | None, workspace: Path, key: str) -> Path:
    """The directory a tool is configured with (`working_dir`, `base_dir`), created if missing:
    relative ones resolve under the workspace; any that resolves outside it (absolute, `..`, a
    symlink) is refused. None or empty: the workspace itself."""
    workspace.mkdir(parents=True, exist_ok=True)
    if not configured:
        return workspace
    if "\0" in configured:
        raise ToolRefused(f"{key} contains a NUL byte")
    root = os.path.realpath(workspace)

    def inside(path: str) -> bool:
        return path == root or path.startswith(root.rstrip(os.sep) + os.sep)

    real = os.path.realpath(os.path.join(root, configured))
    if not inside(real):
        raise ToolRefused(f"{key} '{configured}' is outside the execution's workspace")
    try:
        os.makedirs(real, exist_ok=True)
    except OSError as error:
        raise ToolRefused(f"{key} '{configured}' cannot be created: {error.strerror}") from None
    real = os.path.realpath(real)  # a link swapped in meanwhile
    if not inside(real) or not os.path.isdir(real):
        raise ToolRefused(f"{key} '{configured}' is not a directory inside the workspace")
    return Path(real)


def cap_text(text: str, max_bytes: int) -> tuple[str, bool]:
    """`text` cut to at most `max_bytes` of UTF-8, and whether it was cut."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode(errors="ignore"), True


class Config:
    """Typed reads of a tool's configuration with defaults; a wrong type is a refusal."""

    def __init__(self, raw: Mapping[str, Any] | None) -> None:
        self.raw = dict(raw or {})

    def number(self, key: str, default: float, minimum: float = 0) -> float:
        value = self.raw.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ToolRefused(f"configuration '{key}' must be a number >= {minimum}")
        return float(value)

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        return int(self.number(key, default, minimum))

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ToolRefused(f"configuration '{key}' must be true or false")
        return value

    def text(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ToolRefused(f"configuration '{key}' must be a string")
        return value

    def strings(self, key: str, default: list[str]) -> list[str]:
        value = self.raw.get(key)
        if value is None:
            return list(default)
        if isinstance(value, str):  # a comma-separated list, as forms often send
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ToolRefused(f"configuration '{key}' must be a list of strings")
        return [v.strip() for v in value if v.strip()]


def argument(arguments: Mapping[str, Any], name: str, default: str | None = None) -> str:
    """A required (or defaulted) string argument of a tool call."""
    value = arguments.get(name, default)
    if value is None:
        raise ToolRefused(f"missing argument '{name}'")
    if not isinstance(value, str):
        raise ToolRefused(f"argument '{name}' must be a string")
    return value


@dataclass
class ProcessResult:
    output: bytes
    exit_code: int | None
    truncated: bool
    timed_out: bool

    def text(self, timeout: float, max_output_bytes: int) -> ToolResult:
        output = nul_free(self.output.decode(errors="replace"))
        notes = []
        if self.truncated:
            notes.append(f"{TRUNCATED} output exceeded {max_output_bytes} bytes; process stopped")
        if self.timed_out:
            notes.append(f"[timed out after {timeout:g}s; process killed]")
        elif not self.truncated and self.exit_code:
            notes.append(f"[exit code {self.exit_code}]")
        if notes:
            output = (output.rstrip("\n") + "\n" if output else "") + "\n".join(notes)
        failed = self.timed_out or (not self.truncated and self.exit_code != 0)
        return ToolResult(output, is_error=failed)


PR_SET_DUMPABLE = 4


@functools.cache
def protect_worker_process() -> None:
    """Make the worker process non-dumpable, once, before its first tool process starts.

    A tool is the worker's child and runs as the same user, so without this it could read
    `/proc/<worker>/environ` (the worker's own CONTROLPLANE_API_KEY and the rest of its
    environment), its command line, memory and open descriptors. A non-dumpable process's /proc
    entries are readable only with CAP_SYS_PTRACE, which an unprivileged worker's tools lack. (A
    worker running as root gives its tools every capability: this cannot help there.) The cost:
    no core dumps, and attaching a debugger to the worker needs that capability too."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


async def _exited(process: asyncio.subprocess.Process) -> None:
    """Until the process itself exits. (`Process.wait()` also waits for its pipes to close,
    which a background child keeps open.)"""
    delay = 0.001
    while process.returncode is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_process(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    time_limit: float,
    max_output_bytes: int,
    stdin: bytes | None = None,
) -> ProcessResult:
    """Run `argv` in its own session (cwd created if missing) with stdout and stderr merged,
    reading at most `max_output_bytes`. On timeout, on the cap, on cancellation and when the
    process ends, its whole process group is killed: nothing it started in the background
    outlives it. The worker is made non-dumpable first (`protect_worker_process`)."""
    protect_worker_process()
    _make_dir(cwd)
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    output = bytearray()
    truncated = timed_out = False

    async def feed() -> None:
        assert process.stdin is not None and stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(stdin)
            await process.stdin.drain()
        process.stdin.close()

    async def read() -> None:
        nonlocal truncated
        assert process.stdout is not None
        while chunk := await process.stdout.read(65536):
            room = max_output_bytes - len(output)
            if len(chunk) > room:
                output.extend(chunk[:room])
                truncated = True
                _kill_group(process.pid)
                return
            output.extend(chunk)

    reader = asyncio.create_task(read())
    feeder = asyncio.create_task(feed()) if stdin is not None else None
    try:
        async with asyncio.timeout(time_limit):
            await _exited(process)
            # Background children may hold the pipe open: they end with the command.
            _kill_group(process.pid)
            await reader
    except TimeoutError:
        timed_out = True
    finally:
        _kill_group(process.pid)
        for task in (reader, feeder):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(ProcessLookupError):
            await process.wait()
    return ProcessResult(bytes(output), process.returncode, truncated, timed_out)


# Skill type -> the tool names it provides (as controlplane/tool_catalogue.py names them).
BUILTIN_TOOLS: dict[str, tuple[str, ...]] = {
    "shell": ("shell",),
    "file_system": ("read_file", "write_file", "list_files", "search_files"),
    "python": ("run_python",),
    "http": ("http_request",),
    "sleep": ("sleep",),
}


def base_name(tool_name: str) -> str:
    """The catalogue suffixes duplicate names with `__n`: `shell__2` runs `shell`."""
    return tool_name.split("__", 1)[0]


def category_of(category: str, tool_name: str) -> str | None:
    """The built-in skill type that runs `tool_name`, or None."""
    name = base_name(tool_name)
    if category in BUILTIN_TOOLS:
        return category if name in BUILTIN_TOOLS[category] else None
    if category:
        return None
    matches = [kind for kind, names in BUILTIN_TOOLS.items() if name in names]
    return matches[0] if len(matches) == 1 else None


async def run_builtin(
    category: str,
    tool_name: str,
    arguments: Mapping[str, Any],
    configuration: Mapping[str, Any] | None,
    *,
    workspace: Path,
    env: Mapping[str, Any] | None = None,
) -> ToolResult:
    """Run one built-in tool call. Refusals come back as error results; only a cancellation
    (or a bug) raises."""
    # Imported here: the tool modules import this package's names.
    from activities.tools import file_system, http_request, python_code, shell, sleep

    kind = category_of(category, tool_name)
    if kind is None:
        return ToolResult(f"Unknown built-in tool '{tool_name}' (type '{category}')", True)
    runners = {
        "shell": shell.run,
        "file_system": file_system.run,
        "python": python_code.run,
        "http": http_request.run,
        "sleep": sleep.run,
    }
    if not isinstance(arguments, Mapping):
        return ToolResult("Tool arguments must be an object", True)
    try:
        result = await runners[kind](
            base_name(tool_name),
            arguments,
            Config(configuration),
            workspace=workspace,
            env=tool_env(workspace, env),
        )
    except ToolRefused as refused:
        return ToolResult(nul_free(f"Refused: {refused}"), True)
    return ToolResult(nul_free(result.output), result.is_error)
