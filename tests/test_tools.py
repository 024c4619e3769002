"""The built-in tools run for real: shell commands and Python in subprocesses, files on disk,
HTTP against a loopback server. Every escape the issue lists is tried and must be refused
with nothing run (a marker file never appears); each escape is also run with no lists set, to
prove the command would really have done its work."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from temporalio.testing import ActivityEnvironment

from activities.tools import ToolRefused, ToolResult, run_builtin
from activities.tools.http_request import host_allowed
from activities.tools.network_guard import pinned_request, send_pinned
from activities.tools.shell import check_command, sed_runs_commands


async def tool(
    category: str,
    name: str,
    arguments: dict[str, Any],
    config: dict[str, Any] | None = None,
    *,
    workspace: Path,
    env: dict[str, str] | None = None,
) -> ToolResult:
    return await run_builtin(category, name, arguments, config, workspace=workspace, env=env)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return workspace


# --- shell ------------------------------------------------------------------------------------


async def test_shell_runs_in_the_workspace_with_its_environment(ws: Path) -> None:
    result = await tool(
        "shell",
        "shell",
        {"command": 'echo "hi $GREETING" && pwd && echo "home=$HOME"'},
        workspace=ws,
        env={"GREETING": "there"},
    )
    assert not result.is_error, result.output
    assert result.output.splitlines() == ["hi there", str(ws), f"home={ws}"]
    # A suffixed name (a duplicate in the catalogue) runs the same tool.
    again = await tool("shell", "shell__ops", {"command": "echo again"}, workspace=ws)
    assert again.output == "again\n"


async def test_shell_never_sees_the_worker_environment(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTROLPLANE_API_KEY", "cp-worker-key-123456")
    monkeypatch.setenv("DATABASE_URL", "postgresql://secret@db/x")
    result = await tool("shell", "shell", {"command": "env"}, workspace=ws, env={"MINE": "1"})
    names = {line.split("=", 1)[0] for line in result.output.splitlines() if "=" in line}
    assert "cp-worker-key-123456" not in result.output
    assert "CONTROLPLANE_API_KEY" not in names and "DATABASE_URL" not in names
    assert {"PATH", "HOME", "LANG", "MINE"} <= names


@dataclass
class Escape:
    command: str
    works_unchecked: bool = True  # /bin/sh (dash) really runs it when no list is set


ESCAPES = [
    Escape("touch marker"),
    Escape("/usr/bin/touch marker"),
    Escape("echo a; touch marker"),
    Escape("echo a && touch marker"),
    Escape("false || touch marker"),
    Escape("echo a | touch marker"),
    Escape("echo a & touch marker; wait"),
    Escape("echo $(touch marker)"),
    Escape("echo `touch marker`"),
    Escape("echo a\ntouch marker"),
    Escape("(touch marker)"),
    Escape("{ touch marker; }"),
    Escape("if true; then touch marker; fi"),
    Escape("env X=1 touch marker"),
    Escape("X=1 touch marker"),
    Escape("sh -c 'touch marker'"),
    Escape("sh -c \"sh -c 'echo; touch marker'\""),
    Escape("echo marker | xargs touch"),
    Escape("find . -maxdepth 0 -exec touch marker \\;"),
    Escape("timeout 5 touch marker"),
    Escape("nohup touch marker >/dev/null 2>&1"),
    Escape("command touch marker"),
    Escape("exec touch marker"),
    Escape("t''ouch marker"),
    Escape('"touch" marker'),
    Escape("\\touch marker"),
    Escape("X=touch; $X marker"),
    Escape("echo 'touch marker' | sh"),
    Escape("eval 'tou''ch marker'"),
    Escape("echo a#; touch marker"),
    Escape("/usr/bin/t?uch marker"),
    Escape("cat <(touch marker)", works_unchecked=False),  # bash only
    Escape("$'\\x74ouch' marker", works_unchecked=False),  # bash only
]


@pytest.mark.parametrize("escape", ESCAPES, ids=lambda e: e.command)
async def test_blocked_commands_cannot_be_smuggled(ws: Path, escape: Escape) -> None:
    marker = ws / "marker"
    refused = await tool(
        "shell", "shell", {"command": escape.command}, {"blocked_commands": ["touch"]}, workspace=ws
    )
    assert refused.is_error and refused.output.startswith("Refused:"), refused.output
    assert not marker.exists()
    # Only `echo`, `cat` and `false` allowed: refused as well.
    allowed = {"allowed_commands": ["echo", "cat", "false"]}
    refused = await tool("shell", "shell", {"command": escape.command}, allowed, workspace=ws)
    assert refused.is_error and refused.output.startswith("Refused:"), refused.output
    assert not marker.exists()
    if escape.works_unchecked:
        ran = await tool("shell", "shell", {"command": escape.command}, workspace=ws)
        assert marker.exists(), ran.output


@pytest.mark.parametrize(
    "command",
    [
        "ls -la",
        "echo hi | grep h > out.txt",
        "cat out.txt 2>/dev/null; echo done",
        "LC_ALL=C ls",
        "name=value; echo $name ${name}",
        'echo "it\'s $HOME"',
        "if ls; then echo yes; fi",
        "ls -la | grep x && echo ok > out.txt",
        "echo a > a; echo b > b; cat a b; echo done",
        "if [ -f x ]; then echo y; else echo n; fi",
        "test -d . && echo dir || echo none",
        "(cd . && ls) ; { echo grouped; } 2>&1 | cat",
        "! grep -q nothing-here a 2>/dev/null",
        "cat <<EOF\nhere $HOME\nEOF\n",
        "/bin/ls -d . /usr/bin/../bin",
        "echo '{a,b}' \\; 'it''s'",
        "sh -c 'ls | grep x; echo inner'",
        "sh -e -c \"echo 'deeper'\"",
        "awk -F'|' '{print $1}' a",
        "sed -n -e 's/a/b/gp' -e '/x/d' a",
        "sed -i.bak 's|a|b|w out' a",
        "find . -name '*.txt' -type f",
        "echo 'x' | tr a-z A-Z",
    ],
)
async def test_allowed_commands_run(ws: Path, command: str) -> None:
    config = {
        "allowed_commands": ["ls", "echo", "grep", "cat", "cd", "sh", "awk", "sed", "find", "tr"],
        "blocked_commands": ["rm", "id"],
    }
    result = await tool("shell", "shell", {"command": command}, config, workspace=ws)
    assert not result.output.startswith("Refused"), result.output


def test_allowed_list_checks_every_segment() -> None:
    allowed = ["ls", "echo"]
    for command in (
        "ls; whoami",
        "ls | xargs rm",
        "echo x && python3 -c 1",
        "sudo ls",
        "bash script.sh",
        "ls\nid",
        "find . -exec rm {} \\;",
        "./ls",
        "bin/ls",
        "ls && (echo; { whoami; })",
        "if ls; then echo; else whoami; fi",
        "echo x > out; whoami 2>&1",
    ):
        with pytest.raises(ToolRefused):
            check_command(command, allowed, [])
    check_command("ls -la | echo", allowed, [])
    check_command("/usr/bin/ls", allowed, [])


ALLOWED = ["ls", "echo", "cat"]
BLOCKED = ["rm", "id"]


@dataclass
class Bypass:
    command: str
    allowed: list[str] = field(default_factory=lambda: list(ALLOWED))
    blocked: list[str] = field(default_factory=lambda: list(BLOCKED))
    because: str = ""  # a part of the refusal message

    def __str__(self) -> str:
        return self.command


# Commands the old shlex-based checker let through (the first five) and the other ways a
# command can hide another. Each is refused with either list set, before anything runs.
BYPASSES = [
    Bypass("ls() for x do id; done; ls a", because="function definitions"),
    Bypass("echo x|xargs -e id echo", because="'xargs' runs other commands"),
    Bypass("env --split-string='id' x", because="'env' runs other commands"),
    Bypass("env -S'id'", because="'env' runs other commands"),
    Bypass("taskset 1 /bin/r? -f x", because="'taskset' runs other commands"),
    Bypass("$(id)", because="command substitution"),
    Bypass("echo `id`", because="command substitution"),
    Bypass('echo "${X:-$(id)}"', because="command substitution"),
    Bypass("${X}", because="not a plain name"),
    Bypass("$X -f x", because="not a plain name"),
    Bypass('"i"d', because="not a plain name"),
    Bypass("\\id", because="not a plain name"),
    Bypass("i\\d", because="not a plain name"),
    Bypass("/bin/*d", because="not a plain name"),
    Bypass("/usr/bin/i[d]", because="not a plain name"),
    Bypass("$'\\x69d'", because="not a plain name"),
    Bypass("echo ${X:-x}", because="parameter expansion"),
    Bypass("echo $((1+2))", because="cannot be analysed"),
    Bypass("find . -exec id \\;", [*ALLOWED, "find"], because="'find' with -exec"),
    Bypass("find . -okdir id {} +", [*ALLOWED, "find"], because="'find' with -okdir"),
    Bypass("awk 'BEGIN{system(\"id\")}'", [*ALLOWED, "awk"], because="system()"),
    Bypass('gawk \'BEGIN{f="sys" "tem"; @f("id")}\'', [*ALLOWED, "gawk"], because="(@)"),
    Bypass("awk 'BEGIN{print | \"id\"}'", [*ALLOWED, "awk"], because="a pipe"),
    Bypass("awk 'BEGIN{\"id\" | getline x}'", [*ALLOWED, "awk"], because="a pipe"),
    Bypass("awk -f prog.awk", [*ALLOWED, "awk"], because="cannot be analysed"),
    Bypass("sed 's/x/id/e' a", [*ALLOWED, "sed"], because="the 'e' command or flag"),
    Bypass("sed -ne '1e id' a", [*ALLOWED, "sed"], because="the 'e' command or flag"),
    Bypass("sed -f script.sed a", [*ALLOWED, "sed"], because="cannot be analysed"),
    Bypass("tar -cf x.tar --to-command=id .", [*ALLOWED, "tar"], because="--to-command"),
    Bypass("tar -cf x.tar --checkpoint-ac=exec=id .", [*ALLOWED, "tar"], because="--checkp"),
    Bypass("tar -c -I id -f x.tar .", [*ALLOWED, "tar"], because="-I or -F"),
    Bypass("tar cIf id x.tar .", [*ALLOWED, "tar"], because="-I or -F"),
    Bypass("tar -cf host:x.tar .", [*ALLOWED, "tar"], because="remote archive"),
    Bypass("git -c core.pager=id log", [*ALLOWED, "git"], because="-c / --config-env"),
    Bypass("git lg", [*ALLOWED, "git"], because="not a plain git built-in"),
    Bypass("git config alias.x '!id'", [*ALLOWED, "git"], because="not a plain git built-in"),
    Bypass("git ls-remote --upload-pack=id .", [*ALLOWED, "git"], because="--upload-pack"),
    Bypass("git grep -Oid x", [*ALLOWED, "git"], because="-Oid"),
    Bypass("rsync -avze id a b:c", [*ALLOWED, "rsync"], because="-e / --rsh"),
    Bypass("rsync -a a host:b", [*ALLOWED, "rsync"], because="remote path"),
    Bypass("sort --compress-program=id a", [*ALLOWED, "sort"], because="--compress-program"),
    Bypass("ssh localhost id", [*ALLOWED, "ssh"], because="'ssh' can run commands"),
    Bypass("find . {-exec,id,\\;}", [*ALLOWED, "find"], because="brace patterns"),
    Bypass("case x in x) id;; esac", because="syntax the checker cannot analyse"),
    Bypass("while true; do id; done", because="'while' loops"),
    Bypass("until false; do id; done", because="'until' loops"),
    Bypass("for x in a; do id; done", because="'for' loops"),
    Bypass("select x in a; do id; done", because="syntax the checker cannot analyse"),
    Bypass("f(){ id; }; f", because="function definitions"),
    Bypass("function f { id; }; f", because="function definitions"),
    Bypass("((x=1)); id", because="'(('"),
    Bypass("bash -c 'id'", [*ALLOWED, "bash"], because="command 'id'"),
    Bypass("sh -c \"sh -c 'echo; id'\"", [*ALLOWED, "sh"], because="command 'id'"),
    Bypass('sh -c "$X"', [*ALLOWED, "sh"], because="must be literal"),
    Bypass("sh -i -c 'ls'", [*ALLOWED, "sh"], because="cannot be analysed"),
    Bypass("echo id | sh", [*ALLOWED, "sh"], because="reading a script or stdin"),
    Bypass("sh <<EOF\nid\nEOF\n", [*ALLOWED, "sh"], because="reading a script or stdin"),
    Bypass("sh script.sh", [*ALLOWED, "sh"], because="reading a script or stdin"),
    Bypass("exec id", [*ALLOWED, "exec"], because="'exec' runs other commands"),
    Bypass("command id", [*ALLOWED, "command"], because="'command' runs other commands"),
    Bypass("builtin echo x", [*ALLOWED, "builtin"], because="'builtin' runs other commands"),
    Bypass("eval id", [*ALLOWED, "eval"], because="'eval' runs other commands"),
    Bypass(". ./script", because="'.' runs other commands"),
    Bypass("nice id", [*ALLOWED, "nice"], because="'nice' runs other commands"),
    Bypass("timeout 5 id", [*ALLOWED, "timeout"], because="'timeout' runs other commands"),
    Bypass("sudo -u root ls", [*ALLOWED, "sudo"], because="'sudo' runs other commands"),
    Bypass("busybox sh -c id", [*ALLOWED, "busybox"], because="'busybox' runs other"),
    Bypass("time id", because="syntax the checker cannot analyse"),
    Bypass("alias ls=id\nls", [*ALLOWED, "alias"], because="'alias' runs other commands"),
    Bypass("trap id EXIT", [*ALLOWED, "trap"], because="'trap' runs other commands"),
    Bypass("cat <(id)", because="process substitution"),
    Bypass("cat > >(id)", because="process substitution"),
    Bypass("python3 -c 'import os'", because="runs code it is given"),
    Bypass("perl -e 1", because="runs code it is given"),
    Bypass("echo '!id' | ed", because="runs code it is given"),
    Bypass("PATH=. ls", because="assigning PATH"),
    Bypass("LD_PRELOAD=./x.so ls", because="assigning LD_PRELOAD"),
    Bypass("[ -v 'a[$x]' ]", because="'[ -v'"),
    Bypass("./ls", blocked=[], because="not in a system directory"),  # blocked: any name runs
    Bypass("id", because="command 'id'"),
    Bypass("/usr/bin/id", because="command 'id'"),
    Bypass("ls; id", because="command 'id'"),
    Bypass("ls && { echo; (id); }", because="command 'id'"),
    Bypass("if ls; then echo; elif id; then echo; fi", because="command 'id'"),
    Bypass("ls | id 2>&1 > out", because="command 'id'"),
    Bypass("ls &\nid", because="command 'id'"),
    Bypass("cat <<EOF; id\nEOF\n", because="command 'id'"),
]


@pytest.mark.parametrize("bypass", BYPASSES, ids=str)
async def test_known_bypasses_are_refused(ws: Path, bypass: Bypass) -> None:
    configs: list[dict[str, Any]] = [{"allowed_commands": bypass.allowed}]
    if bypass.blocked:
        blocked = {"blocked_commands": bypass.blocked}
        configs += [blocked, {**configs[0], **blocked}]
    for config in configs:
        result = await tool("shell", "shell", {"command": bypass.command}, config, workspace=ws)
        assert result.is_error and result.output.startswith("Refused:"), (config, result.output)
        assert "uid=" not in result.output
    with pytest.raises(ToolRefused, match=re.escape(bypass.because)):
        check_command(bypass.command, bypass.allowed, bypass.blocked)


@pytest.mark.parametrize(
    ("script", "runs"),
    [
        ("s/a/b/g", False),
        ("s/a/b/e", True),
        ("s|a|b|ge", True),
        ("s/a\\/e/b/", False),  # the e is inside the pattern
        ("/x/e date", True),
        ("1,/y/ e", True),
        ("$!e", True),
        ("1~2e", True),
        ("/e/d;s/e/E/2;y/e/f/", False),
        ("a eat\ne", True),  # `a` text ends at the line end: the next line is a command
        ("i\\\neat", False),
        ("#e comment\np", False),
        ("{p;e\n}", True),
        ("b end;e;:end", True),
        ("s/x/y/w out.txt", False),
        ("3q;5Q 1", False),
    ],
)
def test_sed_scripts_are_read_for_the_e_command(script: str, runs: bool) -> None:
    assert sed_runs_commands(script) is runs


def test_unreadable_sed_scripts_are_refused() -> None:
    for script in ("s/unterminated", "k", "s/a/b/X"):
        with pytest.raises(ToolRefused):
            sed_runs_commands(script)


async def test_commands_run_as_before_without_lists(ws: Path) -> None:
    ran = await tool(
        "shell", "shell", {"command": "f(){ echo in-f; }; f; env X=1 true"}, workspace=ws
    )
    assert ran.output == "in-f\n" and not ran.is_error


async def test_shell_timeout_kills_the_process_group(ws: Path) -> None:
    started = time.monotonic()
    result = await tool(
        "shell",
        "shell",
        {"command": "(sleep 2; touch late) & echo started; sleep 30"},
        {"timeout": 0.5},
        workspace=ws,
    )
    assert result.is_error
    assert "started" in result.output and "timed out after 0.5s" in result.output
    assert time.monotonic() - started < 5
    await asyncio.sleep(2.5)
    assert not (ws / "late").exists()  # the background child died with the command


async def test_background_children_end_with_the_command(ws: Path) -> None:
    started = time.monotonic()
    result = await tool(
        "shell", "shell", {"command": "(sleep 1; touch late) & echo quick"}, workspace=ws
    )
    assert result.output == "quick\n" and not result.is_error
    assert time.monotonic() - started < 1
    await asyncio.sleep(1.5)
    assert not (ws / "late").exists()


async def test_shell_output_is_capped_and_exit_codes_reported(ws: Path) -> None:
    started = time.monotonic()
    capped = await tool(
        "shell", "shell", {"command": "yes"}, {"max_output_bytes": 1000}, workspace=ws
    )
    assert time.monotonic() - started < 5  # `yes` never ends: it was stopped at the cap
    body, _, note = capped.output.partition("[truncated]")
    assert len(body.encode()) <= 1001 and "1000 bytes" in note
    failed = await tool("shell", "shell", {"command": "echo oops >&2; exit 3"}, workspace=ws)
    assert failed.is_error and failed.output == "oops\n[exit code 3]"


async def test_shell_working_dir_and_bad_arguments(ws: Path) -> None:
    result = await tool(
        "shell", "shell", {"command": "pwd"}, {"working_dir": "sub/dir"}, workspace=ws
    )
    assert result.output.strip() == str(ws / "sub" / "dir")
    outside = await tool(
        "shell", "shell", {"command": "pwd"}, {"working_dir": "../.."}, workspace=ws
    )
    assert outside.is_error and "outside the execution's workspace" in outside.output
    missing = await tool("shell", "shell", {}, workspace=ws)
    assert missing.is_error and "missing argument 'command'" in missing.output
    wrong = await tool("shell", "shell", {"command": ["ls"]}, workspace=ws)
    assert wrong.is_error and "must be a string" in wrong.output
    bad_config = await tool("shell", "shell", {"command": "ls"}, {"timeout": "x"}, workspace=ws)
    assert bad_config.is_error and "timeout" in bad_config.output
    unknown = await tool("shell", "format_disk", {}, workspace=ws)
    assert unknown.is_error and "Unknown built-in tool" in unknown.output


# A worker-like process: it runs a tool process the way every tool runs (run_process), and the
# tool reads what /proc shows of its parent. Only the standard library, so that any Python runs it.
PROBE = """
import asyncio, sys
from pathlib import Path
from activities.tools import run_process

