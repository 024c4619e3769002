"""The built-in skill types and the tools each gives the model.

Shared by the API (which validates skill configurations and turns an agent's resolved skills
into tool specs) and the worker (which runs the tools by these names and reads these configs).
Pure: no I/O. The tool names and input schemas here are the contract the worker implements.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workflows.contracts import ToolSpec

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOL_NAME = 64


class SkillConfig(BaseModel):
    """A skill's configuration: the fields of its type, with defaults; other keys are kept."""

    model_config = ConfigDict(extra="allow")


def _entries(values: list[str], what: str) -> list[str]:
    cleaned = [value.strip() for value in values]
    if any(not value for value in cleaned):
        raise ValueError(f"{what} may not be empty")
    return cleaned


class ShellConfig(SkillConfig):
    allowed_commands: list[str] = Field(
        default_factory=list, description="Commands that may run; empty: any not blocked"
    )
    blocked_commands: list[str] = Field(default_factory=list, description="Commands refused")
    working_dir: str | None = Field(None, description="null: the execution's workspace")
    timeout: float = Field(30.0, gt=0, le=3600, description="Seconds per command")
    max_output_bytes: int = Field(65536, ge=1, le=16 * 1024 * 1024)

    @field_validator("allowed_commands", "blocked_commands")
    @classmethod
    def non_empty(cls, values: list[str]) -> list[str]:
        return _entries(values, "commands")


class FileSystemConfig(SkillConfig):
    base_dir: str | None = Field(
        None, description="Every path is confined here; null: the execution's workspace"
    )
    enable_read_file: bool = True
    enable_save_file: bool = True
    enable_list_files: bool = True
    enable_search_files: bool = True
    max_file_bytes: int = Field(1048576, ge=1, le=256 * 1024 * 1024)


class PythonConfig(SkillConfig):
    timeout: float = Field(30.0, gt=0, le=3600, description="Seconds per run")
    blocked_imports: list[str] = Field(default_factory=lambda: ["subprocess", "socket", "ctypes"])
    allowed_imports: list[str] = Field(
        default_factory=list, description="Modules that may be imported; empty: any not blocked"
    )
    max_output_bytes: int = Field(65536, ge=1, le=16 * 1024 * 1024)

    @field_validator("allowed_imports", "blocked_imports")
    @classmethod
    def non_empty(cls, values: list[str]) -> list[str]:
        return _entries(values, "module names")


class HttpConfig(SkillConfig):
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (optionally host:port) requests may go to; empty: none",
    )
    allowed_methods: list[str] = Field(
        default_factory=lambda: ["GET", "POST", "PUT", "PATCH", "DELETE"]
    )
    timeout: float = Field(15.0, gt=0, le=600, description="Seconds per request")
    max_response_bytes: int = Field(262144, ge=1, le=64 * 1024 * 1024)
    allow_private_networks: bool = Field(
        False,
        description="Allow hosts that resolve to loopback, private, unique-local or CGNAT "
        "addresses; link-local and cloud metadata addresses are refused regardless",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def hosts(cls, values: list[str]) -> list[str]:
        hosts = [host.lower() for host in _entries(values, "hosts")]
        for host in hosts:
            if "/" in host or any(ch.isspace() for ch in host) or "@" in host:
                raise ValueError(f"'{host}' is not a host name: give the host, not a URL")
        return hosts

    @field_validator("allowed_methods")
    @classmethod
    def methods(cls, values: list[str]) -> list[str]:
        methods = [method.upper() for method in _entries(values, "methods")]
        for method in methods:
            if method not in HTTP_METHODS:
                raise ValueError(f"'{method}' is not one of {', '.join(HTTP_METHODS)}")
        return list(dict.fromkeys(methods))


class SleepConfig(SkillConfig):
    max_seconds: float = Field(60.0, gt=0, le=3600)


class McpServerConfig(SkillConfig):
    """An MCP server whose tools the worker lists when a run starts. The only way to give a
    run a server that runs a command on the worker (stdio): skills are written by admins."""

    server_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,40}$",
        description="The name its tools are listed under; default: the skill's name",
    )
    command: str | None = Field(None, min_length=1, description="stdio: the program to run")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    type: Literal["stdio", "http", "sse"] | None = None
    url: str | None = Field(None, description="http/sse: the server's URL")
    headers: dict[str, str] = Field(default_factory=dict)
    allow_private_networks: bool = Field(
        False, description="http/sse: may the URL resolve to a private address"
    )

    @model_validator(mode="after")
    def one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server has either a command (stdio) or a url (http/sse)")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("url must be an http(s) URL")
        return self

    def server_config(self) -> dict[str, Any]:
        """The config as execution environments carry MCP servers."""
        keys = ("command", "args", "env") if self.command else ("type", "url", "headers")
        config = {key: getattr(self, key) for key in keys if getattr(self, key) is not None}
        if self.url and self.allow_private_networks:
            config["allow_private_networks"] = True
        return config


