"""The worker's own credentials, kept where the tools it runs cannot read them.

Tools run as processes of the same user as the worker. A process's initial environment stays
readable in /proc/<pid>/environ for its whole life (changing os.environ later does not change
it), so a key given in the environment would be one `cat /proc/$PPID/environ` away from any
shell tool. So:

- the worker key is read from a file (`--api-key-file`) or stdin (`--api-key-stdin`);
- a worker started with CONTROLPLANE_API_KEY or ANTHROPIC_API_KEY in its environment reads
  them, then replaces itself (execve) with an environment without them, handing the values
  over through a pipe: the new process's /proc/<pid>/environ never held them;
- the worker marks itself non-dumpable at start (activities.tools.protect_worker_process):
  its /proc files become root's, and processes of its own user can neither read its memory
  nor ptrace it.

Tool processes are started with the execution's environment only (activities/tools).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

ENV_API_KEY = "CONTROLPLANE_API_KEY"
ENV_API_KEY_FILE = "CONTROLPLANE_API_KEY_FILE"
ENV_ANTHROPIC_KEY = "ANTHROPIC_API_KEY"
ENV_ANTHROPIC_KEY_FILE = "ANTHROPIC_API_KEY_FILE"
# Credentials that must not stay in the environment of the worker process.
SCRUBBED = (ENV_API_KEY, ENV_ANTHROPIC_KEY)
CREDENTIALS_FD_FLAG = "--credentials-fd"


class CredentialError(Exception):
    """A one-line reason the worker has no usable credential."""


@dataclass(frozen=True)
class Credentials:
    api_key: str
    anthropic_api_key: str | None = None


def hand_over_environment_credentials(argv: list[str]) -> None:
    """If credentials came in the environment, re-run this worker without them in its
    environment, passing them through a pipe. Returns only when there is nothing to scrub."""
    found = {name: os.environ[name] for name in SCRUBBED if os.environ.get(name)}
    if not found or CREDENTIALS_FD_FLAG in argv:
        return
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as pipe:
        # A pipe holds at least 4 KiB before a writer blocks; two keys fit many times over.
        pipe.write(json.dumps(found))
    os.set_inheritable(read_end, True)
    env = {name: value for name, value in os.environ.items() if name not in SCRUBBED}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(
        sys.executable,
        [sys.executable, "-m", "worker", *argv, CREDENTIALS_FD_FLAG, str(read_end)],
        env,
    )


def _read_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError as exc:
        raise CredentialError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not value:
        raise CredentialError(f"the {what} file {path} is empty")
    return value


def load(
    *,
    credentials_fd: int | None,
    api_key_file: str | None,
    api_key_stdin: bool,
) -> Credentials:
    """The worker key and the model key, from the hand-over pipe, a file or stdin."""
    handed: dict[str, str] = {}
    if credentials_fd is not None:
        with os.fdopen(credentials_fd, encoding="utf-8") as pipe:
            handed = json.loads(pipe.read() or "{}")
    api_key = handed.get(ENV_API_KEY)
    if api_key_file:
        api_key = _read_file(api_key_file, "API key")
    elif api_key_stdin:
        api_key = sys.stdin.readline().strip()
    if not api_key:
        raise CredentialError(
            f"no worker key: pass --api-key-file FILE (or {ENV_API_KEY_FILE}), "
            f"--api-key-stdin, or {ENV_API_KEY}"
        )
    anthropic_key = handed.get(ENV_ANTHROPIC_KEY)
    anthropic_file = os.environ.get(ENV_ANTHROPIC_KEY_FILE)
    if anthropic_file:
        anthropic_key = _read_file(anthropic_file, "Anthropic API key")
    return Credentials(api_key=api_key, anthropic_api_key=anthropic_key or None)
