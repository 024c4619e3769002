"""The `shell` tool: `/bin/sh -c COMMAND`, but only after the command is parsed and checked
against the skill's `allowed_commands` and `blocked_commands`.

With either list set, the command is split the way the shell splits it (quotes removed; `;`,
`&&`, `||`, `|`, `&`, newlines and parentheses separate commands) and:

- any word anywhere naming a blocked command refuses the whole command (`/bin/rm` is `rm`;
  words inside quoted strings, `X=value` assignments and `--opt=value` are searched too, so
  `sh -c 'rm x'`, `xargs rm`, `find -exec rm` and `timeout 5 rm` are caught);
- with `allowed_commands` set, the command word of every segment must be allowed, looking
  through wrappers (`env`, `exec`, `command`, `nohup`, `timeout`, `nice`, `xargs`,
  `find -exec`, ...) to the command they run, and into `sh -c STRING` and `eval`;
- what cannot be analysed is refused: command substitution (`` ` ``, `$(`), parameter expansion
  `${`, process substitution, ANSI-C quoting, a command word built from expansions or globs,
  and a shell reading commands from stdin or a script.

The lists stop the model from starting a program directly; they are not a sandbox (an allowed
interpreter can still do anything the worker's user can). Without lists the command runs as is.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from activities.tools import Config, ToolRefused, ToolResult, argument, run_process

DEFAULT_TIMEOUT = 30
DEFAULT_MAX_OUTPUT = 65536
MAX_DEPTH = 4

UNANALYSABLE = ("`", "$(", "${", "<(", ">(", "$'", '$"')
PUNCTUATION = ";&|()<>\n"
SAFE_COMMAND_WORD = re.compile(r"^[\w./+@%:~-]+$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FD_NUMBER = re.compile(r"^\d+$")
# Words that start a compound command, after which a command word follows.
KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "{", "}", "!"}
# Segments that are not commands: `for x in a b`, `case $x in`, `esac`, `function f`.
NON_COMMANDS = {"for", "select", "case", "esac", "function", "in"}
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox"}
EVALUATORS = {"eval", "source", "."}
# Wrappers that run the command that follows their options. Value: options taking an argument.
WRAPPERS: dict[str, set[str]] = {
    "env": {"-u", "--unset", "-C", "--chdir"},
    "exec": {"-a"},
    "command": set(),
    "builtin": set(),
    "nohup": set(),
    "time": {"-f", "--format", "-o", "--output"},
    "setsid": set(),
    "nice": {"-n", "--adjustment"},
    "ionice": {"-c", "-n", "-p", "-t"},
    "stdbuf": {"-i", "-o", "-e"},
    "timeout": {"-s", "--signal", "-k", "--kill-after"},
    "xargs": {"-I", "-i", "-n", "-L", "-l", "-P", "-d", "-E", "-e", "-s", "-a", "--arg-file"},
    "sudo": {"-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-T"},
    "doas": {"-u", "-C"},
    "unbuffer": set(),
    "chroot": set(),
}
# Wrappers with a positional argument before the command (`timeout 5 cmd`, `chroot DIR cmd`).
POSITIONAL_BEFORE_COMMAND = {"timeout": 1, "chroot": 1}
# Wrappers that must be allowed themselves: they change who runs the command.
PRIVILEGED = {"sudo", "doas", "chroot"}
FIND_EXEC = {"-exec", "-execdir", "-ok", "-okdir"}


def tokens(command: str) -> list[str]:
    """Words and operators as /bin/sh splits them (quotes removed). `#` is kept as a word, so a
    comment cannot hide a command from the check (it may only refuse a harmless one)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=PUNCTUATION)
    lexer.whitespace = " \t\r"
    lexer.commenters = ""
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError as error:  # unbalanced quotes
        raise ToolRefused(f"cannot parse the command: {error}") from None


def _is_operator(token: str) -> bool:
    return bool(token) and all(c in PUNCTUATION for c in token)


def _is_redirect(token: str) -> bool:
    return token[0] in "<>" and not any(c in ";(\n)" for c in token) and "||" not in token


def segments(words: list[str]) -> list[list[str]]:
    """Simple commands: operators split, redirections and their targets dropped."""
    result: list[list[str]] = [[]]
    skip_next = False
    for index, token in enumerate(words):
        if skip_next:
            skip_next = False
            continue
        if _is_operator(token):
            if _is_redirect(token):
                # `2>file`: the fd number is not a word of the command.
                if result[-1] and FD_NUMBER.match(result[-1][-1]) and index > 0:
                    result[-1].pop()
                skip_next = True
            else:
                result.append([])
            continue
        result[-1].append(token)
    return [segment for segment in result if segment]


def _name(word: str) -> str:
    return os.path.basename(word.rstrip("/")) or word


def _check_blocked_words(words: list[str], blocked: set[str], depth: int) -> None:
    for word in words:
        if _is_operator(word):
            continue
        parts = {word, *re.split(r"[=:,]", word)}
        for part in parts:
            if part and _name(part) in blocked:
                raise ToolRefused(f"command '{_name(part)}' is blocked")
        try:
            inner = tokens(word)
        except ToolRefused:  # not a script (`it's`): its plain words are what could run
            inner = [part for part in re.split(r"[\s;&|()<>'\"\\`$]+", word) if part]
        if inner != [word]:  # a quoted string holding more words, as `sh -c '...'` takes
            if depth >= MAX_DEPTH:
                raise ToolRefused("the command nests too deeply to analyse")
            _check_blocked_words(inner, blocked, depth + 1)


