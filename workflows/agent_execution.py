"""AgentExecutionWorkflow: one agent execution, durable step by step.

Each model call is one activity and each tool call another, so a worker killed mid-run resumes
on another worker without repeating finished steps. The workflow only schedules; activities do
the I/O and report to the control plane over the worker protocol. The conversation around the
turns (human in the loop, pause, continue-as-new, reports) is workflows/conversation.py's.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        AGENT_EXECUTION_WORKFLOW,
        EXECUTE_WITH_RUNTIME,
        LIST_MCP_TOOLS,
        RUN_TOOL,
        AgentExecutionInput,
        ChatMessage,
        PolicyContext,
        RuntimeTurnInput,
        RuntimeTurnResult,
        ToolCall,
        ToolOutcome,
        ToolSpec,
    )
    from workflows.conversation import (
        MAX_STEPS_PER_TURN,
        MAX_TURNS_PER_RUN,
        MODEL_CALL_OPTIONS,
        REPORT_OPTIONS,
        ConversationWorkflow,
    )

__all__ = ["MAX_TURNS_PER_RUN", "AgentExecutionWorkflow"]

TOOL_CALL_OPTIONS: dict[str, Any] = {
    # Tools bound their own run time (their `timeout` setting); this is the outer bound.
    "start_to_close_timeout": timedelta(minutes=10),
    "heartbeat_timeout": timedelta(seconds=60),
    # A tool's own failure is an error result, not an activity failure; what raises is a report
    # to the control plane, which is safe to retry. A worker dying mid-tool re-runs the tool:
    # tool runs are at least once.
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=5,
    ),
}


@workflow.defn(name=AGENT_EXECUTION_WORKFLOW)
class AgentExecutionWorkflow(ConversationWorkflow):
    def __init__(self) -> None:
        super().__init__()
        self._input: AgentExecutionInput | None = None
        self._tools: dict[str, ToolSpec] = {}

    @workflow.run
    async def run(self, inp: AgentExecutionInput) -> dict[str, Any]:
        self._input = inp
        self._restore(inp)
        self._tools = {tool.name: tool for tool in inp.tools}
        if inp.has_mcp_servers:
            # Listed by the worker, which can reach the servers; kept for the whole run.
            listed: list[ToolSpec] = await workflow.execute_activity(
                LIST_MCP_TOOLS,
                inp.execution_id,
                result_type=list[ToolSpec],
                **REPORT_OPTIONS,
            )
            self._tools.update({tool.name: tool for tool in listed})
        return await self._converse(inp)

    def _carry(self) -> AgentExecutionInput:
        assert self._input is not None
        self._carry_into(self._input)
        return self._input

    async def _run_turn(self) -> None:
        assert self._input is not None
        inp = self._input
        self._turn += 1
        for step in range(MAX_STEPS_PER_TURN):
            result: RuntimeTurnResult = await workflow.execute_activity(
                EXECUTE_WITH_RUNTIME,
                RuntimeTurnInput(
                    execution_id=inp.execution_id,
                    turn=self._turn,
                    step=step,
                    model=inp.model,
                    system_prompt=inp.system_prompt,
                    model_messages=self._model_messages,
                    max_tokens=inp.max_tokens,
                    runtime_type=inp.runtime_type,
                    tools=[tool.model_definition() for tool in self._tools.values()],
                    reports=self._hand_over(),
                    **self._in_call_tools(inp),
                ),
                result_type=RuntimeTurnResult,
                **MODEL_CALL_OPTIONS,
            )
            self._usage.add(result.usage, turn=self._turn)
            self._model_messages.append({"role": "assistant", "content": result.content})
            tool_calls = [block for block in result.content if block.get("type") == "tool_use"]
            if result.stop_reason != "tool_use" or not tool_calls:
                await self._answer(result.text)
                return
            # One activity per tool call, in the order the model asked for them.
            results = [await self._run_tool(inp, call) for call in tool_calls]
            self._model_messages.append({"role": "user", "content": results})
        await self._answer("Stopped: the model kept calling tools past the step limit.")

    def _in_call_tools(self, inp: AgentExecutionInput) -> dict[str, Any]:
        """claude_code runs its tools inside the model call; the default runtime returns the
        calls to us, and each becomes its own run_tool activity."""
        if inp.runtime_type != "claude_code" or not self._tools:
            return {}
        return {
            "tool_specs": list(self._tools.values()),
            "policy": inp.policy or PolicyContext(inp.organization_id, inp.execution_id),
        }

    async def _run_tool(self, inp: AgentExecutionInput, call: dict[str, Any]) -> dict[str, Any]:
        """Run one tool call (policy-checked inside the activity) and answer it as a
        tool_result; a failing or denied tool is an error result and the turn goes on."""
        spec = self._tools.get(str(call.get("name")))
        arguments = call.get("input") or {}
        if spec is None:
            outcome = ToolOutcome(
                output=f"Tool '{call.get('name')}' is not available to this agent.",
                is_error=True,
                status="error",
            )
        else:
            outcome = await workflow.execute_activity(
                RUN_TOOL,
                ToolCall(
                    execution_id=inp.execution_id,
                    turn=self._turn,
                    tool_use_id=str(call["id"]),
                    tool=spec,
                    arguments=arguments,
                    policy=inp.policy or PolicyContext(inp.organization_id, inp.execution_id),
                ),
                result_type=ToolOutcome,
                **TOOL_CALL_OPTIONS,
            )
        self._messages.append(
            ChatMessage(
                role="tool",
                content=outcome.output,
                timestamp=workflow.now().isoformat(),
                message_id=f"{inp.execution_id}_tool_{call['id']}",
                tool_name=str(call.get("name")),
                tool_input=arguments,
                tool_output=outcome.output,
            )
        )
        return {
            "type": "tool_result",
            "tool_use_id": call["id"],
            "is_error": outcome.is_error,
            "content": outcome.output,
        }
