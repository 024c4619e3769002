"""The `python` tool (`run_python`): code run by a fresh `python -I` subprocess in the workspace,
with a timeout, a capped output and the same minimal environment as `shell`.

`blocked_imports` and `allowed_imports` are enforced by a prelude that installs an import hook
(a `sys.meta_path` finder) before the code runs: a blocked top-level module (and its C
accelerator, `_socket` for `socket`) is refused; with `allowed_imports` set, only the standard
library (minus what is blocked) and the allowed modules may be imported. This is a guard rail
against casual use, NOT a sandbox: code can remove the hook, or reach the same system calls
through modules already loaded (`os`). Isolation comes from running the worker itself somewhere
it may do no harm.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from activities.tools import Config, ToolRefused, ToolResult, argument, run_process

DEFAULT_TIMEOUT = 30
DEFAULT_MAX_OUTPUT = 65536
DEFAULT_BLOCKED = ["subprocess", "socket", "ctypes"]
# C modules that implement a blocked module's functions.
ACCELERATORS = {"subprocess": ["_posixsubprocess"], "multiprocessing": ["_multiprocessing"]}

PRELUDE = """\
import sys


def _install_guard(blocked, allowed):
    stdlib = sys.stdlib_module_names

    def refused(top):
        if top in allowed:
            return False
        return top in blocked or bool(allowed) and top not in stdlib

    class ImportGuard:
        @staticmethod
        def find_spec(name, path=None, target=None):
            top = name.partition(".")[0]
            if refused(top):
                raise ImportError(
                    f"import of '{{top}}' is blocked by this tool's configuration", name=name
                )
            return None

    for loaded in list(sys.modules):
        if refused(loaded.partition(".")[0]):
            del sys.modules[loaded]
    sys.meta_path.insert(0, ImportGuard)


_install_guard(frozenset({blocked!r}), frozenset({allowed!r}))
del _install_guard
_source = sys.stdin.buffer.read()  # bytes: compiled as UTF-8 whatever the locale
exec(compile(_source, "<code>", "exec"), {{"__name__": "__main__", "__builtins__": __builtins__}})
"""


def with_accelerators(modules: list[str]) -> list[str]:
    names = set(modules)
    for name in modules:
        names.add(f"_{name}")
        names.update(ACCELERATORS.get(name, []))
    return sorted(names)


def prelude(blocked: list[str], allowed: list[str]) -> str:
    return PRELUDE.format(blocked=with_accelerators(blocked), allowed=with_accelerators(allowed))


async def run(
    name: str,
    arguments: Mapping[str, Any],
    config: Config,
    *,
    workspace: Path,
    env: Mapping[str, str],
) -> ToolResult:
    code = argument(arguments, "code")
    if not code.strip():
        raise ToolRefused("the code is empty")
    timeout = config.number("timeout", DEFAULT_TIMEOUT, minimum=0.1)
    max_output = config.integer("max_output_bytes", DEFAULT_MAX_OUTPUT, minimum=1)
    blocked = config.strings("blocked_imports", DEFAULT_BLOCKED)
    allowed = config.strings("allowed_imports", [])
    result = await run_process(
        [sys.executable, "-I", "-u", "-B", "-c", prelude(blocked, allowed)],
        cwd=workspace,
        env=env,
        time_limit=timeout,
        max_output_bytes=max_output,
        stdin=code.encode(),
    )
    return result.text(timeout, max_output)