class Checker:
    def __init__(self, allowed: list[str], blocked: list[str]) -> None:
        self.allowed = {_name(c) for c in allowed}
        self.blocked = {_name(c) for c in blocked}

    @property
    def active(self) -> bool:
        return bool(self.allowed or self.blocked)

    def check(self, command: str, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise ToolRefused("the command nests too deeply to analyse")
        for marker in UNANALYSABLE:
            if marker in command:
                raise ToolRefused(f"'{marker}' cannot be analysed while command lists are set")
        words = tokens(command)
        if self.blocked:
            _check_blocked_words(words, self.blocked, depth)
        for segment in segments(words):
            self._check_segment(segment, depth)

    def _check_segment(self, words: list[str], depth: int) -> None:
        rest = list(words)
        while rest and (rest[0] in KEYWORDS or ASSIGNMENT.match(rest[0])):
            rest.pop(0)
        if not rest or rest[0] in NON_COMMANDS:
            return
        self._check_command(rest, depth)

    def _check_command(self, words: list[str], depth: int) -> None:
        word = words[0]
        if not SAFE_COMMAND_WORD.match(word):
            raise ToolRefused(f"command word '{word}' cannot be analysed")
        name = _name(word)
        if name in self.blocked:
            raise ToolRefused(f"command '{name}' is blocked")
        args = words[1:]
        if name in WRAPPERS:
            if name in PRIVILEGED:
                self._require_allowed(name)
            wrapped = self._unwrap(name, args)
            if wrapped:
                self._check_command(wrapped, depth)
            elif name not in ("xargs", "env", "time", "nohup", "command"):
                self._require_allowed(name)
            else:
                # `env` alone prints the environment; `xargs` alone runs echo.
                self._require_allowed("echo" if name == "xargs" else name)
            return
        self._require_allowed(name)
        if name in SHELLS or name in EVALUATORS:
            self._check_interpreter(name, args, depth)
        if name == "find":
            for index, arg in enumerate(args[:-1]):
                if arg in FIND_EXEC:
                    self._check_command(args[index + 1 :], depth)

    def _require_allowed(self, name: str) -> None:
        if self.allowed and name not in self.allowed:
            raise ToolRefused(f"command '{name}' is not in allowed_commands")

    def _unwrap(self, name: str, args: list[str]) -> list[str]:
        takes_value = WRAPPERS[name]
        positional = POSITIONAL_BEFORE_COMMAND.get(name, 0)
        index = 0
        while index < len(args):
            arg = args[index]
            if name == "env" and (arg in ("-S", "--split-string") or arg.startswith("-S")):
                raise ToolRefused("'env -S' cannot be analysed while command lists are set")
            if name == "env" and ASSIGNMENT.match(arg):
                index += 1
            elif arg == "--":
                index += 1
                break
            elif arg.startswith("-") and len(arg) > 1:
                index += 2 if arg in takes_value else 1
            else:
                break
        index += positional
        return args[index:]

    def _check_interpreter(self, name: str, args: list[str], depth: int) -> None:
        if name == "busybox":
            if args:
                self._check_command(args, depth)
            return
        if name == "eval":
            self.check(" ".join(args), depth + 1)
            return
        if name in ("source", "."):
            raise ToolRefused(f"'{name}' runs a script that cannot be analysed")
        # A shell: only `sh -c STRING` can be checked; stdin and script files cannot.
        for index, arg in enumerate(args):
            if arg.startswith("-") and "c" in arg.lstrip("-") and not arg.startswith("--"):
                if index + 1 >= len(args):
                    raise ToolRefused(f"'{name} -c' without a command")
                self.check(args[index + 1], depth + 1)
                return
        raise ToolRefused(f"'{name}' reading a script or stdin cannot be analysed")


def check_command(command: str, allowed: list[str], blocked: list[str]) -> None:
    """Raise ToolRefused unless `command` passes the lists (see the module docstring)."""
    checker = Checker(allowed, blocked)
    if checker.active:
        checker.check(command)


async def run(
    name: str,
    arguments: Mapping[str, Any],
    config: Config,
    *,
    workspace: Path,
    env: Mapping[str, str],
) -> ToolResult:
    command = argument(arguments, "command")
    if not command.strip():
        raise ToolRefused("the command is empty")
    if "\0" in command:
        raise ToolRefused("the command contains a NUL byte")
    allowed = config.strings("allowed_commands", [])
    blocked = config.strings("blocked_commands", [])
    timeout = config.number("timeout", DEFAULT_TIMEOUT, minimum=0.1)
    max_output = config.integer("max_output_bytes", DEFAULT_MAX_OUTPUT, minimum=1)
    check_command(command, allowed, blocked)
    cwd = working_dir(config.text("working_dir"), workspace)
    result = await run_process(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env=env,
        time_limit=timeout,
        max_output_bytes=max_output,
    )
    return result.text(timeout, max_output)


def working_dir(configured: str | None, workspace: Path) -> Path:
    """The configured working directory (relative ones under the workspace), or the workspace."""
    workspace.mkdir(parents=True, exist_ok=True)
    if not configured:
        return workspace
    path = Path(configured)
    if not path.is_absolute():
        path = Path(os.path.realpath(workspace / path))
        if not path.is_relative_to(os.path.realpath(workspace)):
            raise ToolRefused(f"working_dir '{configured}' leaves the workspace")
        path.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        raise ToolRefused(f"working_dir '{configured}' is not a directory")
    return path
