"""The `claude_code` runtime: one agent turn through claude-agent-sdk, i.e. the Claude Code CLI
it bundles, run as a subprocess.

One SDK query per turn, and every attempt is self-contained: a fresh CLI in a fresh temporary
HOME and working directory, removed afterwards. Continuity comes from the workflow, which
already carries the conversation: the prompt is the newest user message, and the earlier turns
(at most MAX_HISTORY_MESSAGES) go into the system prompt. Nothing lives on the worker between
turns, so a retried attempt, or the next turn, may run on any worker.

Tools: the agent's tools (skills and MCP servers) are offered to the CLI as one in-process SDK
MCP server, TOOL_SERVER, so the model calls `mcp__controlplane__<tool>`. Each call goes through
ToolActivities.run_tool in this activity, the same path as the default runtime's run_tool
activity: policy check, tool_started / policy_violation / tool_completed events, secret
redaction. The CLI's own tools (Bash, Read, ...) stay off, and only the agent's tools are
pre-approved.

Teams: a claude_code team's leader runs here with its members as the SDK's subagents (the
CLI's Agent tool), each with its own prompt and its own tools from TOOL_SERVER, so their tool
calls take the same checked path. What a member says reaches the team's stream as
`member_message_complete`.

Errors: a model call refused for good (400, 401, 403, 404, ...) fails the execution at once
with the CLI's message; rate limits, 5xx, timeouts and connection errors raise a retryable
error, and Temporal retries the turn. The CLI itself retries once (CLAUDE_CODE_MAX_RETRIES).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from claude_agent_sdk import (
    AgentDefinition,
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKError,
    CLINotFoundError,
    HookContext,
    HookInput,
    HookJSONOutput,
    HookMatcher,
    Message,
    ResultMessage,
    SdkMcpTool,
    StreamEvent,
    TextBlock,
    ToolAnnotations,
    ToolUseBlock,
    create_sdk_mcp_server,
    query,
)
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.reporting import ControlPlane
from activities.runtime import FLUSH_SECONDS, cost_of, message_id_of
from activities.tool_runner import ToolActivities
from activities.workspaces import workspace_root
from workflows.contracts import (
    ModelSpec,
    RuntimeTurnInput,
    RuntimeTurnResult,
    TeamMember,
    ToolCall,
    ToolSpec,
    Usage,
)

# Reference §7.1: the claude_code runtime keeps up to 200 messages of history.
MAX_HISTORY_MESSAGES = 200
# Model calls the CLI may make in one turn (it loops model -> tools -> model).
MAX_AGENT_TURNS = 20
# The CLI's per-request timeout unless the worker's environment sets API_TIMEOUT_MS.
DEFAULT_API_TIMEOUT_MS = "120000"
# Anthropic bills cache writes at 1.25x and cache reads at 0.1x the input price; the CLI marks
# its system prompt and newest message for caching.
CACHE_WRITE_FACTOR = 1.25
CACHE_READ_FACTOR = 0.1
STDERR_LINES = 20
# The in-process MCP server that carries the agent's tools: the CLI names them
# mcp__controlplane__<tool>.
TOOL_SERVER = "controlplane"
# Results up to this size stay inline; a larger one the CLI would save to a file the model has
# no tool to read.
MAX_RESULT_CHARS = 200_000
_NOT_CLI_SAFE = re.compile(r"[^a-zA-Z0-9_-]")


def _fatal(message: str) -> ApplicationError:
    return ApplicationError(message, non_retryable=True)


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text blocks of a block list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def system_prompt_for(system_prompt: str | None, history: list[dict[str, Any]]) -> str:
    """The agent's system prompt, followed by the earlier turns of the conversation."""
    parts = [system_prompt] if system_prompt else []
    turns = [
        f"<{m['role']}>\n{text_of(m.get('content'))}\n</{m['role']}>"
        for m in history[-MAX_HISTORY_MESSAGES:]
        if m.get("role") in ("user", "assistant") and text_of(m.get("content"))
    ]
    if turns:
        parts.append(
            "<conversation_history>\nThe conversation so far, oldest first. The user's newest "
            "message follows as the prompt.\n" + "\n".join(turns) + "\n</conversation_history>"
        )
    return "\n\n".join(parts)


WORKER_CREDENTIALS = ("CONTROLPLANE_API_KEY", "DATABASE_URL", "CONTROLPLANE_SECRET_KEY")