ConfigModel = type[SkillConfig]


@dataclass(frozen=True)
class ToolInfo:
    name: str
    description: str


@dataclass(frozen=True)
class SkillVariant:
    """A ready-made configuration of a type (the catalogue's templates)."""

    id: str
    name: str
    description: str
    configuration: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SkillTypeInfo:
    type: str
    name: str
    description: str
    icon: str
    config_model: ConfigModel
    risk_level: str
    tools: tuple[ToolInfo, ...] = ()
    variants: tuple[SkillVariant, ...] = ()

    def default_configuration(self) -> dict[str, Any]:
        # Built without validation: some types (mcp_server) have no valid empty configuration.
        return self.config_model.model_construct().model_dump(mode="json")

    def config_schema(self) -> dict[str, Any]:
        return self.config_model.model_json_schema()


SHELL_TOOLS = (ToolInfo("shell", "Run a shell command"),)
FILE_TOOLS = (
    ToolInfo("read_file", "Read a text file"),
    ToolInfo("write_file", "Write a text file, creating its directories"),
    ToolInfo("list_files", "List a directory"),
    ToolInfo("search_files", "Find files whose path matches a glob pattern"),
)
PYTHON_TOOLS = (ToolInfo("run_python", "Run Python code in a subprocess"),)
HTTP_TOOLS = (ToolInfo("http_request", "Make an HTTP request to an allowed host"),)
SLEEP_TOOLS = (ToolInfo("sleep", "Wait a number of seconds"),)

SKILL_TYPES: dict[str, SkillTypeInfo] = {
    info.type: info
    for info in (
        SkillTypeInfo(
            "shell",
            "Shell",
            "Run shell commands on the worker, with allowed and blocked commands, a working "
            "directory, a timeout and an output cap.",
            "Terminal",
            ShellConfig,
            "critical",
            SHELL_TOOLS,
            (
                SkillVariant("shell", "Shell", "Any command that is not blocked"),
                SkillVariant(
                    "shell_read_only",
                    "Shell (read only)",
                    "Only commands that inspect files and the system",
                    {
                        "allowed_commands": [
                            "ls",
                            "cat",
                            "head",
                            "tail",
                            "grep",
                            "find",
                            "wc",
                            "pwd",
                            "echo",
                        ]
                    },
                ),
                SkillVariant(
                    "shell_safe",
                    "Shell (safe)",
                    "Any command except the destructive ones",
                    {"blocked_commands": ["rm", "sudo", "dd", "mkfs", "shutdown", "reboot"]},
                ),
            ),
        ),
        SkillTypeInfo(
            "file_system",
            "File System",
            "Read, write, list and search files, confined to a base directory.",
            "FolderOpen",
            FileSystemConfig,
            "high",
            FILE_TOOLS,
            (
                SkillVariant("file_system", "File System", "Read and write files"),
                SkillVariant(
                    "file_system_read_only",
                    "File System (read only)",
                    "Read, list and search files; no writes",
                    {"enable_save_file": False},
                ),
            ),
        ),
        SkillTypeInfo(
            "python",
            "Python",
            "Run Python code in a subprocess, with a timeout and blocked imports.",
            "Code",
            PythonConfig,
            "high",
            PYTHON_TOOLS,
            (
                SkillVariant("python", "Python", "Code that imports no process or network module"),
                SkillVariant(
                    "python_strict",
                    "Python (strict)",
                    "No file system, process or network modules",
                    {
                        "blocked_imports": [
                            "subprocess",
                            "socket",
                            "ctypes",
                            "os",
                            "shutil",
                            "multiprocessing",
                            "pathlib",
                        ]
                    },
                ),
            ),
        ),
        SkillTypeInfo(
            "http",
            "HTTP",
            "HTTP requests to allow-listed hosts only.",
            "Globe",
            HttpConfig,
            "medium",
            HTTP_TOOLS,
            (
                SkillVariant(
                    "http_read_only",
                    "HTTP (read only)",
                    "GET requests to the hosts listed",
                    {"allowed_hosts": ["api.github.com"], "allowed_methods": ["GET"]},
                ),
            ),
        ),
        SkillTypeInfo(
            "sleep",
            "Sleep",
            "Pause for a number of seconds (waiting on something outside).",
            "Clock",
            SleepConfig,
            "low",
            SLEEP_TOOLS,
            (SkillVariant("sleep", "Sleep", "Up to a minute per call"),),
        ),
        SkillTypeInfo(
            "mcp_server",
            "MCP server",
            "An MCP server (a command run on the worker over stdio, or an http/sse URL) whose "
            "tools the agent gets, each call policy-checked like a built-in tool.",
            "Plug",
            McpServerConfig,
            "high",
            (),
            (
                SkillVariant(
                    "mcp_server_http",
                    "MCP server (HTTP)",
                    "A streamable HTTP MCP server",
                    {"type": "http", "url": "https://mcp.example.com/mcp"},
                ),
            ),
        ),
        SkillTypeInfo(
            "custom",
            "Custom",
            "Free-form configuration with no built-in tools (for tools served elsewhere, such "
            "as MCP servers).",
            "Wrench",
            SkillConfig,
            "medium",
            (),
            (SkillVariant("custom", "Custom", "An empty configuration"),),
        ),
    )
}


