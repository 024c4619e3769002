"""`run_tool`: one tool call of the default runtime, as its own activity on the worker.

Steps: read the execution's environment from the control plane (env vars, secret values,
integration credentials, MCP server configs), stream `tool_started`, ask the control plane's
policy check (`POST /api/v1/policies/enforce`: the control plane builds the `tool_execution`
policy input from its own rows; the worker names only the execution, the tool and the
arguments), then run the tool (a built-in from activities/tools, or an MCP server's tool) and
stream `tool_completed`.

Invariants:
- A denied call never runs: the model gets the violation text, `policy_violation` and
  `tool_completed` (status `denied`) are streamed.
- A failing tool is an error result for the model, never an activity failure; only reports to
  the control plane raise (and Temporal retries them). A retried activity re-runs the tool (tool
  runs are at least once) and its events land once (keyed by the tool_use id).
- Secret values (and integration tokens and files) are read here, at call time, so they never
  enter Temporal history through the input; every value of 4+ characters is replaced by
  `[REDACTED]` in the events, the policy input and the outcome (which is history).
- Each execution has its own workspace, `workspace_root/<execution_id>`; tool processes get
  only PATH, HOME (= the workspace), LANG and the execution's own environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from temporalio import activity

from activities.execution_environment import (
    ExecutionEnvironment,
    Redactor,
    fetch_execution_environment,
)
from activities.reporting import ControlPlane
from activities.tools import TRUNCATED, ToolRefused, cap_text, run_builtin
from activities.tools.file_system import Jail
from workflows.contracts import RUN_TOOL, ToolCall, ToolOutcome

EVENT_OUTPUT_BYTES = 4096
HEARTBEAT_SECONDS = 5.0
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ToolActivities:
    def __init__(self, control_plane: ControlPlane, workspace_root: Path) -> None:
        self.control_plane = control_plane
        self.workspace_root = workspace_root

    @activity.defn(name=RUN_TOOL)
    async def run_tool(self, call: ToolCall) -> ToolOutcome:
        environment = await fetch_execution_environment(self.control_plane, call.execution_id)
        redactor = Redactor(environment.secret_values())
        arguments = redactor.value(call.arguments)
        name = call.tool.name
        ids = {"tool_name": name, "tool_execution_id": call.tool_use_id}
        await self._publish(
            call,
            "tool_started",
            {**ids, "tool_input": arguments, "source": call.tool.source},
        )
        decision = await self._enforce(call, arguments)
        if not decision.get("allowed"):
            violations = [str(v) for v in decision.get("violations") or []]
            reasons = violations or [str(decision.get("engine_error") or "denied by policy")]
            output = redactor.text("Policy denied this tool call: " + "; ".join(reasons))
            await self._publish(
                call,
                "policy_violation",
                {
                    **ids,
                    "violations": redactor.value(reasons),
                    "engine_error": decision.get("engine_error"),
                    "policies_evaluated": decision.get("policies_evaluated", 0),
                },
            )
            await self._completed(call, output, "denied")
            return ToolOutcome(
                output=output, is_error=True, status="denied", violations=redactor.value(reasons)
            )
        async with _heartbeating():
            try:
                outcome = await self._execute(call, environment)
            except Exception as error:  # a tool's failure is the model's to see, not ours
                outcome = ToolOutcome(
                    output=f"Tool '{name}' failed: {type(error).__name__}: {error}",
                    is_error=True,
                    status="error",
                )
        outcome.output = redactor.text(outcome.output)
        await self._completed(call, outcome.output, outcome.status)
        return outcome

    # --- steps -------------------------------------------------------------------------------

    async def _enforce(self, call: ToolCall, arguments: dict[str, Any]) -> dict[str, Any]:
        """Ask the control plane. It builds the policy input itself from its own rows (who,
        which agent, team, environments, what the tool is); we say only which call this is."""
        return await self.control_plane.send(
            "POST",
            "/api/v1/policies/enforce",
            {
                "execution_id": call.execution_id,
                "tool_name": call.tool.name,
                "arguments": arguments,
                "mcp_server": call.tool.mcp_server if call.tool.source == "mcp" else None,
            },
        )

    async def _execute(self, call: ToolCall, environment: ExecutionEnvironment) -> ToolOutcome:
        tool = call.tool
        if tool.source == "mcp":
            return await self._call_mcp(call, environment)
        workspace = self.workspace_for(call.execution_id)
        await asyncio.to_thread(materialise_files, workspace, environment.files)
        result = await run_builtin(
            tool.category,
            tool.name,
            call.arguments,
            tool.configuration,
            workspace=workspace,
            env=environment.process_env(),
        )
        return ToolOutcome(
            output=result.output,
            is_error=result.is_error,
            status="error" if result.is_error else "success",
        )

    async def _call_mcp(self, call: ToolCall, environment: ExecutionEnvironment) -> ToolOutcome:
        server = call.tool.mcp_server or ""
        config = environment.mcp_servers.get(server)
        if config is None:
            return ToolOutcome(
                output=f"MCP server '{server}' is not in this execution's environment",
                is_error=True,
                status="error",
            )
        try:
            # Imported on first use: the MCP SDK is slow to import and most runs need none.
            from activities.mcp_client import call_tool
        except ImportError as error:
            return ToolOutcome(
                output=f"MCP tools are not available on this worker: {error}",
                is_error=True,
                status="error",
            )
        output, is_error = await call_tool(
            server,
            config,
            str(call.tool.configuration.get("tool") or call.tool.name),
            call.arguments,
            environment.process_env(),
            secrets=environment.secret_values(),
        )
        return ToolOutcome(
            output=output, is_error=is_error, status="error" if is_error else "success"
        )

    def workspace_for(self, execution_id: str) -> Path:
        if not SAFE_ID.match(execution_id) or ".." in execution_id:
            raise ToolRefused(f"execution id {execution_id!r} cannot name a workspace")
        return self.workspace_root / execution_id

    async def _completed(self, call: ToolCall, output: str, status: str) -> None:
        shown, cut = cap_text(output, EVENT_OUTPUT_BYTES)
        if cut:
            shown += f"\n{TRUNCATED}"
        await self._publish(
            call,
            "tool_completed",
            {
                "tool_name": call.tool.name,
                "tool_execution_id": call.tool_use_id,
                "tool_output": shown,
                "tool_status": status,
            },
        )

    async def _publish(self, call: ToolCall, event_type: str, data: dict[str, Any]) -> None:
        await self.control_plane.publish(
            call.execution_id, event_type, data, key=f"{event_type}:{call.tool_use_id}"
        )


def materialise_files(workspace: Path, files: list[dict[str, str]]) -> None:
    """The integrations' files, in the workspace (HOME): `~/.kube/config` lands in
    `<workspace>/.kube/config`. Paths that would leave the workspace are skipped."""
    workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
    jail = Jail(workspace)
    for item in files:
        path = item.get("path", "")
        path = path[2:] if path.startswith("~/") else path
        try:
            target = jail.resolve_for_write(path)
            mode = int(item.get("mode") or "0644", 8) & 0o777
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
            with os.fdopen(fd, "w") as handle:
                handle.write(item.get("content", ""))
            os.chmod(target, mode)
        except (ToolRefused, ValueError, OSError):
            continue


@contextlib.asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat while a tool runs, so cancellation reaches it and a dead worker is noticed."""
    if not activity.in_activity():
        yield
        return

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
