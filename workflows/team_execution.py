"""TeamExecutionWorkflow: a team's execution, durable step by step like an agent's (reference
§7.2). The conversation around the turns is workflows/conversation.py's; a turn is the team's
coordination mode:

- `leader`: the leader (the team's model and instructions) runs the tool loop with one tool,
  `delegate_task {member, task}`. Each call becomes a member run: the control plane records it
  (`create_member_execution`, checked against its own rows), and this workflow runs it as a
  child AgentExecutionWorkflow on the same queue; the member's answer is the tool result.
  Several delegations in one answer run at once. An unknown member, or a member run that
  fails, is an error result the leader can recover from.
- `sequential`: the members in order, each given the task and the answers before it; the last
  answer is the team's. A member that fails stops the chain, and the turn fails.
- `parallel`: every member at once; the team's model (if it has one) sums up their answers,
  else they are joined under the members' names. The turn fails only if every member failed.

Pause and resume reach the running members; cancelling the team cancels them (children are
cancelled with the task that awaits them). Usage rolls up: the team's total counts the
leader's calls and every member's, and `usage.members` keeps each member's share.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError, ChildWorkflowError
from temporalio.workflow import ChildWorkflowHandle, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        AGENT_EXECUTION_WORKFLOW,
        CREATE_MEMBER_EXECUTION,
        EXECUTE_WITH_RUNTIME,
        PAUSE_EXECUTION,
        RESUME_EXECUTION,
        TEAM_EXECUTION_WORKFLOW,
        MemberExecution,
        MemberExecutionRequest,
        MemberUsage,
        PolicyContext,
        RuntimeTurnInput,
        RuntimeTurnResult,
        TeamExecutionInput,
        TeamMember,
        Usage,
    )
    from workflows.conversation import (
        MAX_STEPS_PER_TURN,
        MODEL_CALL_OPTIONS,
        REPORT_OPTIONS,
        ConversationWorkflow,
        TurnFailed,
        root_message,
    )

DELEGATE_TASK = "delegate_task"
DELEGATE_TOOL: dict[str, Any] = {
    "name": DELEGATE_TASK,
    "description": (
        "Give one member of your team a task. The member works on it with its own tools and "
        "answers with its result. Call it several times in one answer to have members work "
        "at the same time."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "member": {"type": "string", "description": "The member's name (or id)"},
            "task": {"type": "string", "description": "What the member should do"},
        },
        "required": ["member", "task"],
    },
}
SYNTHESIS_PROMPT = (
    "Your team's members each answered the task below. Combine their answers into one answer "
    "for the user; say where they disagree."
)


@dataclass
class MemberOutcome:
    member: TeamMember
    text: str
    is_error: bool
    execution_id: str | None = None


@workflow.defn(name=TEAM_EXECUTION_WORKFLOW)
class TeamExecutionWorkflow(ConversationWorkflow):
    def __init__(self) -> None:
        super().__init__()
        self._input: TeamExecutionInput | None = None
        self._member_usage: dict[str, MemberUsage] = {}
        # Running member workflows by workflow id: pause and resume are passed on to them.
        self._children: dict[str, ChildWorkflowHandle[Any, Any]] = {}

    @workflow.run
    async def run(self, inp: TeamExecutionInput) -> dict[str, Any]:
        self._input = inp
        self._restore(inp)
        self._member_usage = dict(inp.member_usage)
        return await self._converse(inp)

    def _carry(self) -> TeamExecutionInput:
        assert self._input is not None
        self._carry_into(self._input)
        self._input.member_usage = self._member_usage
        return self._input

    def _usage_report(self) -> dict[str, Any]:
        return {
            **asdict(self._usage),
            "members": {ident: asdict(usage) for ident, usage in self._member_usage.items()},
        }

    async def _on_pause_changed(self) -> None:
        signal = PAUSE_EXECUTION if self._paused else RESUME_EXECUTION
        for handle in list(self._children.values()):
            await handle.signal(signal)

    # --- a turn ------------------------------------------------------------------------------

    async def _run_turn(self) -> None:
        assert self._input is not None
        self._turn += 1
        mode = self._input.coordination_type
        if mode == "sequential":
            await self._run_in_sequence(self._input)
        elif mode == "parallel":
            await self._run_in_parallel(self._input)
        else:
            await self._lead(self._input)

    def _task(self) -> str:
        """What the members are asked this turn: the latest message, and after the first turn
        the conversation it continues."""
        latest = self._model_messages[-1]["content"] if self._model_messages else ""
        earlier = [m for m in self._messages[:-1] if m.role in ("user", "assistant")]
        if not earlier:
            return str(latest)
        transcript = "\n".join(f"{m.role}: {m.content}" for m in earlier)
        return f"{latest}\n\nThe conversation so far:\n{transcript}"

    async def _lead(self, inp: TeamExecutionInput) -> None:
        assert inp.model is not None
        for step in range(MAX_STEPS_PER_TURN):
            await workflow.wait_condition(lambda: not self._paused)
            result = await self._call_model(
                inp,
                RuntimeTurnInput(
                    execution_id=inp.execution_id,
                    turn=self._turn,
                    step=step,
                    model=inp.model,
                    system_prompt=inp.system_prompt,
                    model_messages=self._model_messages,
                    max_tokens=inp.max_tokens,
                    runtime_type=inp.runtime_type,
                    reports=self._hand_over(),
                    **self._leader_tools(inp),
                ),
            )
            self._model_messages.append({"role": "assistant", "content": result.content})
            calls = [block for block in result.content if block.get("type") == "tool_use"]
            if result.stop_reason != "tool_use" or not calls:
                await self._answer(result.text)
                return
            results = await asyncio.gather(*(self._delegate(inp, call) for call in calls))
            self._model_messages.append({"role": "user", "content": list(results)})
        await self._answer("Stopped: the leader kept delegating past the step limit.")

    def _leader_tools(self, inp: TeamExecutionInput) -> dict[str, Any]:
        """The default runtime's leader delegates with delegate_task; a claude_code leader has
        its members as SDK subagents, running their tools inside its call."""
        if inp.runtime_type != "claude_code":
            return {"tools": [DELEGATE_TOOL]}
        return {
            "subagents": inp.members,
            "tool_specs": inp.tools,
            "policy": inp.policy or PolicyContext(inp.organization_id, inp.execution_id),
        }

    async def _call_model(
        self, inp: TeamExecutionInput, turn: RuntimeTurnInput
    ) -> RuntimeTurnResult:
        result: RuntimeTurnResult = await workflow.execute_activity(
            EXECUTE_WITH_RUNTIME, turn, result_type=RuntimeTurnResult, **MODEL_CALL_OPTIONS
        )
        self._usage.add(result.usage, turn=self._turn)
        return result

    async def _delegate(self, inp: TeamExecutionInput, call: dict[str, Any]) -> dict[str, Any]:
        """One delegate_task call of the leader, answered as its tool_result."""
        call_id = str(call.get("id"))
        arguments = call.get("input") or {}
        member = self._member(str(arguments.get("member", "")))
        task = str(arguments.get("task") or "").strip()
        key = f"{self._turn}:{call_id}"
        if call.get("name") != DELEGATE_TASK:
            unknown = f"Tool '{call.get('name')}' is not available to the leader."
            return _tool_result(call_id, unknown, is_error=True)
        if member is None or not task:
            names = ", ".join(m.name for m in inp.members)
            problem = (
                f"'{arguments.get('member')}' is not a member of this team"
                if member is None
                else "the task is empty"
            )
            return _tool_result(
                call_id, f"Cannot delegate: {problem}. Members: {names}.", is_error=True
            )
        started = {
            "tool_name": DELEGATE_TASK,
            "tool_execution_id": call_id,
            "tool_input": arguments,
            "member_id": member.agent_id,
            "member_name": member.name,
        }
        await self._publish("tool_started", started, key=f"tool_started:{key}")
        await self._flush()  # before the member's own events
        outcome = await self._run_member(inp, member, task, key)
        await self._publish(
            "tool_completed",
            {
                **started,
                "tool_output": outcome.text,
                "tool_status": "error" if outcome.is_error else "success",
                "child_execution_id": outcome.execution_id,
            },
            key=f"tool_completed:{key}",
        )
        return _tool_result(call_id, outcome.text, is_error=outcome.is_error)

    def _member(self, reference: str) -> TeamMember | None:
        """A member by id, or by name (case and surrounding spaces aside)."""
        assert self._input is not None
        wanted = reference.strip().casefold()
        for member in self._input.members:
            if wanted in (member.agent_id.casefold(), member.name.casefold()):
                return member
        return None

    async def _run_in_sequence(self, inp: TeamExecutionInput) -> None:
        await self._flush()  # the turn's start, before the members' events
        task = self._task()
        answers: list[MemberOutcome] = []
        for index, member in enumerate(inp.members):
            before = "\n\n".join(f"{a.member.name} answered:\n{a.text}" for a in answers)
            given = f"{task}\n\nWhat the members before you found:\n\n{before}" if answers else task
            outcome = await self._run_member(inp, member, given, f"{self._turn}:seq:{index}")
            if outcome.is_error:
                raise TurnFailed(f"The sequence stopped at {member.name}: {outcome.text}")
            answers.append(outcome)
        await self._answer(answers[-1].text)

    async def _run_in_parallel(self, inp: TeamExecutionInput) -> None:
        await self._flush()  # the turn's start, before the members' events
        task = self._task()
        outcomes = await asyncio.gather(
            *(
                self._run_member(inp, member, task, f"{self._turn}:par:{index}")
                for index, member in enumerate(inp.members)
            )
        )
        if all(outcome.is_error for outcome in outcomes):
            failures = "; ".join(f"{o.member.name}: {o.text}" for o in outcomes)
            raise TurnFailed(f"Every member failed: {failures}")
        joined = "\n\n".join(
            f"**{o.member.name}**" + (" (failed)" if o.is_error else "") + f":\n{o.text}"
            for o in outcomes
        )
        if inp.model is None:
            await self._answer(joined)
            return
        await workflow.wait_condition(lambda: not self._paused)
        result = await self._call_model(
            inp,
            RuntimeTurnInput(
                execution_id=inp.execution_id,
                turn=self._turn,
                model=inp.model,
                system_prompt=inp.system_prompt,
                model_messages=[
                    {
                        "role": "user",
                        "content": f"{SYNTHESIS_PROMPT}\n\nTask:\n{task}\n\nAnswers:\n\n{joined}",
                    }
                ],
                max_tokens=inp.max_tokens,
                runtime_type="default",
                reports=self._hand_over(),
            ),
        )
        await self._answer(result.text)

    # --- a member's run ----------------------------------------------------------------------

    async def _run_member(
        self, inp: TeamExecutionInput, member: TeamMember, task: str, key: str
    ) -> MemberOutcome:
        """Record the member's run with the control plane, run it as a child workflow, and
        answer what it said; a run that cannot start or does not complete is an error outcome
        (cancellation goes through)."""
        await workflow.wait_condition(lambda: not self._paused)
        try:
            launch: MemberExecution = await workflow.execute_activity(
                CREATE_MEMBER_EXECUTION,
                MemberExecutionRequest(inp.execution_id, member.agent_id, task, key),
                result_type=MemberExecution,
                **REPORT_OPTIONS,
            )
        except ActivityError as error:
            if isinstance(error.cause, CancelledError):
                raise asyncio.CancelledError() from error
            return MemberOutcome(
                member, f"{member.name} could not start: {root_message(error)}", True
            )
        handle = await workflow.start_child_workflow(
            AGENT_EXECUTION_WORKFLOW,
            launch.input,
            id=launch.workflow_id,
            task_queue=workflow.info().task_queue,
            parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
        )
        self._children[launch.workflow_id] = handle
        try:
            if self._paused:  # paused while it started
                await handle.signal(PAUSE_EXECUTION)
            result: dict[str, Any] = await handle
        except ChildWorkflowError as error:
            if isinstance(error.cause, CancelledError):
                raise asyncio.CancelledError() from error
            text = f"{member.name}'s run failed: {root_message(error)}"
            return MemberOutcome(member, text, True, launch.execution_id)
        finally:
            self._children.pop(launch.workflow_id, None)
        self._add_member_usage(member, result.get("usage") or {})
        if result.get("status") == "completed":
            return MemberOutcome(
                member, str(result.get("response") or ""), False, launch.execution_id
            )
        reason = result.get("error_message") or result.get("status")
        return MemberOutcome(
            member, f"{member.name} did not finish: {reason}", True, launch.execution_id
        )

    def _add_member_usage(self, member: TeamMember, usage: dict[str, Any]) -> None:
        spent = Usage(
            input_tokens=int(usage.get("input_tokens", 0)),
            output_tokens=int(usage.get("output_tokens", 0)),
            cost_usd=float(usage.get("cost_usd", 0.0)),
        )
        self._usage.add(spent, turn=self._turn)
        share = self._member_usage.setdefault(member.agent_id, MemberUsage(name=member.name))
        share.runs += 1
        share.input_tokens += spent.input_tokens
        share.output_tokens += spent.output_tokens
        share.cost_usd = round(share.cost_usd + spent.cost_usd, 8)


def _tool_result(call_id: str, text: str, *, is_error: bool) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "is_error": is_error, "content": text}