def cli_env(home: Path, max_tokens: int, api_key: str) -> dict[str, str]:
    """Environment for the CLI, merged by the SDK over the worker's own (DESIGN §4)."""
    env = {
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_API_KEY": api_key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "1",
        "API_TIMEOUT_MS": os.environ.get("API_TIMEOUT_MS", DEFAULT_API_TIMEOUT_MS),
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(max_tokens),
        # A team leader's member (subagent) answers within the turn, not as a background task
        # whose result comes back after it.
        "CLAUDE_CODE_DISABLE_BACKGROUND_TASKS": "1",
    }
    base_url = os.environ.get("ANTHROPIC_BASE_URL")
    if base_url:
        env["ANTHROPIC_BASE_URL"] = base_url
    # The SDK passes the worker's whole environment on; the worker's own credentials must not
    # reach a process the model drives.
    for name in WORKER_CREDENTIALS:
        env[name] = ""
    return env


def usage_of(raw: dict[str, Any] | None, model: ModelSpec) -> Usage:
    raw = raw or {}
    plain = int(raw.get("input_tokens") or 0)
    written = int(raw.get("cache_creation_input_tokens") or 0)
    read = int(raw.get("cache_read_input_tokens") or 0)
    output = int(raw.get("output_tokens") or 0)
    usage = Usage(input_tokens=plain + written + read, output_tokens=output, turns=1)
    cached = (written * CACHE_WRITE_FACTOR + read * CACHE_READ_FACTOR) * model.input_per_million
    billed = Usage(input_tokens=plain, output_tokens=output)
    base = cost_of(billed, model.input_per_million, model.output_per_million)
    usage.cost_usd = round(base + cached / 1e6, 8)
    return usage


def error_of(result: ResultMessage, stderr: list[str]) -> ApplicationError:
    """A failed result as an ApplicationError: non-retryable when retrying cannot help."""
    detail = result.result or "; ".join(result.errors or []) or result.subtype
    status = result.api_error_status
    if status is not None:
        message = f"Claude Code model call failed ({status}): {detail}"
        if status in (408, 409, 429) or status >= 500:
            return ApplicationError(message)
        return _fatal(message)
    if result.subtype.startswith("error_max_"):
        return _fatal(f"Claude Code stopped: {result.subtype} ({detail})")
    # No HTTP status: a connection error, a timeout or a CLI failure; retry it.
    tail = f" [stderr: {' | '.join(stderr)}]" if stderr else ""
    return ApplicationError(f"Claude Code failed: {detail}{tail}")


class _Chunks:
    """`message_chunk` events under the default runtime's key scheme, batched per FLUSH_SECONDS."""

    def __init__(self, control_plane: ControlPlane, turn: RuntimeTurnInput, attempt: int) -> None:
        self.control_plane = control_plane
        self.turn = turn
        self.attempt = attempt
        self.message_id = message_id_of(turn)
        self.index = 0
        self.buffered: list[str] = []
        self.last_flush = 0.0

    async def add(self, text: str, now: float) -> None:
        self.buffered.append(text)
        if now - self.last_flush >= FLUSH_SECONDS:
            await self.flush(final=False, now=now)

    async def flush(self, *, final: bool, now: float) -> None:
        if not self.buffered and not final:
            return
        text = "".join(self.buffered)
        self.buffered.clear()
        self.last_flush = now
        self.index += 1
        turn = self.turn
        await self.control_plane.publish(
            turn.execution_id,
            "message_chunk",
            {
                "content": text,
                "message_id": self.message_id,
                "is_final": final,
                "turn": turn.turn,
                "step": turn.step,
                "attempt": self.attempt,
            },
            key=f"chunk:{turn.turn}:{turn.step}:{self.attempt}:{self.index}",
        )


def _text_delta(message: StreamEvent) -> str | None:
    event = message.event
    if message.parent_tool_use_id is not None or event.get("type") != "content_block_delta":
        return None
    delta = event.get("delta") or {}
    if delta.get("type") != "text_delta":
        return None
    return str(delta.get("text", ""))


def cli_tool_name(tool: str, server: str = TOOL_SERVER) -> str:
    """The name the CLI gives an MCP server's tool (it replaces what an API tool name cannot
    hold)."""
    return f"mcp__{_NOT_CLI_SAFE.sub('_', server)}__{_NOT_CLI_SAFE.sub('_', tool)}"


def _canonical(arguments: Any) -> str:
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)