command = "cat /proc/$PPID/environ; ls /proc/$PPID/fd; head -c 1 /proc/$PPID/mem"
result = asyncio.run(
    run_process(
        ["/bin/sh", "-c", command],
        cwd=Path(sys.argv[1]),
        env={"PATH": "/usr/bin:/bin"},
        time_limit=30,
        max_output_bytes=65536,
    )
)
print(result.text(30, 65536).output)
"""


def _unprivileged(python: str) -> list[str] | None:
    """How to run `python` as a user without privileges: as is when we are not root; as nobody
    through setpriv when we are (root may read any process); None when nobody cannot run it."""
    if os.geteuid() != 0:
        return [python]
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python]
    works = subprocess.run([*argv, "-c", "pass"], capture_output=True, check=False, timeout=30)
    return argv if works.returncode == 0 else None


def test_tools_cannot_read_the_worker_process() -> None:
    """A tool process is the worker's child, run as the same user: /proc/<worker>/environ would
    hand it the worker's own credentials; its descriptors and memory would be open too."""
    candidates = [sys.executable, "/usr/bin/python3"]
    argv = next(filter(None, map(_unprivileged, candidates)), None)
    if argv is None:
        pytest.skip("no Python an unprivileged user may run")
    workspace = Path(tempfile.mkdtemp(prefix="worker-probe-"))
    workspace.chmod(0o777)
    root = Path(__file__).parent.parent
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    env["CONTROLPLANE_API_KEY"] = "cpk-probe-secret-42"
    try:
        done = subprocess.run(
            [*argv, "-B", "-c", PROBE, str(workspace)],
            env=env,
            cwd=workspace,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert "cpk-probe-secret-42" not in done.stdout
    assert done.stdout.count("Permission denied") == 3, done.stdout
    assert done.stdout.count("/proc/") == 3, done.stdout


async def test_cancelling_a_tool_kills_its_process(ws: Path) -> None:
    task = asyncio.create_task(
        tool("shell", "shell", {"command": "echo $$ > pid; exec sleep 30"}, workspace=ws)
    )
    for _ in range(100):
        if (ws / "pid").exists() and (ws / "pid").read_text().strip():
            break
        await asyncio.sleep(0.02)
    pid = int((ws / "pid").read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --- file_system ------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace holding a secret file."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text("TOP SECRET needle\n")
    return directory


async def fs(name: str, ws: Path, config: dict[str, Any] | None = None, **args: Any) -> ToolResult:
    return await tool("file_system", name, args, config, workspace=ws)


async def test_files_write_read_list_search(ws: Path) -> None:
    written = await fs("write_file", ws, path="docs/notes.md", content="hello needle\nbye\n")
    assert not written.is_error and (ws / "docs" / "notes.md").read_text() == "hello needle\nbye\n"
    read = await fs("read_file", ws, path="docs/notes.md")
    assert read.output == "hello needle\nbye\n" and not read.is_error
    # An absolute path inside the base is fine.
    assert (await fs("read_file", ws, path=str(ws / "docs/notes.md"))).output == read.output
    (ws / "a.py").write_text("print('needle')\n")
    listing = await fs("list_files", ws)
    assert listing.output.splitlines()[1:] == ["a.py (16 bytes)", "docs/"]
    found = await fs("search_files", ws, pattern="*.md")
    assert "docs/notes.md" in found.output.split("Lines")[0]
    lines = await fs("search_files", ws, pattern="needle")
    assert "a.py:1: print('needle')" in lines.output
    assert "docs/notes.md:1: hello needle" in lines.output


@pytest.mark.parametrize(
    "path", ["../outside/secret.txt", "docs/../../outside/secret.txt", "{outside}/secret.txt"]
)
async def test_path_traversal_is_refused(ws: Path, outside: Path, path: str) -> None:
    path = path.format(outside=outside)
    read = await fs("read_file", ws, path=path)
    assert read.is_error and "outside the allowed directory" in read.output
    assert "TOP SECRET" not in read.output
    write = await fs("write_file", ws, path=path, content="owned")
    assert write.is_error and (outside / "secret.txt").read_text() == "TOP SECRET needle\n"
    assert (await fs("read_file", ws, path="/etc/passwd")).is_error
    assert (await fs("list_files", ws, path="..")).is_error
    assert (await fs("search_files", ws, pattern="*", path="..")).is_error


async def test_symlinks_out_of_base_dir_are_refused(ws: Path, outside: Path) -> None:
    (ws / "link.txt").symlink_to(outside / "secret.txt")
    (ws / "linked_dir").symlink_to(outside)
    for path in ("link.txt", "linked_dir/secret.txt"):
        read = await fs("read_file", ws, path=path)
        assert read.is_error and "TOP SECRET" not in read.output, read.output
    for path in ("link.txt", "linked_dir/secret.txt", "linked_dir/new.txt"):
        write = await fs("write_file", ws, path=path, content="owned")
        assert write.is_error, path
    assert (outside / "secret.txt").read_text() == "TOP SECRET needle\n"
    assert not (outside / "new.txt").exists()
    assert (await fs("list_files", ws, path="linked_dir")).is_error
    # Searching does not walk through the linked directory.
    search = await fs("search_files", ws, pattern="needle")
    assert "TOP SECRET" not in search.output and "secret.txt" not in search.output
    # A link that stays inside may be read, but writes never follow a final link.
    (ws / "real.txt").write_text("inside")
    (ws / "inner_link").symlink_to(ws / "real.txt")
    assert (await fs("read_file", ws, path="inner_link")).output == "inside"
    refused = await fs("write_file", ws, path="inner_link", content="x")
    assert refused.is_error and "symbolic link" in refused.output
    assert (ws / "real.txt").read_text() == "inside"


async def test_hard_links_are_not_written(ws: Path, outside: Path) -> None:
    os.link(outside / "secret.txt", ws / "hard.txt")
    refused = await fs("write_file", ws, path="hard.txt", content="owned")
    assert refused.is_error and "hard links" in refused.output
    assert (outside / "secret.txt").read_text() == "TOP SECRET needle\n"


async def test_file_limits_and_switches(ws: Path) -> None:
    (ws / "big.txt").write_text("x" * 5000)
    read = await fs("read_file", ws, {"max_file_bytes": 100}, path="big.txt")
    assert read.output.startswith("x" * 100) and "[truncated]" in read.output
    too_big = await fs("write_file", ws, {"max_file_bytes": 10}, path="n.txt", content="y" * 11)
    assert too_big.is_error and not (ws / "n.txt").exists()
    off = {"enable_save_file": False, "enable_read_file": False}
    disabled = await fs("write_file", ws, off, path="n.txt", content="y")
    assert disabled.is_error and "disabled" in disabled.output and not (ws / "n.txt").exists()
    assert "disabled" in (await fs("read_file", ws, off, path="big.txt")).output
    assert (
        await fs("read_file", ws, path="missing.txt")
    ).output == "Refused: 'missing.txt' does not exist"
    assert (await fs("read_file", ws, path="docs")).is_error
    os.mkfifo(ws / "fifo")
    assert "not a regular file" in (await fs("read_file", ws, path="fifo")).output


async def test_base_dir_confines_to_a_subdirectory(ws: Path) -> None:
    (ws / "private.txt").write_text("not for the tool")
    config = {"base_dir": "shared"}
    assert not (await fs("write_file", ws, config, path="a.txt", content="in")).is_error
    assert (ws / "shared" / "a.txt").read_text() == "in"
    escaped = await fs("read_file", ws, config, path="../private.txt")
    assert escaped.is_error and "not for the tool" not in escaped.output
    leaving = await fs("list_files", ws, {"base_dir": "../.."})
    assert leaving.is_error and "outside the execution's workspace" in leaving.output


async def test_directories_outside_the_workspace_are_refused(ws: Path, outside: Path) -> None:
    """An absolute working_dir or base_dir must lie inside the workspace; relative ones resolve
    under it; a symlink inside that points out counts as outside."""
    (ws / "out_link").symlink_to(outside)
    for configured in (str(outside), "/", "/etc", "out_link", "out_link/sub", "a/../../outside"):
        shell = await tool(
            "shell", "shell", {"command": "pwd"}, {"working_dir": configured}, workspace=ws
        )
        assert shell.is_error and "outside the execution's workspace" in shell.output, configured
        files = await fs("read_file", ws, {"base_dir": configured}, path="secret.txt")
        assert files.is_error and "outside the execution's workspace" in files.output, configured
        assert "TOP SECRET" not in files.output
    assert not (outside / "sub").exists()
    inside = str(ws / "abs" / "dir")
    ran = await tool("shell", "shell", {"command": "pwd"}, {"working_dir": inside}, workspace=ws)
    assert ran.output.strip() == inside
    wrote = await fs("write_file", ws, {"base_dir": inside}, path="f.txt", content="x")
    assert not wrote.is_error and (ws / "abs" / "dir" / "f.txt").read_text() == "x"
    relative = await fs("list_files", ws, {"base_dir": "abs"})
    assert relative.output.splitlines()[1:] == ["dir/"]


# --- python -----------------------------------------------------------------------------------


async def py(code: str, ws: Path, config: dict[str, Any] | None = None, **env: str) -> ToolResult:
    return await tool("python", "run_python", {"code": code}, config, workspace=ws, env=env)


async def test_python_runs_code_in_the_workspace(ws: Path) -> None:
    result = await py(
        "import os, json\nprint(json.dumps([1 + 1, os.getcwd(), os.environ['MINE']]))",
        ws,
        MINE="mine",
    )
    assert not result.is_error, result.output
    assert json.loads(result.output) == [2, str(ws), "mine"]
    failed = await py("raise ValueError('bad input')", ws)
    assert failed.is_error and "ValueError: bad input" in failed.output


async def test_python_never_sees_the_worker_environment(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTROLPLANE_API_KEY", "cp-worker-key-123456")
    result = await py("import os; print(sorted(os.environ)); print(os.environ['HOME'])", ws)
    assert "CONTROLPLANE_API_KEY" not in result.output and "cp-worker-key" not in result.output
    assert result.output.splitlines()[1] == str(ws)


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess\nsubprocess.run(['touch', 'marker'])",
        "from subprocess import run\nrun(['touch', 'marker'])",
        "import _posixsubprocess",
        "import socket",
        "import _socket",
        "import importlib\nimportlib.import_module('ctypes')",
        "__import__('socket')",
        "import os\nos.popen('touch marker').read()",  # os.popen imports subprocess
        "import http.client",  # which imports socket
    ],
)
async def test_python_blocked_imports(ws: Path, code: str) -> None:
    result = await py(code, ws)
    assert result.is_error and "is blocked by this tool's configuration" in result.output
    assert not (ws / "marker").exists()


async def test_python_allowed_imports(ws: Path) -> None:
    config = {"allowed_imports": ["yaml"]}
    assert (await py("import yaml, json\nprint(yaml.safe_dump({'a': 1}))", ws, config)).output == (
        "a: 1\n\n"
    )
    refused = await py("import httpx", ws, config)
    assert refused.is_error and "'httpx' is blocked" in refused.output
    # An explicitly allowed module wins over the default block list.
    allowed = await py("import socket\nprint('ok')", ws, {"allowed_imports": ["socket"]})
    assert allowed.output == "ok\n"
    # Without any list, third-party modules import normally; an empty block list frees socket.
    assert (await py("import httpx, socket\nprint('ok')", ws, {"blocked_imports": []})).output == (
        "ok\n"
    )


async def test_python_timeout_and_output_cap(ws: Path) -> None:
    started = time.monotonic()
    looping = await py("print('begun', flush=True)\nwhile True: pass", ws, {"timeout": 0.5})
    assert looping.is_error and "begun" in looping.output and "timed out" in looping.output
    assert time.monotonic() - started < 5
    capped = await py("print('x' * 100000)", ws, {"max_output_bytes": 500})
    assert capped.output.startswith("x" * 500) and "[truncated]" in capped.output
    assert (await py("   ", ws)).is_error


async def test_nul_bytes_in_output_are_escaped(ws: Path) -> None:
    printed = await tool("shell", "shell", {"command": "printf 'a\\0b'"}, workspace=ws)
    assert printed == ToolResult("a\\x00b")
    python = await py("print('c\\0d', end='')", ws)
    assert python == ToolResult("c\\x00d")
    (ws / "bin.dat").write_bytes(b"e\0f")
    assert (await fs("read_file", ws, path="bin.dat")).output == "e\\x00f"


# --- http -------------------------------------------------------------------------------------


@dataclass
class Target:
    port: int
    hits: list[tuple[str, str, str]] = field(default_factory=list)  # method, host, path

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """A loopback HTTP server that records every request it gets."""
    state = Target(0)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            host = self.headers.get("Host", "").rsplit(":", 1)[0]
            state.hits.append((self.command, host, self.path))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            port = state.port
            if self.path == "/hello":
                self._send(200, b"hello")
            elif self.path == "/echo":
                echoed = {
                    "method": self.command,
                    "body": body.decode(),
                    "type": self.headers.get("Content-Type"),
                    "token": self.headers.get("X-Token"),
                }
                self._send(200, json.dumps(echoed).encode(), "application/json")
            elif self.path == "/to-allowed":
                self._send(302, b"", location=f"http://localhost:{port}/hello")
            elif self.path == "/to-ip":
                self._send(302, b"", location=f"http://127.0.0.1:{port}/hello")
            elif self.path == "/to-metadata":
                self._send(302, b"", location="http://169.254.169.254/latest/meta-data/")
            elif self.path == "/to-mapped-metadata":
                self._send(302, b"", location="http://[::ffff:a9fe:a9fe]/latest/meta-data/")
            elif self.path == "/loop":
                self._send(302, b"", location="/loop")
            elif self.path == "/big":
                self._send(200, b"z" * 100_000)
            elif self.path == "/slow":
                time.sleep(2)
                self._send(200, b"late")
            else:
                self._send(404, b"no such page")

        def _send(
            self, status: int, body: bytes, kind: str = "text/plain", location: str = ""
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            if location:
                self.send_header("Location", location)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


async def http(ws: Path, config: dict[str, Any], **args: Any) -> ToolResult:
    return await tool("http", "http_request", {"method": "GET", **args}, config, workspace=ws)


# The test server is on loopback, which only `allow_private_networks` reaches.
LOCAL = {"allowed_hosts": ["localhost"], "allow_private_networks": True}


async def test_http_to_an_allowed_host(ws: Path, target: Target) -> None:
    result = await http(ws, LOCAL, url=target.url("localhost", "/hello"))
    assert not result.is_error
    assert result.output.startswith("HTTP 200 OK\ncontent-type: text/plain")
    assert result.output.endswith("\n\nhello")
    posted = await http(
        ws,
        LOCAL,
        method="POST",
        url=target.url("localhost", "/echo"),
        headers={"X-Token": "t1"},
        body={"k": "v"},
    )
    echoed = json.loads(posted.output.split("\n\n", 1)[1])
    assert echoed == {
        "method": "POST",
        "body": '{"k": "v"}',
        "type": "application/json",
        "token": "t1",
    }
    missing = await http(ws, LOCAL, url=target.url("localhost", "/nowhere"))
    assert missing.is_error and missing.output.startswith("HTTP 404")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hello",  # an IP literal not listed
        "http://localhost@127.0.0.1:{port}/hello",  # userinfo naming the allowed host
        "http://localhost:x@127.0.0.1:{port}/hello",
        "http://localhost.evil.invalid:{port}/hello",
        "http://evillocalhost:{port}/hello",
        "file:///etc/passwd",
        "ftp://localhost/hello",
        "http://[::1]:{port}/hello",
        "not a url",
    ],
)
async def test_http_refuses_hosts_off_the_list(ws: Path, target: Target, url: str) -> None:
    before = len(target.hits)
    result = await http(ws, LOCAL, url=url.format(port=target.port))
    assert result.is_error and result.output.startswith("Refused:"), result.output
    assert len(target.hits) == before  # nothing reached the server


