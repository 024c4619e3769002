"""AgentExecutionWorkflow: one agent execution, durable step by step.

Each model call is one activity and each tool call another, so a worker killed mid-run resumes
on another worker without repeating finished steps. The workflow only schedules; activities do
the I/O and report to the control plane over the worker protocol.

After a turn the execution waits for input (signals `add_message`, `mark_as_done`), unless the
agent is one-shot. `pause_execution` holds the next turn until `resume_execution`. History stays
bounded: after MAX_TURNS_PER_RUN turns, or when Temporal suggests it, the workflow continues as
new carrying its state.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ADD_MESSAGE,
        AGENT_EXECUTION_WORKFLOW,
        EXECUTE_WITH_RUNTIME,
        GET_STATE,
        LIST_MCP_TOOLS,
        MARK_AS_DONE,
        PAUSE_EXECUTION,
        PERSIST_CONVERSATION,
        PUBLISH_EVENT,
        RESUME_EXECUTION,
        RUN_TOOL,
        UPDATE_EXECUTION_STATUS,
        AgentExecutionInput,
        ChatMessage,
        ConversationSnapshot,
        EventReport,
        ExecutionState,
        PolicyContext,
        RuntimeTurnInput,
        RuntimeTurnResult,
        StatusUpdate,
        ToolCall,
        ToolOutcome,
        ToolSpec,
        Usage,
    )

MAX_TURNS_PER_RUN = 25
# A model answering with tools loops model -> tools -> model; this caps one turn's loop.
MAX_STEPS_PER_TURN = 20

REPORT_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
    ),
}
MODEL_CALL_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=15),
    # The activity heartbeats every few seconds while the model streams; a dead worker is
    # noticed within this and the call is retried elsewhere.
    "heartbeat_timeout": timedelta(seconds=20),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=6,
    ),
}


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


def _root_message(error: BaseException) -> str:
    cause: BaseException | None = error
    message = str(error)
    while cause is not None:
        if isinstance(cause, ApplicationError) or not isinstance(cause, ActivityError):
            message = str(cause) or message
        cause = cause.__cause__
    return message


@workflow.defn(name=AGENT_EXECUTION_WORKFLOW)
class AgentExecutionWorkflow:
    def __init__(self) -> None:
        self._status = "pending"
        self._messages: list[ChatMessage] = []
        self._model_messages: list[dict[str, Any]] = []
        self._pending: list[ChatMessage] = []
        self._usage = Usage()
        self._turn = 0
        self._response = ""
        self._error: str | None = None
        self._done = False
        self._paused = False
        self._reports = 0
        self._input: AgentExecutionInput | None = None
        self._tools: dict[str, ToolSpec] = {}

    # --- signals and query -------------------------------------------------------------------

    @workflow.signal(name=ADD_MESSAGE)
    def add_message(self, message: ChatMessage) -> None:
        self._pending.append(message)

    @workflow.signal(name=MARK_AS_DONE)
    def mark_as_done(self) -> None:
        self._done = True

    @workflow.signal(name=PAUSE_EXECUTION)
    async def pause_execution(self) -> None:
        if self._paused or self._status in ("completed", "failed", "cancelled"):
            return
        self._paused = True
        await self._report(reason="paused by user")

    @workflow.signal(name=RESUME_EXECUTION)
    async def resume_execution(self) -> None:
        if not self._paused:
            return
        self._paused = False
        await self._report(reason="resumed by user")

    @workflow.query(name=GET_STATE)
    def get_state(self) -> ExecutionState:
        return ExecutionState(
            status=self._effective_status(),
            messages=self._messages,
            current_response=self._response,
            error_message=self._error,
            usage=self._usage,
            is_waiting_for_input=self._status == "waiting_for_input",
            should_complete=self._done,
            turn=self._turn,
        )

    # --- the run -----------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: AgentExecutionInput) -> dict[str, Any]:
        self._input = inp
        self._messages = list(inp.messages)
        self._model_messages = list(inp.model_messages)
        self._pending = list(inp.pending)
        self._usage = inp.usage
        self._turn = inp.turn
        self._reports = inp.reports
        self._tools = {tool.name: tool for tool in inp.tools}
        try:
            if inp.has_mcp_servers:
                # Listed by the worker, which can reach the servers; kept for the whole run.
                listed: list[ToolSpec] = await workflow.execute_activity(
                    LIST_MCP_TOOLS,
                    inp.execution_id,
                    result_type=list[ToolSpec],
                    **REPORT_OPTIONS,
                )
                self._tools.update({tool.name: tool for tool in listed})
            if inp.turn == 0 and not inp.messages:
                await self._start(inp)
            else:
                self._status = "running"
            turns_this_run = 0
            while True:
                await workflow.wait_condition(lambda: not self._paused or self._done)
                if self._done and not self._model_messages_need_answer():
                    break
                await self._run_turn(inp)
                turns_this_run += 1
                if inp.one_shot or self._done:
                    break
                await self._set_status("waiting_for_input")
                await self._persist()
                try:
                    await workflow.wait_condition(
                        lambda: bool(self._pending) or self._done,
                        timeout=timedelta(seconds=inp.idle_timeout_seconds),
                    )
                except TimeoutError:
                    break  # nobody came back: the conversation is over
                if not self._pending:
                    break  # marked done while waiting
                await workflow.wait_condition(lambda: not self._paused or self._done)
                self._take_pending()
                await self._set_status("running")
                if turns_this_run >= MAX_TURNS_PER_RUN or (
                    workflow.info().is_continue_as_new_suggested()
                ):
                    workflow.continue_as_new(self._carry(inp))
            await self._finish("completed")
        except asyncio.CancelledError:
            await self._finish("cancelled", error="Execution cancelled")
            raise
        except ActivityError as error:
            if isinstance(error.cause, CancelledError):
                # Cancelled while a model call ran: the call was cancelled with the workflow.
                await self._finish("cancelled", error="Execution cancelled")
                raise asyncio.CancelledError() from error
            await self._finish("failed", error=_root_message(error))
        return {
            "success": self._status == "completed",
            "status": self._status,
            "response": self._response,
            "usage": asdict(self._usage),
            "error_message": self._error,
        }

    async def _start(self, inp: AgentExecutionInput) -> None:
        user = inp.user_metadata
        first = ChatMessage(
            role="user",
            content=inp.prompt,
            timestamp=workflow.now().isoformat(),
            message_id=f"{inp.execution_id}_user_1",
            user_id=user.get("user_id"),
            user_name=user.get("user_name"),
            user_email=user.get("user_email"),
            user_avatar=user.get("user_avatar"),
        )
        self._messages.append(first)
        self._model_messages.append({"role": "user", "content": inp.prompt})
        await self._set_status("running", mark_started=True)
        await self._publish("message", asdict(first), key=f"message:{first.message_id}")

    def _model_messages_need_answer(self) -> bool:
        return bool(self._model_messages) and self._model_messages[-1]["role"] == "user"

    def _take_pending(self) -> None:
        for message in self._pending:
            self._messages.append(message)
            self._model_messages.append({"role": "user", "content": message.content})
        self._pending = []

    async def _run_turn(self, inp: AgentExecutionInput) -> None:
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
                    **self._in_call_tools(inp),
                ),
                result_type=RuntimeTurnResult,
                **MODEL_CALL_OPTIONS,
            )
            self._usage.add(result.usage, turn=self._turn)
            self._model_messages.append({"role": "assistant", "content": result.content})
            tool_calls = [block for block in result.content if block.get("type") == "tool_use"]
            if result.stop_reason != "tool_use" or not tool_calls:
                await self._answer(inp, result.text)
                return
            # One activity per tool call, in the order the model asked for them.
            results = [await self._run_tool(inp, call) for call in tool_calls]
            self._model_messages.append({"role": "user", "content": results})
        await self._answer(inp, "Stopped: the model kept calling tools past the step limit.")

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

    async def _answer(self, inp: AgentExecutionInput, text: str) -> None:
        self._response = text
        message = ChatMessage(
            role="assistant",
            content=text,
            timestamp=workflow.now().isoformat(),
            message_id=f"{inp.execution_id}_assistant_{self._turn}",
        )
        self._messages.append(message)
        await self._publish("message", asdict(message), key=f"message:{message.message_id}")

    async def _persist(self) -> None:
        assert self._input is not None
        await workflow.execute_activity(
            PERSIST_CONVERSATION,
            ConversationSnapshot(self._input.execution_id, self._messages, {"turn": self._turn}),
            **REPORT_OPTIONS,
        )

    async def _finish(self, status: str, error: str | None = None) -> None:
        self._status = status
        self._error = error
        self._paused = False
        await self._persist()
        await self._report(mark_completed=True)

    # --- reporting ---------------------------------------------------------------------------

    def _effective_status(self) -> str:
        if self._paused and self._status not in ("completed", "failed", "cancelled"):
            return "paused"
        return self._status

    def _carry(self, inp: AgentExecutionInput) -> AgentExecutionInput:
        inp.messages = self._messages
        inp.model_messages = self._model_messages
        inp.usage = self._usage
        inp.turn = self._turn
        inp.pending = self._pending
        inp.reports = self._reports
        return inp

    async def _set_status(self, status: str, *, mark_started: bool = False) -> None:
        self._status = status
        await self._report(mark_started=mark_started)

    async def _report(
        self, *, reason: str | None = None, mark_started: bool = False, mark_completed: bool = False
    ) -> None:
        assert self._input is not None
        self._reports += 1
        await workflow.execute_activity(
            UPDATE_EXECUTION_STATUS,
            StatusUpdate(
                execution_id=self._input.execution_id,
                status=self._effective_status(),
                response=self._response or None,
                error_message=self._error,
                usage=asdict(self._usage),
                reason=reason,
                mark_started=mark_started,
                mark_completed=mark_completed,
                # Reports may arrive out of order (a signal's report races the main loop's);
                # the version lets the control plane keep only the newest.
                version=self._reports,
            ),
            **REPORT_OPTIONS,
        )

    async def _publish(self, event_type: str, data: dict[str, Any], *, key: str) -> None:
        assert self._input is not None
        await workflow.execute_activity(
            PUBLISH_EVENT,
            EventReport(self._input.execution_id, event_type, data, key),
            **REPORT_OPTIONS,
        )