class _Tools:
    """The turn's tools as an in-process MCP server for the CLI. Every call is a ToolCall run
    by ToolActivities.run_tool here, inside this activity: policy check, events, redaction.

    A tool call is named by the CLI's tool_use id, which the MCP handler is not given: a
    PreToolUse hook notes it under the tool and its arguments just before the CLI calls the
    tool, and the handler takes it from there (falling back to an id of turn, step, attempt
    and call number)."""

    def __init__(self, control_plane: ControlPlane, turn: RuntimeTurnInput, attempt: int) -> None:
        self.runner = ToolActivities(control_plane, workspace_root())
        self.turn = turn
        self.attempt = attempt
        self.policy = turn.policy
        self.calls = 0
        # The first call that could not be reported to (or policy-checked by) the control
        # plane: the model gets an error result, and the turn then fails and is retried.
        self.failure: Exception | None = None
        self.noted: dict[tuple[str, str], collections.deque[str]] = collections.defaultdict(
            collections.deque
        )
        self.specs: dict[str, ToolSpec] = {}
        for spec in turn.tool_specs:
            self.specs.setdefault(cli_tool_name(spec.name), spec)

    def configure(self, options: ClaudeAgentOptions) -> None:
        if not self.specs:
            return
        if self.policy is None:
            raise _fatal("Claude Code runtime: tools were given without a policy context")
        tools = [
            SdkMcpTool(
                name=spec.name,
                description=spec.description,
                input_schema=_object_schema(spec.input_schema),
                handler=self._handler(name, spec),
                annotations=ToolAnnotations(maxResultSizeChars=MAX_RESULT_CHARS),
            )
            for name, spec in self.specs.items()
        ]
        options.mcp_servers = {TOOL_SERVER: create_sdk_mcp_server(TOOL_SERVER, tools=tools)}
        options.allowed_tools = list(self.specs)
        options.hooks = {"PreToolUse": [HookMatcher(hooks=[self._note_tool_use_id])]}

    async def _note_tool_use_id(
        self, hook_input: HookInput, tool_use_id: str | None, context: HookContext
    ) -> HookJSONOutput:
        if hook_input["hook_event_name"] == "PreToolUse" and tool_use_id:
            key = (hook_input["tool_name"], _canonical(hook_input["tool_input"]))
            self.noted[key].append(tool_use_id)
        return {}

    def _tool_use_id(self, name: str, arguments: dict[str, Any]) -> str:
        self.calls += 1
        noted = self.noted.get((name, _canonical(arguments)))
        if noted:
            return noted.popleft()
        turn = self.turn
        return f"cc_{turn.turn}_{turn.step}_{self.attempt}_{self.calls}"

    def _handler(
        self, name: str, spec: ToolSpec
    ) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def handle(arguments: dict[str, Any]) -> dict[str, Any]:
            assert self.policy is not None  # configure() offers no tools without one
            call = ToolCall(
                execution_id=self.turn.execution_id,
                turn=self.turn.turn,
                tool_use_id=self._tool_use_id(name, arguments),
                tool=spec,
                arguments=arguments,
                policy=self.policy,
            )
            try:
                outcome = await self.runner.run_tool(call)
            except Exception as error:  # run_tool raises only when the control plane fails
                self.failure = self.failure or error
                raise  # the SDK answers the CLI with an error result
            return {
                "content": [{"type": "text", "text": outcome.output}],
                "is_error": outcome.is_error,
            }

        return handle


# The CLI's tool that starts a subagent.
SUBAGENT_TOOL = "Agent"


def subagent_name(member: TeamMember) -> str:
    return _NOT_CLI_SAFE.sub("-", member.name).strip("-").lower() or member.agent_id


def configure_subagents(options: ClaudeAgentOptions, members: list[TeamMember]) -> None:
    """A team leader's members as subagents: each with its own prompt and only its own tools."""
    if not members:
        return
    options.agents = {
        subagent_name(member): AgentDefinition(
            description=member.description or f"{member.name}, a member of the team",
            prompt=member.system_prompt or f"You are {member.name}, a member of a team.",
            # Its own tools only; with none, an empty list would mean all of them.
            tools=[cli_tool_name(tool) for tool in member.tool_names] or None,
            disallowedTools=None if member.tool_names else [SUBAGENT_TOOL],
            model="inherit",
            background=False,
        )
        for member in members
    }
    options.tools = [SUBAGENT_TOOL]
    options.allowed_tools = [*options.allowed_tools, SUBAGENT_TOOL]
    options.forward_subagent_text = True