async def test_http_redirects_are_checked_hop_by_hop(ws: Path, target: Target) -> None:
    followed = await http(ws, LOCAL, url=target.url("localhost", "/to-allowed"))
    assert followed.output.endswith("hello") and not followed.is_error
    before = len(target.hits)
    refused = await http(ws, LOCAL, url=target.url("localhost", "/to-ip"))
    assert refused.is_error and "'127.0.0.1' is not in allowed_hosts" in refused.output
    assert target.hits[before:] == [("GET", "localhost", "/to-ip")]
    looping = await http(ws, LOCAL, url=target.url("localhost", "/loop"))
    assert looping.is_error and "too many redirects" in looping.output
    # Listed exactly, the IP literal is allowed.
    direct = await http(
        ws,
        {"allowed_hosts": ["127.0.0.1"], "allow_private_networks": True},
        url=target.url("127.0.0.1", "/hello"),
    )
    assert direct.output.endswith("hello")


async def test_http_refuses_internal_addresses_without_the_flag(ws: Path, target: Target) -> None:
    before = len(target.hits)
    by_name = await http(
        ws, {"allowed_hosts": ["localhost"]}, url=target.url("localhost", "/hello")
    )
    assert by_name.is_error and by_name.output.startswith("Refused: host 'localhost' resolves to")
    assert "allow_private_networks" in by_name.output
    literal = {"allowed_hosts": ["127.0.0.1", "::1", "0.0.0.0"]}
    for host in ("127.0.0.1", "[::1]", "0.0.0.0"):
        refused = await http(ws, literal, url=target.url(host, "/hello"))
        assert refused.is_error and "allow_private_networks" in refused.output, refused.output
    assert len(target.hits) == before  # nothing reached the server
    allowed = await http(
        ws, {**literal, "allow_private_networks": True}, url=target.url("127.0.0.1", "/hello")
    )
    assert allowed.output.endswith("hello")


