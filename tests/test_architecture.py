"""The directions imports may take, read from the source with `ast` (so a lazy import inside a
function counts too):

- `api` (the HTTP facade) → `controlplane` (the domain: use cases and adapters) and `workflows`'
  contract (names and payload types), never the workflow code itself nor the worker side;
- a route module imports no other route module (shared shapes live in the domain or api/);
- `controlplane` → `workflows`' contract; never `api`, `activities` or `worker` (but the entry
  points: the CLI starts every kind of process, the system worker registers workflows; and the
  shared leaves below);
- `worker` → `workflows`, `activities` and two leaf modules (the version and the logging setup);
- `activities` → `workflows` (contract and templates); never `controlplane`, `api` or `worker`;
- `workflows` imports no I/O library (it is replayed: deterministic code only);
- nothing imports `api`;
- a shared leaf imports nothing of the project, so whoever imports it reaches nothing else.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "controlplane", "workflows", "activities", "worker")
# What the workflow code may share with both sides without being workflow code itself.
WORKFLOW_CONTRACT = ("workflows.contracts", "workflows.templates")
WORKER_LEAVES = ("controlplane", "controlplane.logs")
# Process entry points compose every part: the CLI starts the API, a worker or the dev stack;
# the system worker registers the control plane's own workflows.
ENTRY_POINTS = ("controlplane.cli", "controlplane.system.worker")
# Leaves the domain may import from the worker side. The network guard decides where the platform
# may connect: the worker's `http` tool and MCP servers, and the control plane's webhook
# deliveries. One policy, one module; it imports nothing of the project (checked below).
SHARED_LEAVES = ("activities.tools.network_guard",)
IO_LIBRARIES = (
    "asyncpg",
    "httpx",
    "anthropic",
    "claude_agent_sdk",
    "mcp",
    "socket",
    "subprocess",
    "requests",
    "urllib",
    "os",
    "random",
    "time",
    "starlette",
)


def modules(package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, absolute (relative imports resolved against `module`)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def ours(name: str) -> bool:
    return within(name, PACKAGES)


KNOWN = {name for package in PACKAGES for name, _ in modules(package)}


def _real(names: set[str]) -> set[str]:
    """Drop `module.attribute` entries that name an attribute (from-imports of names)."""
    return {name for name in names if not ours(name) or name in KNOWN}


@pytest.mark.parametrize("package", PACKAGES)
def test_import_directions(package: str) -> None:
    problems: list[str] = []
    for module, path in modules(package):
        for name in sorted(_real(imports(path, module))):
            if not ours(name) or (within(name, (package,)) and package != "api"):
                continue
            if within(name, ("api",)) and package != "api":
                problems.append(f"{module} imports {name}: nothing imports api")
            elif package == "api":
                if within(name, ("activities", "worker")):
                    problems.append(f"{module} imports {name}: api does not reach the worker side")
                elif within(name, ("workflows",)) and not within(name, WORKFLOW_CONTRACT):
                    problems.append(f"{module} imports {name}: api uses the workflows' contract")
                elif (
                    module.startswith("api.routes.")
                    and name.startswith("api.routes.")
                    and name != module
                ):
                    problems.append(f"{module} imports {name}: route modules stand alone")
            elif package == "controlplane":
                if (
                    within(name, ("activities", "worker"))
                    and module not in ENTRY_POINTS
                    and name not in SHARED_LEAVES
                ):
                    problems.append(f"{module} imports {name}: the domain is not the worker")
                elif (
                    within(name, ("workflows",))
                    and not within(name, WORKFLOW_CONTRACT)
                    and module not in ENTRY_POINTS
                ):
                    problems.append(f"{module} imports {name}: the domain uses the contract")
            elif package == "worker":
                if within(name, ("controlplane",)) and name not in WORKER_LEAVES:
                    problems.append(f"{module} imports {name}: a worker holds no domain code")
            elif package == "activities":
                if within(name, ("controlplane", "worker")):
                    problems.append(f"{module} imports {name}: activities use the contract only")
            elif package == "workflows" and not within(name, ("workflows",)):
                problems.append(f"{module} imports {name}: workflows import no other package")
    assert not problems, "\n".join(problems)


def test_workflows_import_no_io_library() -> None:
    problems = [
        f"{module} imports {name}"
        for module, path in modules("workflows")
        for name in imports(path, module)
        if within(name, IO_LIBRARIES)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("leaf", SHARED_LEAVES)
def test_shared_leaves_import_nothing_of_the_project(leaf: str) -> None:
    path = ROOT / (leaf.replace(".", "/") + ".py")
    found = sorted(name for name in imports(path, leaf) if ours(name))
    assert not found, f"{leaf} is a shared leaf but imports {found}"