@dataclass(frozen=True)
class ConfigIssue:
    """One problem with a configuration: where (dotted path inside it), what, and its kind."""

    field: str
    message: str
    type: str


class SkillConfigError(ValueError):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("; ".join(_format(issue) for issue in issues))
        self.issues = issues


def _format(issue: ConfigIssue) -> str:
    return f"{issue.field}: {issue.message}" if issue.field else issue.message


def config_issues(skill_type: str, configuration: Any) -> list[ConfigIssue]:
    """Every problem with `configuration` for `skill_type`; empty when it is valid."""
    info = SKILL_TYPES.get(skill_type)
    if info is None:
        known = ", ".join(SKILL_TYPES)
        return [ConfigIssue("", f"Unknown skill type '{skill_type}'; known: {known}", "enum")]
    if not isinstance(configuration, dict):
        return [ConfigIssue("", "The configuration must be an object", "dict_type")]
    try:
        info.config_model.model_validate(configuration)
    except ValidationError as exc:
        return [
            ConfigIssue(
                ".".join(str(part) for part in err["loc"]), str(err["msg"]), str(err["type"])
            )
            for err in exc.errors(include_url=False)
        ]
    return []


def validate_config(skill_type: str, configuration: Any) -> list[str]:
    """The problems with a configuration, as messages; empty when it is valid."""
    return [_format(issue) for issue in config_issues(skill_type, configuration)]


def parse_config(skill_type: str, configuration: dict[str, Any]) -> SkillConfig:
    """The validated configuration; raises SkillConfigError."""
    issues = config_issues(skill_type, configuration)
    if issues:
        raise SkillConfigError(issues)
    return SKILL_TYPES[skill_type].config_model.model_validate(configuration)


def stored_config(skill_type: str, configuration: dict[str, Any]) -> dict[str, Any]:
    """What a skill stores: the fields sent, coerced, without the defaults (so a changed default
    reaches every skill that did not set it). Raises SkillConfigError."""
    return parse_config(skill_type, configuration).model_dump(mode="json", exclude_unset=True)


def effective_config(skill_type: str, configuration: dict[str, Any]) -> dict[str, Any]:
    """Every field with its default filled in. Raises SkillConfigError."""
    return parse_config(skill_type, configuration).model_dump(mode="json")


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


def _shell_tools(config: ShellConfig) -> list[tuple[str, str, dict[str, Any]]]:
    where = config.working_dir or "the execution's workspace"
    notes = [f"Runs in {where}; times out after {config.timeout:g} s."]
    if config.allowed_commands:
        notes.append(f"Allowed commands: {', '.join(config.allowed_commands)}.")
    if config.blocked_commands:
        notes.append(f"Blocked commands: {', '.join(config.blocked_commands)}.")
    schema = _object(
        {"command": {"type": "string", "description": "The command line"}}, ["command"]
    )
    return [("shell", "Run a shell command. " + " ".join(notes), schema)]


def _file_tools(config: FileSystemConfig) -> list[tuple[str, str, dict[str, Any]]]:
    root = config.base_dir or "the execution's workspace"
    path = {"type": "string", "description": f"A path relative to {root}"}
    listed = {"type": "string", "description": f"A directory relative to {root}", "default": "."}
    tools: list[tuple[str, str, dict[str, Any]]] = []
    if config.enable_read_file:
        tools.append(
            ("read_file", f"Read a text file under {root}.", _object({"path": path}, ["path"]))
        )
    if config.enable_save_file:
        content = {"type": "string", "description": "The whole new content"}
        tools.append(
            (
                "write_file",
                f"Write a text file under {root}, creating its directories.",
                _object({"path": path, "content": content}, ["path", "content"]),
            )
        )
    if config.enable_list_files:
        tools.append(
            ("list_files", f"List a directory under {root}.", _object({"path": listed}, []))
        )
    if config.enable_search_files:
        pattern = {"type": "string", "description": "A glob pattern, e.g. **/*.py"}
        tools.append(
            (
                "search_files",
                f"Find files under {root} whose path matches a glob pattern.",
                _object({"pattern": pattern, "path": listed}, ["pattern"]),
            )
        )
    return tools