METADATA_HOSTS = ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "fe80::1"]
METADATA_HOSTS += ["::ffff:169.254.169.254", "169.254.170.2"]


@pytest.mark.parametrize("host", METADATA_HOSTS)
async def test_http_never_reaches_metadata_or_link_local(ws: Path, host: str) -> None:
    """Refused before any connection is made, even with private networks allowed and the
    address listed exactly."""
    config = {"allowed_hosts": [host], "allow_private_networks": True}
    shown = f"[{host}]" if ":" in host else host
    result = await http(ws, config, url=f"http://{shown}/latest/meta-data/")
    assert result.is_error and result.output.startswith("Refused: host"), result.output
    assert "never reachable" in result.output


@pytest.mark.parametrize("path", ["/to-metadata", "/to-mapped-metadata"])
async def test_http_redirect_to_a_refused_address_is_not_followed(
    ws: Path, target: Target, path: str
) -> None:
    config = {**LOCAL, "allowed_hosts": ["localhost", "169.254.169.254", "::ffff:a9fe:a9fe"]}
    before = len(target.hits)
    result = await http(ws, config, url=target.url("localhost", path))
    assert result.is_error and "never reachable" in result.output, result.output
    assert target.hits[before:] == [("GET", "localhost", path)]  # only the first hop