class _Members:
    """Tells the team's stream what its members (subagents) say: each text of a subagent's
    message as `member_message_complete`, named by the Agent call that started it."""

    def __init__(self, control_plane: ControlPlane, turn: RuntimeTurnInput, attempt: int) -> None:
        self.control_plane = control_plane
        self.turn = turn
        self.attempt = attempt
        self.by_name = {subagent_name(member): member for member in turn.subagents}
        self.started: dict[str, TeamMember] = {}  # Agent tool_use id -> member
        self.count = 0

    async def see(self, message: AssistantMessage) -> None:
        if not self.by_name:
            return
        if message.parent_tool_use_id is None:
            for block in message.content:
                if isinstance(block, ToolUseBlock) and block.name == SUBAGENT_TOOL:
                    member = self.by_name.get(str(block.input.get("subagent_type", "")))
                    if member is not None:
                        self.started[block.id] = member
            return
        member = self.started.get(message.parent_tool_use_id)
        text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
        if member is None or not text:
            return
        self.count += 1
        turn = self.turn
        await self.control_plane.publish(
            turn.execution_id,
            "member_message_complete",
            {
                "content": text,
                "member_id": member.agent_id,
                "member_name": member.name,
                "tool_use_id": message.parent_tool_use_id,
                "attempt": self.attempt,
            },
            key=f"member:{turn.turn}:{turn.step}:{self.attempt}:{self.count}",
        )


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema the SDK takes as one: it reads a dict without `type` and `properties` as a
    map of parameter names to Python types."""
    return {"type": "object", "properties": {}, **schema}


def _make_workspace(execution_id: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"claude-code-{execution_id}-"))
    (root / "home").mkdir()
    (root / "work").mkdir()
    return root


async def run_claude_code_turn(
    control_plane: ControlPlane, turn: RuntimeTurnInput, api_key: str
) -> RuntimeTurnResult:
    """One turn through the Claude Code CLI; the caller checks the API key and heartbeats."""
    messages = turn.model_messages
    if not messages or messages[-1].get("role") != "user":
        raise _fatal("Claude Code runtime: the conversation has no user message to answer")
    root = await asyncio.to_thread(_make_workspace, turn.execution_id)
    try:
        options = ClaudeAgentOptions(
            model=turn.model.api_model,
            system_prompt=system_prompt_for(turn.system_prompt, messages[:-1]),
            # No built-in tools; the agent's own are added below, as an MCP server, and only
            # they are pre-approved. bypassPermissions is refused when the worker runs as root.
            tools=[],
            allowed_tools=[],
            permission_mode="dontAsk",
            max_turns=MAX_AGENT_TURNS,
            cwd=str(root / "work"),
            env=cli_env(root / "home", turn.max_tokens, api_key),
            # Nothing from the worker's disk: no settings, CLAUDE.md or hooks.
            setting_sources=[],
            # The prompt is sent as written: no @file expansion, no slash commands.
            verbatim_prompts=True,
            # The default runtime sends no thinking; and a thinking budget must stay below
            # the agent's max_tokens.
            thinking={"type": "disabled"},
            include_partial_messages=True,
        )
        tools = _Tools(control_plane, turn, activity.info().attempt)
        tools.configure(options)
        configure_subagents(options, turn.subagents)
        result = await _query(control_plane, turn, text_of(messages[-1].get("content")), options)
        if tools.failure is not None:
            raise ApplicationError(
                f"A tool call could not be checked or reported: {tools.failure}"
            ) from None
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _query(
    control_plane: ControlPlane, turn: RuntimeTurnInput, prompt: str, options: ClaudeAgentOptions
) -> RuntimeTurnResult:
    loop = asyncio.get_running_loop()
    chunks = _Chunks(control_plane, turn, activity.info().attempt)
    members = _Members(control_plane, turn, activity.info().attempt)
    stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
    options.stderr = stderr.append
    texts: list[str] = []
    result: ResultMessage | None = None
    # query() is an async generator: closing it stops the CLI even when we leave early.
    stream = cast("AsyncGenerator[Message, None]", query(prompt=prompt, options=options))
    try:
        async with contextlib.aclosing(stream):
            async for message in stream:
                if isinstance(message, StreamEvent):
                    text = _text_delta(message)
                    if text:
                        await chunks.add(text, loop.time())
                elif isinstance(message, AssistantMessage) and message.error is None:
                    await members.see(message)
                    if message.parent_tool_use_id is None:
                        text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
                        if text:
                            texts.append(text)
                elif isinstance(message, ResultMessage):
                    result = message
    except CLINotFoundError as error:
        raise _fatal(f"Claude Code CLI not found on the worker: {error}") from None
    except ClaudeSDKError as error:
        # A failed run reports a result and then exits non-zero; judge it by the result.
        if result is None or not result.is_error:
            tail = f" [stderr: {' | '.join(stderr)}]" if stderr else ""
            raise ApplicationError(f"Claude Code failed: {error}{tail}") from None
    if result is None:
        raise ApplicationError("Claude Code ended without a result")
    if result.is_error:
        raise error_of(result, list(stderr))
    await chunks.flush(final=True, now=loop.time())
    text = "\n\n".join(texts)
    return RuntimeTurnResult(
        content=[{"type": "text", "text": text}],
        stop_reason="end_turn",
        usage=usage_of(result.usage, turn.model),
        text=text,
    )