def _python_tools(config: PythonConfig) -> list[tuple[str, str, dict[str, Any]]]:
    notes = [f"Times out after {config.timeout:g} s; print what you want to see."]
    if config.allowed_imports:
        notes.append(f"Allowed imports: {', '.join(config.allowed_imports)}.")
    if config.blocked_imports:
        notes.append(f"Blocked imports: {', '.join(config.blocked_imports)}.")
    schema = _object({"code": {"type": "string", "description": "Python source"}}, ["code"])
    return [("run_python", "Run Python code in a subprocess. " + " ".join(notes), schema)]


def _http_tools(config: HttpConfig) -> list[tuple[str, str, dict[str, Any]]]:
    hosts = ", ".join(config.allowed_hosts) or "none (every request is refused)"
    schema = _object(
        {
            "method": {"type": "string", "enum": list(config.allowed_methods)},
            "url": {"type": "string", "description": "An http(s) URL on an allowed host"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {"type": "string", "description": "The request body, sent as is"},
        },
        ["method", "url"],
    )
    return [("http_request", f"Make an HTTP request. Allowed hosts: {hosts}.", schema)]


def _sleep_tools(config: SleepConfig) -> list[tuple[str, str, dict[str, Any]]]:
    seconds = {"type": "number", "minimum": 0, "maximum": config.max_seconds}
    schema = _object({"seconds": seconds}, ["seconds"])
    return [("sleep", f"Wait up to {config.max_seconds:g} seconds.", schema)]


def _risk(skill_type: str, config: SkillConfig) -> str:
    if isinstance(config, FileSystemConfig) and not config.enable_save_file:
        return "medium"
    return SKILL_TYPES[skill_type].risk_level


def tool_specs(
    skill_id: str, skill_name: str, skill_type: str, configuration: dict[str, Any]
) -> list[ToolSpec]:
    """The tools one skill gives, named as the worker knows them (`custom` gives none).
    Raises SkillConfigError when the configuration is not valid for the type."""
    config = parse_config(skill_type, configuration)
    tools: list[tuple[str, str, dict[str, Any]]]
    if isinstance(config, ShellConfig):
        tools = _shell_tools(config)
    elif isinstance(config, FileSystemConfig):
        tools = _file_tools(config)
    elif isinstance(config, PythonConfig):
        tools = _python_tools(config)
    elif isinstance(config, HttpConfig):
        tools = _http_tools(config)
    elif isinstance(config, SleepConfig):
        tools = _sleep_tools(config)
    else:
        tools = []
    effective = config.model_dump(mode="json")
    risk = _risk(skill_type, config)
    return [
        ToolSpec(
            name=name,
            description=f"{description} (skill '{skill_name}')",
            input_schema=schema,
            source="builtin",
            category=skill_type,
            risk_level=risk,
            skill_id=skill_id,
            configuration=dict(effective),
        )
        for name, description, schema in tools
    ]


def slug(text: str) -> str:
    """A tool-name-safe slug: lower case, runs of other characters as one `_`."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "skill"


def _unique_name(name: str, skill_name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    base = slug(skill_name)
    for attempt in itertools.count(1):
        tail = "" if attempt == 1 else f"_{attempt}"
        room = MAX_TOOL_NAME - len(name) - 2 - len(tail)
        candidate = f"{name}__{base[:room]}{tail}"
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable")


def tools_for_skills(skills: Iterable[tuple[str, str, str, dict[str, Any]]]) -> list[ToolSpec]:
    """The tools of several skills `(id, name, type, configuration)` in order. A name an earlier
    skill took gets `__<slug of the skill's name>`, so every name is unique, at most 64
    characters and matches `^[a-zA-Z0-9_-]+$`. Raises SkillConfigError."""
    taken: set[str] = set()
    specs: list[ToolSpec] = []
    for skill_id, skill_name, skill_type, configuration in skills:
        for spec in tool_specs(skill_id, skill_name, skill_type, configuration):
            spec.name = _unique_name(spec.name, skill_name, taken)
            assert TOOL_NAME.match(spec.name), spec.name
            taken.add(spec.name)
            specs.append(spec)
    return specs


def mcp_servers_of(skills: Iterable[tuple[str, str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The MCP servers of skills `(name, type, configuration)` of type mcp_server, by server
    name (a later skill with the same name wins). Raises SkillConfigError."""
    servers: dict[str, dict[str, Any]] = {}
    for skill_name, skill_type, configuration in skills:
        if skill_type != "mcp_server":
            continue
        config = parse_config(skill_type, configuration)
        assert isinstance(config, McpServerConfig)
        servers[config.server_name or slug(skill_name)[:40]] = config.server_config()
    return servers