async def test_requests_go_to_the_checked_address_under_the_name(target: Target) -> None:
    """The pinned request connects to the address it was given and never looks the name up
    again (`.invalid` names resolve nowhere), while the server still sees the name."""
    url = httpx.URL(f"http://pinned.invalid:{target.port}/hello")
    async with httpx.AsyncClient(trust_env=False) as client:
        request = pinned_request(
            client, "GET", url, ipaddress.ip_address("127.0.0.1"), {"Host": "evil"}, None
        )
        response = await client.send(request)
    assert response.text == "hello"
    assert target.hits[-1] == ("GET", "pinned.invalid", "/hello")
    assert request.headers["host"] == f"pinned.invalid:{target.port}"
    # A name that resolves to several addresses: every one is checked, the reachable one used.
    async with httpx.AsyncClient(trust_env=False) as client:
        local = httpx.URL(f"http://localhost:{target.port}/hello")
        response = await send_pinned(client, "GET", local, {}, None, allow_private=True)
        assert (await response.aread()) == b"hello"
        await response.aclose()


@dataclass
class TlsTarget:
    port: int
    ca: str  # the PEM certificate clients trust
    server_names: list[str | None] = field(default_factory=list)


@pytest.fixture(scope="module")
def tls_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsTarget]:
    """An HTTPS server on loopback whose certificate names `pinned.test` only, recording the
    server name (SNI) each client sent."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pinned.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("pinned.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    (directory / "cert.pem").write_text(pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    state = TlsTarget(0, pem)

    def record(sock: Any, server_name: str | None, ctx: Any) -> None:
        state.server_names.append(server_name)

    context.sni_callback = record

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = f"hello {self.headers.get('Host')}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


async def test_pinned_tls_keeps_the_name_for_sni_and_certificate(tls_target: TlsTarget) -> None:
    trusted = ssl.create_default_context(cadata=tls_target.ca)
    loopback = ipaddress.ip_address("127.0.0.1")
    async with httpx.AsyncClient(verify=trusted, trust_env=False) as client:
        url = httpx.URL(f"https://pinned.test:{tls_target.port}/")
        response = await client.send(pinned_request(client, "GET", url, loopback, {}, None))
        assert response.text == f"hello pinned.test:{tls_target.port}"
        assert tls_target.server_names[-1] == "pinned.test"
        # The certificate is checked against the name, not the address: another name fails.
        other = httpx.URL(f"https://other.test:{tls_target.port}/")
        with pytest.raises(httpx.ConnectError, match="certificate"):
            await client.send(pinned_request(client, "GET", other, loopback, {}, None))
        assert tls_target.server_names[-1] == "other.test"


async def test_http_methods_timeout_and_cap(ws: Path, target: Target) -> None:
    before = len(target.hits)
    config = {**LOCAL, "allowed_methods": ["GET"]}
    refused = await http(ws, config, method="DELETE", url=target.url("localhost", "/hello"))
    assert refused.is_error and "method DELETE is not allowed" in refused.output
    nothing = await http(ws, {}, url=target.url("localhost", "/hello"))
    assert nothing.is_error and "allowed_hosts is empty" in nothing.output
    assert len(target.hits) == before
    capped = await http(
        ws, {**LOCAL, "max_response_bytes": 1000}, url=target.url("localhost", "/big")
    )
    body = capped.output.split("\n\n", 1)[1]
    assert body.startswith("z" * 1000) and "[truncated]" in body and "z" * 1001 not in body
    slow = await http(ws, {**LOCAL, "timeout": 0.3}, url=target.url("localhost", "/slow"))
    assert slow.is_error and "timed out" in slow.output
    pinned = await http(
        ws, {"allowed_hosts": ["localhost:1"]}, url=target.url("localhost", "/hello")
    )
    assert pinned.is_error


def test_host_patterns() -> None:
    def allowed(url: str, *patterns: str) -> bool:
        return host_allowed(httpx.URL(url), list(patterns))

    assert allowed("https://api.example.com/x", "example.com")
    assert allowed("https://EXAMPLE.com./x", "example.com")
    assert not allowed("https://badexample.com/", "example.com")
    assert not allowed("https://example.com.evil.org/", "example.com")
    assert allowed("https://a.b.example.com/", "*.example.com")
    assert not allowed("https://example.com/", "*.example.com")
    assert allowed("http://localhost:8080/", "localhost:8080")
    assert not allowed("http://localhost:8081/", "localhost:8080")
    assert allowed("https://example.com/", "example.com:443")
    assert not allowed("http://127.0.0.1/", "localhost")
    assert not allowed("http://10.0.0.1/", "*.0.0.1")
    assert allowed("http://[::1]:80/", "::1")
    assert not allowed("http://2130706433/", "127.0.0.1")


# --- sleep ------------------------------------------------------------------------------------


async def test_sleep_caps_and_heartbeats(ws: Path) -> None:
    slept = await tool("sleep", "sleep", {"seconds": 0.1}, workspace=ws)
    assert slept.output == "Slept 0.1 seconds" and not slept.is_error
    started = time.monotonic()
    capped = await tool("sleep", "sleep", {"seconds": 500}, {"max_seconds": 0.2}, workspace=ws)
    assert time.monotonic() - started < 2
    assert capped.output == "Slept 0.2 seconds (capped at max_seconds=0.2)"
    bad = await tool("sleep", "sleep", {"seconds": -1}, workspace=ws)
    assert bad.is_error and "seconds" in bad.output

    beats: list[Any] = []
    environment = ActivityEnvironment()
    environment.on_heartbeat = lambda *details: beats.append(details)

    async def in_activity() -> ToolResult:
        return await tool("sleep", "sleep", {"seconds": 1.2}, workspace=ws)

    assert (await environment.run(in_activity)).output == "Slept 1.2 seconds"
    assert len(beats) == 2  # at 0 s and 1 s


async def test_python_source_is_utf8_whatever_the_locale(ws: Path) -> None:
    result = await tool(
        "python", "run_python", {"code": "print('héllo ✓')"}, workspace=ws, env={"LANG": "C"}
    )
    assert result.output == "héllo ✓\n", result.output
