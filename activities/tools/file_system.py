"""The `file_system` tools: `read_file`, `write_file`, `list_files`, `search_files`, confined to
`base_dir` (default: the execution's workspace; a base_dir outside the workspace is refused, so
the tools never reach the worker's own files).

Confinement: every path is resolved against base_dir with `os.path.realpath` (so `..`, absolute
paths and symlinks, in the last component or in a parent directory, are followed first) and
refused unless the result lies inside base_dir. Files are then opened with O_NOFOLLOW and the
opened descriptor's own path is checked again, so a symlink swapped in between is caught too.
Writes never follow a final symlink and refuse a file with other hard links (its other names
may lie outside). Searches walk without following symlinks. Sizes and result counts are capped.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from activities.tools import (
    TRUNCATED,
    Config,
    ToolRefused,
    ToolResult,
    argument,
    confined_dir,
)

DEFAULT_MAX_FILE_BYTES = 1024 * 1024
MAX_LIST_ENTRIES = 1000
MAX_SEARCH_RESULTS = 200
MAX_SEARCH_FILES = 5000
MAX_LINE_CHARS = 300

ENABLED_BY = {
    "read_file": "enable_read_file",
    "write_file": "enable_save_file",
    "list_files": "enable_list_files",
    "search_files": "enable_search_files",
}


class Jail:
    """Paths inside one base directory."""

    def __init__(self, base: Path) -> None:
        self.base = os.path.realpath(base)

    def inside(self, real: str) -> bool:
        return real == self.base or real.startswith(self.base.rstrip(os.sep) + os.sep)

    def shown(self, real: str) -> str:
        relative = os.path.relpath(real, self.base)
        return "." if relative == os.curdir else relative

    def resolve(self, path: str) -> str:
        """The real path `path` names, or a refusal if it leaves the base."""
        if "\0" in path:
            raise ToolRefused("the path contains a NUL byte")
        real = os.path.realpath(os.path.join(self.base, path or "."))
        if not self.inside(real):
            raise ToolRefused(f"path '{path}' is outside the allowed directory")
        return real

    def resolve_for_write(self, path: str) -> str:
        """Like resolve, but the last component is not followed: a symlink there is refused."""
        if "\0" in path:
            raise ToolRefused("the path contains a NUL byte")
        joined = os.path.join(self.base, path)
        parent, name = os.path.split(os.path.normpath(joined))
        if name in ("", os.curdir, os.pardir):
            raise ToolRefused(f"path '{path}' does not name a file")
        real_parent = os.path.realpath(parent)
        if not self.inside(real_parent):
            raise ToolRefused(f"path '{path}' is outside the allowed directory")
        target = os.path.join(real_parent, name)
        if os.path.islink(target):
            raise ToolRefused(f"path '{path}' is a symbolic link; writes do not follow links")
        if not self.inside(target) or target == self.base:
            raise ToolRefused(f"path '{path}' is outside the allowed directory")
        return target

    def check_descriptor(self, fd: int, path: str) -> None:
        """The opened file is inside the base (catches a link swapped in after resolve)."""
        proc = f"/proc/self/fd/{fd}"
        if os.path.exists(proc) and not self.inside(os.path.realpath(proc)):
            raise ToolRefused(f"path '{path}' is outside the allowed directory")


def _open(jail: Jail, real: str, path: str, flags: int) -> int:
    try:
        fd = os.open(real, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise ToolRefused(f"'{path}' does not exist") from None
    except IsADirectoryError:
        raise ToolRefused(f"'{path}' is a directory") from None
    except OSError as error:
        raise ToolRefused(f"cannot open '{path}': {error.strerror}") from None
    try:
        jail.check_descriptor(fd, path)
    except ToolRefused:
        os.close(fd)
        raise
    return fd


def read_file(jail: Jail, path: str, max_bytes: int) -> ToolResult:
    real = jail.resolve(path)
    fd = _open(jail, real, path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ToolRefused(f"'{path}' is not a regular file")
        data = handle.read(max_bytes + 1)
    text = data[:max_bytes].decode(errors="replace")
    if len(data) > max_bytes:
        text += f"\n{TRUNCATED} file larger than {max_bytes} bytes"
    return ToolResult(text)


def write_file(jail: Jail, path: str, content: str, max_bytes: int) -> ToolResult:
    data = content.encode()
    if len(data) > max_bytes:
        raise ToolRefused(f"content is {len(data)} bytes; the limit is {max_bytes}")
    target = jail.resolve_for_write(path)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    if not jail.inside(os.path.realpath(parent)):  # a directory swapped for a link meanwhile
        raise ToolRefused(f"path '{path}' is outside the allowed directory")
    fd = _open(jail, target, path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK)
    with os.fdopen(fd, "wb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ToolRefused(f"'{path}' is not a regular file")
        if info.st_nlink > 1:
            raise ToolRefused(f"'{path}' has other hard links; it is not written")
        handle.truncate(0)
        handle.write(data)
    return ToolResult(f"Wrote {len(data)} bytes to {jail.shown(target)}")


def list_files(jail: Jail, path: str) -> ToolResult:
    real = jail.resolve(path)
    if not os.path.isdir(real):
        raise ToolRefused(f"'{path}' is not a directory")
    lines = []
    with os.scandir(real) as entries:
        for count, entry in enumerate(sorted(entries, key=lambda e: e.name)):
            if count >= MAX_LIST_ENTRIES:
                lines.append(f"{TRUNCATED} more than {MAX_LIST_ENTRIES} entries")
                break
            if entry.is_symlink():
                lines.append(f"{entry.name} -> {os.readlink(entry.path)} (link)")
            elif entry.is_dir(follow_symlinks=False):
                lines.append(f"{entry.name}/")
            else:
                size = entry.stat(follow_symlinks=False).st_size
                lines.append(f"{entry.name} ({size} bytes)")
    header = f"{jail.shown(real)}: {len(lines)} entries"
    return ToolResult("\n".join([header, *lines]))


def search_files(jail: Jail, pattern: str, path: str, max_bytes: int) -> ToolResult:
    """Files whose name or relative path matches the glob `pattern` (`*` crosses
    directories, so `*.py` and `**/*.py` find every Python file), and lines containing
    `pattern` as text."""
    if not pattern:
        raise ToolRefused("the search pattern is empty")
    root = jail.resolve(path)
    if not os.path.isdir(root):
        raise ToolRefused(f"'{path}' is not a directory")
    globs = {pattern, pattern.removeprefix("**/")}
    names: list[str] = []
    lines: list[str] = []
    scanned = 0
    capped = False
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs.sort()
        for name in sorted(files):
            full = os.path.join(directory, name)
            shown = jail.shown(full)
            if any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(shown, g) for g in globs):
                names.append(shown)
            scanned += 1
            if scanned > MAX_SEARCH_FILES or len(names) + len(lines) >= MAX_SEARCH_RESULTS:
                capped = True
                break
            lines.extend(_matching_lines(full, shown, pattern, max_bytes))
        if capped:
            break
    names = names[:MAX_SEARCH_RESULTS]
    lines = lines[: MAX_SEARCH_RESULTS - len(names)]
    found = names + lines
    output = [f"Files named like '{pattern}':", *(names or ["(none)"])]
    output += [f"Lines containing '{pattern}':", *(lines or ["(none)"])]
    if capped:
        output.append(f"{TRUNCATED} search stopped at {len(found)} results")
    return ToolResult("\n".join(output))


def _matching_lines(full: str, shown: str, needle: str, max_bytes: int) -> list[str]:
    try:
        info = os.lstat(full)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return []
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(max_bytes)
    except OSError:
        return []
    if b"\0" in data[:8192]:  # binary
        return []
    found = []
    for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
        if needle in line:
            found.append(f"{shown}:{number}: {line.strip()[:MAX_LINE_CHARS]}")
            if len(found) >= MAX_SEARCH_RESULTS:
                break
    return found


def base_dir(config: Config, workspace: Path) -> Path:
    return confined_dir(config.text("base_dir"), workspace, "base_dir")


def _call(name: str, arguments: Mapping[str, Any], config: Config, workspace: Path) -> ToolResult:
    switch = ENABLED_BY.get(name)
    if switch is None:
        raise ToolRefused(f"unknown file_system tool '{name}'")
    if not config.flag(switch, True):
        raise ToolRefused(f"{name} is disabled for this skill")
    max_bytes = config.integer("max_file_bytes", DEFAULT_MAX_FILE_BYTES, minimum=1)
    jail = Jail(base_dir(config, workspace))
    if name == "read_file":
        return read_file(jail, argument(arguments, "path"), max_bytes)
    if name == "write_file":
        content = argument(arguments, "content")
        return write_file(jail, argument(arguments, "path"), content, max_bytes)
    if name == "list_files":
        return list_files(jail, argument(arguments, "path", "."))
    return search_files(
        jail, argument(arguments, "pattern"), argument(arguments, "path", "."), max_bytes
    )


async def run(
    name: str,
    arguments: Mapping[str, Any],
    config: Config,
    *,
    workspace: Path,
    env: Mapping[str, str],
) -> ToolResult:
    return await asyncio.to_thread(_call, name, arguments, config, workspace)
