"""The `shell` tool: `/bin/sh -c COMMAND`, but only after the command is parsed and checked
against the skill's `allowed_commands` and `blocked_commands`.

Why a real parser: the lists are only worth something if the checker sees the same commands the
shell will run. A hand-written splitter cannot keep up with the shell grammar (function
definitions, loops, quoting that builds names, wrappers that run their arguments), so the command
is parsed into an AST with `bashlex` (bash's grammar, a superset of the POSIX sh that runs it)
and every node must be one the checker can prove harmless. Whatever it cannot prove is refused
with a message that says why; without either list the command runs as is.

With either list set:

- Allowed structure: simple commands, pipelines, `&&`, `||`, `;`, `&`, `!`, `if/then/elif/
  else`, subshells `( )`, groups `{ }` and redirections, as long as every command inside
  passes. Refused: function definitions, loops (`for`, `while`, `until`, `select`), `case`,
  `(( ))`, command substitution (`$(...)` and backquotes, anywhere in the text, even quoted),
  process substitution, arithmetic expansion, parameter expansion other than plain `$NAME`
  / `${NAME}`, and anything the parser does not understand (bash-only syntax such as `[[`, and
  here-documents with a quoted delimiter such as `<<'EOF'`, which bashlex cannot read).
- The command word must be a plain literal: no quotes, backslashes, globs or expansions
  building it (`"i"d`, `\\id`, `/bin/*d` and `$X` are refused). `/bin/rm` is `rm`; with
  `allowed_commands`, a command given by a path must live in a system directory (a copy at
  `./ls` is not `ls`).
- A blocked command is refused wherever it appears as a command. With `allowed_commands`, every
  command must be listed; `[`, `test`, `true`, `false` and `:` are always allowed.
- Wrappers that run their arguments as a command (`env`, `xargs`, `nice`, `timeout`, `exec`,
  `command`, `eval`, `source`, `sudo`, `busybox`, ... see WRAPPERS) and builtins that change
  what later commands run (`alias`, `hash`, `trap`, ...) are refused outright, even if
  listed: an allowed wrapper would run anything.
- Commands that execute commands through their arguments are checked: `find -exec/-execdir/
  -ok/-okdir`, awk programs using `system`, pipes, `@` indirect calls or `/inet`, sed scripts
  with the `e` command or flag (or read from a file), tar's `--to-command`, `--checkpoint-
  action`, `--use-compress-program`/`-I`, `-F`/`--info-script` and remote archives, git's `-c`,
  `--config-env`, `--exec-path`, subcommands that are not plain built-ins (aliases, `config`,
  `submodule`, `bisect`, ...) and `--upload-pack`/`--exec`-like options, `rsync -e`/
  `--rsync-path` and remote paths, `sort --compress-program`, `split --filter`, `zip -TT`,
  `man -P/-H`, `test -v`. Such commands may not take arguments built from expansions or brace
  patterns. `ssh`, `scp`, `sftp`, `nc` and `socat` are refused outright.
- `sh`/`bash`/`dash -c LITERAL` is analysed recursively (at most MAX_DEPTH levels; the shell
  must itself be allowed); a shell reading a script or stdin (`sh x.sh`, `echo id | sh`, a
  here-document) is refused. Interpreters and programs that run code they are given (python,
  perl, ruby, node, php, lua, make, vim, ed, other shells, ... see INTERPRETERS) are refused
  unless explicitly listed in `allowed_commands`.
- Assignments (`X=1 cmd`, `x=1`) may only set lower-case names or locale and terminal
  variables: `PATH=...`, `LD_PRELOAD=...` or `GIT_SSH_COMMAND=...` change what runs.

Whatever the lists, the command runs in `working_dir`, which must lie inside the execution's
workspace (relative to it; an absolute path elsewhere is refused).

The lists stop the model from starting a program directly; they are NOT a sandbox. An allowed
interpreter can run anything; a blocked program copied or linked under another name is another
name (prefer `allowed_commands`); an allowed program that reads configuration from the workspace
(git reads `~/.gitconfig` and `.git/config`, and HOME is the workspace) runs what that
configuration names; and redirections may write wherever the worker's user may. Isolation comes
from running the worker itself somewhere it may do no harm.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import bashlex

from activities.tools import Config, ToolRefused, ToolResult, argument, confined_dir, run_process

DEFAULT_TIMEOUT = 30
DEFAULT_MAX_OUTPUT = 65536
MAX_DEPTH = 3

# A command word the checker can read as it will run: no quoting, escapes, globs or expansions.
LITERAL_COMMAND = re.compile(r"^[A-Za-z0-9_./+@%:,-]+$")
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\+?=")
# Names an assignment may set: shell-local (lower-case) names, locale and terminal settings.
SAFE_VARIABLE = re.compile(
    r"^(?:[a-z_][a-z0-9_]*|LC_[A-Z]+|LANG|LANGUAGE|TZ|TERM|COLUMNS|LINES|NO_COLOR"
    r"|CLICOLOR|CLICOLOR_FORCE|GREP_COLORS?|LS_COLORS)$"
)
# `$NAME`, `${NAME}`, `${#NAME}` and the special parameters; nothing with operators.
PLAIN_PARAMETER = re.compile(r"^(?:#?[A-Za-z_][A-Za-z0-9_]*|[0-9]|[@*#?$!-])$")
# Brace expansion as bash (which may be /bin/sh) would do it: `{a,b}` or `{1..3}` unquoted.
BRACE_PATTERN = re.compile(r"\{[^{}]*(?:,|\.\.)[^{}]*\}")
SYSTEM_DIRS = frozenset(
    {"/bin", "/usr/bin", "/usr/local/bin", "/sbin", "/usr/sbin", "/usr/local/sbin"}
)

# Always allowed (unless blocked): they test, they run nothing.
HARMLESS = frozenset({"[", "test", "true", "false", ":"})
# Programs and builtins that run their arguments (or a string) as a command, or change what later
# commands run. Refused outright while a list is set: allowing one would allow everything.
WRAPPERS = frozenset(
    {
        *("env", "xargs", "nice", "ionice", "taskset", "timeout", "nohup", "setsid", "stdbuf"),
        *("chrt", "flock", "watch", "time", "command", "builtin", "exec", "eval", "source", "."),
        *("sudo", "doas", "su", "runuser", "chroot", "unbuffer", "script", "strace", "ltrace"),
        *("parallel", "busybox", "toybox", "nsenter", "unshare", "setpriv", "capsh", "fakeroot"),
        *("proot", "firejail", "bwrap", "systemd-run", "sg", "newgrp", "pkexec", "numactl"),
        *("cgexec", "prlimit", "setarch", "linux32", "linux64", "faketime", "eatmydata"),
        *("nocache", "chpst", "envdir", "setuidgid", "runcon", "valgrind", "perf", "catchsegv"),
        *("torsocks", "proxychains", "proxychains4", "xvfb-run", "dbus-launch", "ssh-agent"),
        *("expect", "at", "batch", "crontab", "start-stop-daemon", "daemonize", "sem", "entr"),
        *("retry", "alias", "unalias", "hash", "enable", "trap", "fc", "shopt", "let"),
        *("declare", "typeset"),
    }
)
# Shells whose `-c STRING` is parsed like the command itself.
SHELLS = frozenset({"sh", "bash", "dash"})
SHELL_FLAGS = frozenset("ceuxvnfC")
SHELL_OPTIONS = frozenset(
    {"pipefail", "errexit", "nounset", "xtrace", "verbose", "noglob", "noclobber", "posix"}
)
# Interpreters and programs that run code or commands they are given: allowed only when listed.
INTERPRETERS = re.compile(
    r"^(?:python|pypy|perl|ruby|irb|node|nodejs|deno|bun|php|php-cgi|lua|luajit|tclsh|wish"
    r"|Rscript|R|julia|java|jshell|groovy|scala|kotlin|osascript|gdb|lldb|ed|ex|vi|vim|nvim"
    r"|view|emacs|make|gmake|m4|dc|erl|escript|elixir|iex|ghci|runghc|guile|racket|sbcl"
    r"|clisp|ocaml|swift|dotnet|mono|npm|npx|pnpm|yarn|pip|pipx|uv|uvx|poetry|cargo|go"
    r"|zsh|ksh|mksh|ash|csh|tcsh|fish|yash|posh|pwsh|powershell|xonsh|nu|sqlite3|psql|mysql"
    r"|gnuplot|octave)[0-9.]*$"
)
# Programs whose whole purpose is to run commands elsewhere (remote commands, ProxyCommand, -e).
RUNS_COMMANDS = frozenset(
    {"ssh", "scp", "sftp", "slogin", "rsh", "rlogin", "socat", "nc", "ncat", "netcat", "telnet"}
)
GIT_SUBCOMMANDS = frozenset(
    {
        *("add", "am", "apply", "blame", "branch", "bundle", "cat-file", "check-ignore"),
        *("checkout", "cherry", "cherry-pick", "clean", "clone", "commit", "count-objects"),
        *("describe", "diff", "diff-files", "diff-index", "diff-tree", "fetch", "format-patch"),
        *("fsck", "gc", "grep", "hash-object", "init", "log", "ls-files", "ls-remote", "ls-tree"),
        *("merge", "merge-base", "mv", "name-rev", "notes", "pull", "push", "range-diff"),
        *("rebase", "reflog", "remote", "reset", "restore", "rev-list", "rev-parse", "revert"),
        *("rm", "shortlog", "show", "show-branch", "show-ref", "sparse-checkout", "stash"),
        *("status", "switch", "symbolic-ref", "tag", "update-index", "verify-commit"),
        *("verify-tag", "version", "whatchanged", "worktree"),
    }
)


def _name(word: str) -> str:
    return os.path.basename(word.rstrip("/")) or word


def _long_option(arg: str, names: Iterable[str]) -> bool:
    """`arg` is one of the long options `names`, as getopt reads it: abbreviated (`--to-com`),
    with or without `=value`."""
    if not arg.startswith("--") or len(arg) <= 3:
        return False
    given = arg[2:].split("=", 1)[0]
    return any(name.startswith(given) for name in names)


def _exact_long(arg: str, names: Iterable[str]) -> bool:
    """`arg` is exactly one of the long options `names` (with or without `=value`)."""
    return arg.startswith("--") and arg[2:].split("=", 1)[0] in names


def _short_cluster(arg: str) -> str:
    """The letters of a short option cluster (`-xvzf` → `xvzf`), or ''."""
    return arg[1:] if arg.startswith("-") and not arg.startswith("--") else ""


class Checker:
    def __init__(self, allowed: list[str], blocked: list[str]) -> None:
        self.allowed = {_name(c) for c in allowed}
        self.blocked = {_name(c) for c in blocked}
        self.arguments: dict[str, Callable[[str, list[str]], None]] = {
            "find": _check_find,
            "awk": _check_awk,
            "gawk": _check_awk,
            "mawk": _check_awk,
            "nawk": _check_awk,
            "sed": _check_sed,
            "gsed": _check_sed,
            "tar": _check_tar,
            "gtar": _check_tar,
            "git": _check_git,
            "rsync": _check_rsync,
            "sort": _check_sort,
            "split": _check_split,
            "zip": _check_zip,
            "man": _check_man,
            "test": _check_test,
            "[": _check_test,
        }

    @property
    def active(self) -> bool:
        return bool(self.allowed or self.blocked)

    # --- parsing ---------------------------------------------------------------------------

    def check(self, command: str, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise ToolRefused("the command nests shells too deeply to analyse")
        if "\0" in command:
            raise ToolRefused("the command contains a NUL byte")
        # bashlex leaves some substitutions unparsed (inside `${X:-...}`, here-documents), and
        # bash evaluates quoted text as code in places (`[ -v 'a[$(id)]' ]`): refuse them all.
        for marker in ("`", "$("):
            if marker in command:
                raise ToolRefused(
                    f"'{marker}' (command substitution) cannot be analysed while command lists "
                    "are set, even inside quotes"
                )
        if not command.strip():
            return
        try:
            trees = bashlex.parse(command)
        except NotImplementedError as error:
            raise ToolRefused(
                "the command uses syntax the checker cannot analyse while command lists are set "
                f"(case, select, time, coproc and $((...)) are refused): {error}"
            ) from None
        except Exception as error:  # bashlex raises ParsingError and others on bad input
            raise ToolRefused(f"cannot parse the command: {error}") from None
        for tree in trees:
            self._node(command, tree, depth)

    def _node(self, source: str, node: Any, depth: int) -> None:
        kind = node.kind
        if kind in ("list", "pipeline"):
            for part in node.parts:
                self._node(source, part, depth)
        elif kind == "compound":
            if source[node.pos[0] : node.pos[0] + 2] == "((":
                raise ToolRefused("'((' (arithmetic or nested subshells) cannot be analysed")
            for part in node.list:
                self._node(source, part, depth)
            for redirect in getattr(node, "redirects", None) or []:
                self._redirect(source, redirect)
        elif kind == "if":
            for part in node.parts:
                if part.kind != "reservedword":
                    self._node(source, part, depth)
        elif kind in ("for", "while", "until"):
            raise ToolRefused(f"'{kind}' loops cannot be analysed while command lists are set")
        elif kind == "function":
            raise ToolRefused("function definitions cannot be analysed while command lists are set")
        elif kind == "command":
            self._command(source, node, depth)
        elif kind in ("operator", "pipe", "reservedword"):
            return
        else:
            raise ToolRefused(f"'{kind}' cannot be analysed while command lists are set")

    # --- words -----------------------------------------------------------------------------

    def _expansions(self, source: str, node: Any) -> bool:
        """Refuse substitutions and complex parameter expansions inside a word; True when the
        word holds any expansion at all (so its runtime value is not its text)."""
        found = False
        for part in getattr(node, "parts", None) or []:
            kind = part.kind
            if kind in ("commandsubstitution", "processsubstitution"):
                raise ToolRefused(f"{kind.replace('substitution', ' substitution')} is refused")
            if kind == "parameter":
                if not PLAIN_PARAMETER.match(str(getattr(part, "value", ""))):
                    raise ToolRefused(
                        f"parameter expansion '{source[part.pos[0] : part.pos[1]]}' cannot be "
                        "analysed "
                        "(only $NAME and ${NAME} are)"
                    )
                found = True
            elif kind == "tilde":
                found = True
            else:
                raise ToolRefused(f"'{kind}' in a word cannot be analysed")
            found = self._expansions(source, part) or found
        return found

    def _redirect(self, source: str, node: Any) -> None:
        target = getattr(node, "output", None)
        if target is not None and not isinstance(target, int):
            self._expansions(source, target)

    def _assignment(self, source: str, word: str, node: Any) -> None:
        match = ASSIGNMENT.match(word)
        if match is None:
            raise ToolRefused(f"assignment '{word}' cannot be analysed")
        if not SAFE_VARIABLE.match(match.group(1)):
            raise ToolRefused(
                f"assigning {match.group(1)} could change what runs; only lower-case names and "
                "locale or terminal variables may be set while command lists are set"
            )
        self._expansions(source, node)

    # --- commands --------------------------------------------------------------------------

    def _command(self, source: str, node: Any, depth: int) -> None:
        words: list[Any] = []
        for part in node.parts:
            if part.kind == "assignment":
                self._assignment(source, part.word, part)
            elif part.kind == "redirect":
                self._redirect(source, part)
            elif part.kind == "word":
                words.append(part)
            else:
                raise ToolRefused(f"'{part.kind}' in a command cannot be analysed")
        if not words:
            return
        first = words[0]
        raw = source[first.pos[0] : first.pos[1]]
        literal = raw == "[" or (LITERAL_COMMAND.match(raw) is not None and raw[0] != "-")
        if getattr(first, "parts", None) or raw != first.word or not literal:
            raise ToolRefused(
                f"command word '{raw}' is not a plain name; quotes, escapes, globs and "
                "expansions may not build a command while command lists are set"
            )
        name = _name(raw)
        if name in self.blocked:
            raise ToolRefused(f"command '{name}' is blocked")
        if name in WRAPPERS:
            raise ToolRefused(
                f"'{name}' runs other commands (or changes what runs) and is refused while "
                "command lists are set"
            )
        if name in RUNS_COMMANDS:
            raise ToolRefused(f"'{name}' can run commands and is refused while lists are set")
        interpreter = name not in SHELLS and INTERPRETERS.match(name) is not None
        if interpreter and name not in self.allowed:
            raise ToolRefused(
                f"'{name}' runs code it is given; it may run only when listed in allowed_commands"
            )
        if self.allowed and name not in self.allowed and name not in HARMLESS:
            raise ToolRefused(f"command '{name}' is not in allowed_commands")
        if (
            self.allowed
            and "/" in raw
            and os.path.dirname(os.path.normpath(raw)) not in SYSTEM_DIRS
        ):
            raise ToolRefused(
                f"'{raw}' is not in a system directory, so it may not be the allowed '{name}'"
            )
        expanded = [False] + [self._expansions(source, word) for word in words[1:]]
        args = [word.word for word in words[1:]]
        if name in SHELLS:
            self._shell(name, words[1:], expanded[1:], depth)
            return
        check = self.arguments.get(name)
        if check is not None:
            for word, has_expansion in zip(words[1:], expanded[1:], strict=True):
                raw_arg = source[word.pos[0] : word.pos[1]]
                if has_expansion or BRACE_PATTERN.search(_unquoted(raw_arg)):
                    raise ToolRefused(
                        f"arguments of '{name}' must be literal (no expansions or brace "
                        f"patterns): '{raw_arg}'"
                    )
            check(name, args)

    def _shell(self, name: str, words: list[Any], expanded: list[bool], depth: int) -> None:
        """`sh -c LITERAL [name args...]`: the literal is checked like the command itself."""
        index = 0
        command: str | None = None
        reads_string = False
        while index < len(words):
            arg = words[index].word
            if arg == "--":
                index += 1
                break
            if arg in ("-o", "+o"):
                option = words[index + 1].word if index + 1 < len(words) else ""
                if option not in SHELL_OPTIONS:
                    raise ToolRefused(f"'{name} {arg} {option}' cannot be analysed")
                index += 2
                continue
            if len(arg) > 1 and arg[0] in "-+" and arg[1] != "-":
                letters = set(arg[1:])
                if not letters <= SHELL_FLAGS:
                    raise ToolRefused(f"'{name} {arg}' cannot be analysed")
                reads_string = reads_string or "c" in letters
                index += 1
                continue
            break
        if reads_string and index < len(words):
            if expanded[index]:
                raise ToolRefused(f"the command string of '{name} -c' must be literal")
            command = words[index].word
        if command is None:
            raise ToolRefused(
                f"'{name}' reading a script or stdin cannot be analysed; use '{name} -c' with a "
                "literal command"
            )
        self.check(command, depth + 1)


def _unquoted(raw: str) -> str:
    """`raw` with quoted parts and escaped characters blanked (for brace patterns)."""
    out: list[str] = []
    quote = ""
    escaped = False
    for char in raw:
        if escaped:
            out.append(" ")
            escaped = False
        elif quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote == '"':
                escaped = True
            out.append(" ")
        elif char == "\\":
            escaped = True
            out.append(" ")
        elif char in "'\"":
            quote = char
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


# --- commands that run commands through their arguments -------------------------------------


def _refuse(name: str, what: str) -> None:
    raise ToolRefused(f"'{name}' with {what} runs other commands and is refused")


def _check_find(name: str, args: list[str]) -> None:
    for arg in args:
        if arg in ("-exec", "-execdir", "-ok", "-okdir"):
            _refuse(name, arg)


AWK_FLAGS = frozenset("bcChLMnNOPrsStV")
AWK_SAFE_LONG = ("posix", "traditional", "sandbox", "re-interval", "characters-as-bytes")


def _check_awk(name: str, args: list[str]) -> None:
    programs: list[str] = []
    index = 0
    explicit = False
    while index < len(args):
        arg = args[index]
        if arg == "--":
            index += 1
            break
        if arg in ("-F", "-v", "--field-separator", "--assign"):
            index += 2
            continue
        if arg.startswith(("-F", "-v", "--field-separator=", "--assign=")):
            index += 1
            continue
        if arg in ("-e", "--source"):
            programs.append(args[index + 1] if index + 1 < len(args) else "")
            explicit = True
            index += 2
            continue
        if arg.startswith("--source="):
            programs.append(arg.partition("=")[2])
            explicit = True
            index += 1
            continue
        if arg.startswith("--"):
            if not _exact_long(arg, AWK_SAFE_LONG):
                raise ToolRefused(f"'{name} {arg}' cannot be analysed (program files, extensions)")
            index += 1
            continue
        if arg.startswith("-") and arg != "-":
            if not set(arg[1:]) <= AWK_FLAGS:
                raise ToolRefused(f"'{name} {arg}' cannot be analysed (program files, extensions)")
            index += 1
            continue
        break
    if not explicit and index < len(args):
        programs.append(args[index])
    for program in programs:
        text = program.replace("\\\n", "")
        if re.search(r"\bsystem\b", text):
            _refuse(name, "system()")
        if "|" in text:
            _refuse(name, "a pipe to or from a command")
        if "@" in text:
            _refuse(name, "an indirect call (@)")
        if "/inet" in text:
            _refuse(name, "a network special file")


SED_SAFE_LONG = (
    *("quiet", "silent", "debug", "posix", "regexp-extended", "separate", "sandbox"),
    *("unbuffered", "null-data", "zero-terminated", "follow-symlinks", "binary", "in-place"),
    "line-length",
)


def _check_sed(name: str, args: list[str]) -> None:
    scripts: list[str] = []
    index = 0
    explicit = False
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            break
        if arg in ("--expression", "--line-length"):
            if arg == "--expression":
                scripts.append(args[index] if index < len(args) else "")
                explicit = True
            index += 1
        elif arg.startswith("--expression="):
            scripts.append(arg.partition("=")[2])
            explicit = True
        elif arg.startswith("--"):
            if not _exact_long(arg, SED_SAFE_LONG):
                raise ToolRefused(f"'{name} {arg}' cannot be analysed (script files)")
        elif arg.startswith("-") and arg != "-":
            for position, letter in enumerate(arg[1:], 1):
                rest = arg[position + 1 :]
                if letter in "nErsuzb":
                    continue
                if letter == "e" or letter == "l":
                    value = rest
                    if not rest:
                        value = args[index] if index < len(args) else ""
                        index += 1
                    if letter == "e":
                        scripts.append(value)
                        explicit = True
                    break
                if letter == "i":
                    break  # the rest is the in-place suffix
                raise ToolRefused(f"'{name} {arg}' cannot be analysed (script files)")
        else:
            index -= 1
            break
    if not explicit and index < len(args):
        scripts.append(args[index])
    if sed_runs_commands("\n".join(scripts)):
        _refuse(name, "the 'e' command or flag")


def sed_runs_commands(script: str) -> bool:
    """Whether a sed script uses GNU sed's `e` command or `s///e` flag. Raises ToolRefused for a
    script it cannot read (which is refused rather than guessed at)."""
    i, n = 0, len(script)

    def to_line_end(start: int) -> int:
        while start < n and script[start] != "\n":
            start += 2 if script[start] == "\\" else 1
        return start

    def delimited(start: int, delimiter: str) -> int:
        """Index just past the next unescaped `delimiter` from `start`."""
        while start < n:
            if script[start] == "\\":
                start += 2
                continue
            if script[start] == delimiter:
                return start + 1
            start += 1
        raise ToolRefused("the sed script has an unterminated command")

    def address(start: int) -> int:
        if start < n and script[start] == "/":
            start = delimited(start + 1, "/")
        elif start < n and script[start] == "\\" and start + 1 < n:
            start = delimited(start + 2, script[start + 1])
        elif start < n and (script[start].isdigit() or script[start] == "$"):
            start += 1
            while start < n and (script[start].isdigit() or script[start] == "~"):
                start += 1
            return start
        else:
            return start
        while start < n and script[start] in "IM":
            start += 1
        return start

    while i < n:
        char = script[i]
        if char in " \t\n;}":
            i += 1
            continue
        if char == "#":
            i = to_line_end(i)
            continue
        i = address(i)
        if i < n and script[i] == ",":
            i += 1
            if i < n and script[i] in "+~":
                i += 1
                while i < n and script[i].isdigit():
                    i += 1
            else:
                i = address(i)
        while i < n and script[i] in " \t!":
            i += 1
        if i >= n:
            break
        command = script[i]
        i += 1
        if command == "e":
            return True
        if command in "{=dDgGhHlnNpPxzF":
            continue
        if command in "qQlL":
            while i < n and (script[i].isdigit() or script[i] in " \t"):
                i += 1
        elif command in "sy":
            if i >= n or script[i] in "\n\\":
                raise ToolRefused("the sed script has an unreadable s or y command")
            delimiter = script[i]
            i = delimited(delimited(i + 1, delimiter), delimiter)
            if command == "s":
                while i < n and script[i] not in ";\n}":
                    flag = script[i]
                    if flag == "e":
                        return True
                    if flag in "wW":
                        i = to_line_end(i)
                        break
                    if not (flag.isdigit() or flag in "gpiImM \t"):
                        raise ToolRefused(f"the sed flag '{flag}' cannot be analysed")
                    i += 1
        elif command in "aic":
            i = to_line_end(i)
        elif command in "rRwWbtTv:":
            i = to_line_end(i) if command in "rRwW:" else _label_end(script, i)
        else:
            raise ToolRefused(f"the sed command '{command}' cannot be analysed")
    return False


def _label_end(script: str, start: int) -> int:
    while start < len(script) and script[start] not in ";\n}":
        start += 1
    return start


TAR_DANGEROUS = (
    *("to-command", "checkpoint-action", "use-compress-program", "info-script"),
    *("new-volume-script", "rsh-command", "rmt-command"),
)


def _check_tar(name: str, args: list[str]) -> None:
    force_local = "--force-local" in args
    for position, arg in enumerate(args):
        if _long_option(arg, TAR_DANGEROUS):
            _refuse(name, arg.split("=", 1)[0])
        cluster = _short_cluster(arg)
        if position == 0 and not arg.startswith("-"):
            cluster = arg  # old style: `tar xIf ...`
        if set(cluster) & {"I", "F"}:
            _refuse(name, "-I or -F")
        if not arg.startswith("-") and ":" in arg and not force_local:
            raise ToolRefused(
                f"'{name}' would treat '{arg}' as a remote archive (run through rsh); "
                "add --force-local"
            )


GIT_DANGEROUS = (
    *("upload-pack", "receive-pack", "exec", "extcmd", "open-files-in-pager", "template"),
    *("config", "ext-diff", "textconv", "tool"),
)
GIT_SHORT = {"clone": {"u", "c"}, "ls-remote": {"u"}, "rebase": {"x"}, "grep": {"O"}}


def _check_git(name: str, args: list[str]) -> None:
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "-c" or arg.startswith("-c") or _long_option(arg, ("config-env",)):
            _refuse(name, "-c / --config-env (configuration can name commands)")
        if _long_option(arg, ("exec-path", "help")):
            _refuse(name, arg.split("=", 1)[0])
        if arg in ("-C", "--git-dir", "--work-tree", "--namespace"):
            index += 2
            continue
        if arg.startswith("-"):
            index += 1
            continue
        break
    if index >= len(args):
        return
    subcommand = args[index]
    if subcommand not in GIT_SUBCOMMANDS:
        raise ToolRefused(
            f"'git {subcommand}' is not a plain git built-in (aliases, external git-* programs "
            "and subcommands that run commands are refused)"
        )
    short = GIT_SHORT.get(subcommand, set())
    for arg in args[index + 1 :]:
        if arg == "--":
            break
        if _long_option(arg, GIT_DANGEROUS):
            _refuse(f"git {subcommand}", arg.split("=", 1)[0])
        if set(_short_cluster(arg)) & short:
            _refuse(f"git {subcommand}", arg)
        if arg.startswith(("ext::", "fd::")):
            _refuse(f"git {subcommand}", "a command transport")


def _check_rsync(name: str, args: list[str]) -> None:
    for arg in args:
        if _long_option(arg, ("rsh", "rsync-path", "server")) or "e" in _short_cluster(arg):
            _refuse(name, "-e / --rsh / --rsync-path")
        if not arg.startswith("-") and ":" in arg:
            _refuse(name, f"the remote path '{arg}' (reached through ssh)")


def _check_sort(name: str, args: list[str]) -> None:
    for arg in args:
        if _long_option(arg, ("compress-program",)):
            _refuse(name, "--compress-program")


def _check_split(name: str, args: list[str]) -> None:
    for arg in args:
        if _long_option(arg, ("filter",)):
            _refuse(name, "--filter")


def _check_zip(name: str, args: list[str]) -> None:
    for arg in args:
        if arg.startswith("-TT") or _long_option(arg, ("unzip-command",)):
            _refuse(name, "-TT / --unzip-command")


def _check_man(name: str, args: list[str]) -> None:
    for arg in args:
        if arg.startswith(("-P", "-H")) or _long_option(arg, ("pager", "html")):
            _refuse(name, "a pager or browser")


def _check_test(name: str, args: list[str]) -> None:
    # bash's test evaluates array subscripts of -v / -R names as arithmetic, running `$(...)`.
    if "-v" in args or "-R" in args:
        raise ToolRefused(f"'{name} -v' cannot be analysed while command lists are set")


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
    cwd = confined_dir(config.text("working_dir"), workspace, "working_dir")
    result = await run_process(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env=env,
        time_limit=timeout,
        max_output_bytes=max_output,
    )
    return result.text(timeout, max_output)
