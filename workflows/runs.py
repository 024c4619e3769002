"""Runs of a graph of steps, on the system worker in the control plane's namespace:
PlanOrchestratorWorkflow (`plan-execution-{id}`) runs a task plan's tasks,
WorkflowInterpreterWorkflow (`workflow-execution-{id}`) a user-defined workflow's steps. One
interpreter serves both (one dataclass input per activity, as temporalio's DSL sample); they
differ in what a step is told.

- Steps run as a DAG: a step starts once every step it depends on completed, so independent
  steps run at once. A step that did not complete (failed, rejected, cancelled, skipped) skips
  the steps that depend on it, not the others; the run then fails, naming them.
- An agent or team step is an execution of the organization. Temporal has no cross-namespace
  children, so the run starts it (`start_run_step`, keyed by the step's id: a retried start finds
  the execution it started) and awaits it (`await_run_step`, which returns when the execution
  waits for input or ends, or after an hour with nothing new). A system worker killed mid-wait
  is replaced by another that waits again.
- A step whose execution waits for input (an agent or team that is not one-shot) waits with
  it; a user's message (signal `message_step`) is passed on to its execution, and the step ends
  when its execution ends (`mark_done` with the message, or /executions/{id}/mark-done).
- An approval step waits for `decide_step`: approved, it completes (its output the comment, or
  "approved"); rejected, it is `rejected`.
- `pause_execution` holds the steps not started yet (the running ones go on); `resume_execution`
  lets them start. `complete_run` ends the run completed: running steps' executions are
  cancelled and steps not started are skipped. Cancelling the workflow cancels the running
  steps' executions too, and the run ends cancelled.
- Every change is recorded in the read model (`record_run_progress`, numbered so that a record
  lands once and an older one never overwrites a newer run status).

Workflow code only: no I/O, clocks or randomness outside `workflow.*`.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        AWAIT_RUN_STEP,
        BEGIN_RUN,
        CANCEL_RUN_STEPS,
        COMPLETE_RUN,
        DECIDE_STEP,
        FINAL_STEP_STATUSES,
        FINISH_RUN,
        GET_RUN_STATE,
        MESSAGE_RUN_STEP,
        MESSAGE_STEP,
        PAUSE_EXECUTION,
        PLAN_ORCHESTRATOR_WORKFLOW,
        RECORD_RUN_PROGRESS,
        RESUME_EXECUTION,
        RUN_GONE,
        START_RUN_STEP,
        STEP_REFUSED,
        WORKFLOW_INTERPRETER_WORKFLOW,
        RunBegin,
        RunCancel,
        RunFinish,
        RunInput,
        RunProgress,
        RunState,
        RunStep,
        StepDecision,
        StepLaunched,
        StepMessage,
        StepMessageDelivery,
        StepObservation,
        StepStart,
        StepState,
        StepWatch,
    )
    from workflows.conversation import root_message
    from workflows.templates import render_step

RECORD: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        maximum_interval=timedelta(seconds=10), non_retryable_error_types=[RUN_GONE]
    ),
}
START: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=60),
    "retry_policy": RetryPolicy(
        maximum_interval=timedelta(seconds=30), non_retryable_error_types=[STEP_REFUSED, RUN_GONE]
    ),
}
# The wait heartbeats every couple of seconds: a dead system worker is noticed in 10 s, and the
# wait is retried (waits again) on another.
WAIT_SECONDS = 3600
AWAIT: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=WAIT_SECONDS + 120),
    "heartbeat_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(
        maximum_interval=timedelta(seconds=10), non_retryable_error_types=[RUN_GONE]
    ),
}
MESSAGE: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=5,
        non_retryable_error_types=[STEP_REFUSED],
    ),
}
# How much of a dependency's output a plan task's prompt carries.
MAX_OUTPUT_IN_PROMPT = 20_000
ENDED = {"completed": "completed", "cancelled": "cancelled"}  # else failed


class RunWorkflow:
    """The interpreter; a subclass says what a step is told (`_prompt`) and what it is called."""

    noun = "step"

    def __init__(self) -> None:
        self._input: RunInput | None = None
        self._steps: dict[str, RunStep] = {}
        self._order: list[str] = []
        self._state: dict[str, StepState] = {}
        self._decisions: dict[str, StepDecision] = {}
        self._paused = False
        self._completing = False
        # Set when the run stops its steps: a step's task checks it as well as being cancelled,
        # because a cancel that meets the step's activity completing in the same workflow task
        # is lost (the task goes on with the activity's result) and `_stop` would wait forever.
        self._stopping = False
        self._begun = False
        self._changed = False
        self._sequence = 0
        self._status = "pending"
        self._fatal: BaseException | None = None
        self._messages = asyncio.Lock()

    # --- signals and query -------------------------------------------------------------------

    @workflow.signal(name=PAUSE_EXECUTION)
    async def pause_execution(self) -> None:
        if self._paused or self._status not in ("pending", "running"):
            return
        self._paused = True
        if self._begun:
            await self._record(reason="paused by user")

    @workflow.signal(name=RESUME_EXECUTION)
    async def resume_execution(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._changed = True
        if self._begun:
            await self._record(reason="resumed by user")

    @workflow.signal(name=DECIDE_STEP)
    def decide_step(self, decision: StepDecision) -> None:
        state = self._state.get(decision.step_id)
        if state is None or state.status != "waiting_for_approval":
            return  # not waiting for a decision (the API checks first; a second one is late)
        self._decisions.setdefault(decision.step_id, decision)
        self._changed = True

    @workflow.signal(name=MESSAGE_STEP)
    async def message_step(self, message: StepMessage) -> None:
        state = self._state.get(message.step_id)
        if state is None or state.execution_id is None or state.status in FINAL_STEP_STATUSES:
            return
        assert self._input is not None
        async with self._messages:  # in the order they came
            try:
                await workflow.execute_activity(
                    MESSAGE_RUN_STEP,
                    StepMessageDelivery(
                        self._input.execution_id,
                        self._input.organization_id,
                        state.execution_id,
                        message,
                    ),
                    **MESSAGE,
                )
            except ActivityError as error:
                if is_cancelled_exception(error):
                    raise
                # The step's execution no longer takes messages; its wait sees how it ended.
                workflow.logger.warning("message not delivered: %s", root_message(error))

    @workflow.signal(name=COMPLETE_RUN)
    def complete_run(self) -> None:
        if self._status in ("pending", "running"):
            self._completing = True
            self._changed = True

    @workflow.query(name=GET_RUN_STATE)
    def get_run_state(self) -> RunState:
        return RunState(self._run_status(), self._paused, dict(self._state))

    # --- what a subclass says ----------------------------------------------------------------

    def _prompt(self, step: RunStep) -> str:
        raise NotImplementedError

    # --- the run -----------------------------------------------------------------------------

    async def _run(self, inp: RunInput) -> dict[str, Any]:
        self._input = inp
        self._steps = {step.id: step for step in inp.steps}
        self._order = topological_order(inp.steps)
        self._state = {step.id: StepState() for step in inp.steps}
        tasks: list[asyncio.Task[None]] = []
        try:
            await workflow.execute_activity(
                BEGIN_RUN, RunBegin(inp.execution_id, inp.organization_id), **RECORD
            )
            self._begun = True
            self._status = "running"
            if self._paused:  # paused before it began
                await self._record(reason="paused by user")
            while not self._completing:
                # Cleared first: a change while this pass awaits wakes the next one at once.
                self._changed = False
                if self._fatal is not None:
                    raise self._fatal
                await self._skip_unreachable()
                if not self._paused:
                    for step_id in self._ready():
                        step = self._steps[step_id]
                        # Marked now, so the next pass does not start it again.
                        self._state[step_id].status = (
                            "waiting_for_approval" if step.kind == "approval" else "running"
                        )
                        tasks.append(asyncio.create_task(self._step(step)))
                if all(s.status in FINAL_STEP_STATUSES for s in self._state.values()):
                    break
                await workflow.wait_condition(lambda: self._changed)
        except BaseException as error:
            if is_cancelled_exception(error):
                await self._stop(tasks, "Run cancelled")
                await self._finish("cancelled", "Run cancelled", "cancelled by user")
                raise
            if isinstance(error, ActivityError) and _error_type(error) == RUN_GONE:
                raise ApplicationError(root_message(error), type=RUN_GONE) from None
            raise  # a bug in this code: the workflow task fails and is retried once fixed
        if self._completing:
            await self._stop(tasks, "Run completed by user")
            await self._finish("completed", None, "completed by user")
        else:
            unfinished = [
                f"{step_id} ({self._state[step_id].status})"
                for step_id in self._order
                if self._state[step_id].status != "completed"
            ]
            if unfinished:
                why = (
                    f"{len(unfinished)} of {len(self._order)} {self.noun}s did not complete: "
                    + ", ".join(unfinished)
                )
                await self._finish("failed", why, why)
            else:
                await self._finish("completed", None, f"every {self.noun} completed")
        await workflow.wait_condition(workflow.all_handlers_finished)
        return {
            "status": self._status,
            "steps": {step_id: self._state[step_id].status for step_id in self._order},
        }

    def _ready(self) -> list[str]:
        return [
            step_id
            for step_id in self._order
            if self._state[step_id].status == "pending"
            and all(self._state[d].status == "completed" for d in self._steps[step_id].depends_on)
        ]

    async def _skip_unreachable(self) -> None:
        """Skip the pending steps a step they depend on did not complete for (in topological
        order, so a skip reaches every step after it in one pass)."""
        for step_id in self._order:
            state = self._state[step_id]
            if state.status != "pending":
                continue
            blocked = [
                d
                for d in self._steps[step_id].depends_on
                if self._state[d].status in FINAL_STEP_STATUSES
                and self._state[d].status != "completed"
            ]
            if blocked:
                state.status = "skipped"
                state.error = (
                    f"Skipped: {', '.join(blocked)} did not complete"
                    if len(blocked) > 1
                    else f"Skipped: {blocked[0]} did not complete"
                )
                await self._record(step_id)

    async def _step(self, step: RunStep) -> None:
        try:
            if step.kind == "approval":
                await self._approval(step)
            else:
                await self._execution(step)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            if is_cancelled_exception(error):
                raise
            self._fatal = error  # the main loop raises it
        self._changed = True

    async def _execution(self, step: RunStep) -> None:
        inp, state = self._input, self._state[step.id]
        assert inp is not None and step.entity_id is not None
        state.prompt = self._prompt(step)
        try:
            launched: StepLaunched = await workflow.execute_activity(
                START_RUN_STEP,
                StepStart(
                    run_execution_id=inp.execution_id,
                    organization_id=inp.organization_id,
                    step_id=step.id,
                    kind=step.kind,
                    entity_id=step.entity_id,
                    prompt=state.prompt,
                    worker_queue_id=inp.worker_queue_id,
                    progress=self._progress(step.id),
                ),
                result_type=StepLaunched,
                **START,
            )
        except ActivityError as error:
            if _error_type(error) != STEP_REFUSED:
                raise
            state.status, state.error = "failed", root_message(error)
            await self._record(step.id)
            return
        state.execution_id = launched.execution_id
        if self._stopping:
            return
        self._changed = True
        watch = StepWatch(
            run_execution_id=inp.execution_id,
            organization_id=inp.organization_id,
            step_id=step.id,
            execution_id=launched.execution_id,
            max_wait_seconds=WAIT_SECONDS,
        )
        while not self._stopping:
            seen: StepObservation = await workflow.execute_activity(
                AWAIT_RUN_STEP, watch, result_type=StepObservation, **AWAIT
            )
            if self._stopping:
                return
            if not seen.changed:
                continue
            if seen.phase == "ended":
                state.status = ENDED.get(seen.status, "failed")
                state.output = seen.response
                state.error = None if state.status == "completed" else seen.error_message
                await self._record(step.id)
                return
            watch = replace(watch, seen_phase=seen.phase, seen_transitions=seen.transitions)
            state.status = "waiting_for_input" if seen.phase == "waiting" else "running"
            if seen.phase == "waiting":
                state.output = seen.response
            await self._record(step.id)

    async def _approval(self, step: RunStep) -> None:
        state = self._state[step.id]
        state.prompt = self._prompt(step)
        await self._record(step.id)
        await workflow.wait_condition(lambda: step.id in self._decisions or self._stopping)
        if self._stopping:
            return
        decision = self._decisions[step.id]
        state.decided_by = decision.actor
        if decision.approved:
            state.status, state.output = "completed", decision.comment or "approved"
        else:
            state.status, state.output = "rejected", decision.comment
            state.error = f"Rejected by {decision.actor or 'a user'}" + (
                f": {decision.comment}" if decision.comment else ""
            )
        await self._record(step.id)

    async def _stop(self, tasks: list[asyncio.Task[None]], reason: str) -> None:
        """Stop every step: their tasks here, their executions in the organization's namespace
        (`cancel_run_steps` also records the unfinished steps)."""
        assert self._input is not None
        self._stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sequence += 1
        await workflow.execute_activity(
            CANCEL_RUN_STEPS,
            RunCancel(
                self._input.execution_id, self._input.organization_id, reason, self._sequence
            ),
            **RECORD,
        )
        for state in self._state.values():
            if state.status == "pending":
                state.status = "skipped"
            elif state.status not in FINAL_STEP_STATUSES:
                state.status = "cancelled"

    async def _finish(self, status: str, error: str | None, reason: str) -> None:
        assert self._input is not None
        self._status = status
        self._paused = False
        self._sequence += 1
        await workflow.execute_activity(
            FINISH_RUN,
            RunFinish(
                self._input.execution_id,
                self._input.organization_id,
                status,
                error=error,
                reason=reason,
                sequence=self._sequence,
            ),
            **RECORD,
        )

    # --- the read model ----------------------------------------------------------------------

    def _run_status(self) -> str:
        if self._status != "running":
            return self._status
        if self._paused:
            return "paused"
        statuses = {state.status for state in self._state.values()}
        if "running" not in statuses and statuses & {"waiting_for_input", "waiting_for_approval"}:
            return "waiting_for_input"
        return "running"

    def _progress(self, step_id: str | None, reason: str | None = None) -> RunProgress:
        assert self._input is not None
        self._sequence += 1
        return RunProgress(
            execution_id=self._input.execution_id,
            organization_id=self._input.organization_id,
            run_status=self._run_status(),
            sequence=self._sequence,
            step_id=step_id,
            step=replace(self._state[step_id]) if step_id is not None else None,
            reason=reason,
        )

    async def _record(self, step_id: str | None = None, reason: str | None = None) -> None:
        await workflow.execute_activity(
            RECORD_RUN_PROGRESS, self._progress(step_id, reason), **RECORD
        )
        self._changed = True


@workflow.defn(name=PLAN_ORCHESTRATOR_WORKFLOW)
class PlanOrchestratorWorkflow(RunWorkflow):
    """A task plan's tasks; each is told its task and what the tasks it depends on produced."""

    noun = "task"

    @workflow.run
    async def run(self, inp: RunInput) -> dict[str, Any]:
        return await self._run(inp)

    def _prompt(self, step: RunStep) -> str:
        if not step.depends_on:
            return step.prompt
        parts = [step.prompt, "", "What the tasks it depends on produced:"]
        for dependency in step.depends_on:
            output = self._state[dependency].output or ""
            if len(output) > MAX_OUTPUT_IN_PROMPT:
                output = output[:MAX_OUTPUT_IN_PROMPT] + " [...]"
            parts += ["", f"Task {dependency} ({self._steps[dependency].name}):", output]
        return "\n".join(parts)


@workflow.defn(name=WORKFLOW_INTERPRETER_WORKFLOW)
class WorkflowInterpreterWorkflow(RunWorkflow):
    """A user-defined workflow's steps; each is told its prompt template, rendered over the
    run's inputs and the outputs of the steps before it."""

    @workflow.run
    async def run(self, inp: RunInput) -> dict[str, Any]:
        return await self._run(inp)

    def _prompt(self, step: RunStep) -> str:
        assert self._input is not None
        outputs = {step_id: state.output for step_id, state in self._state.items()}
        return render_step(step.prompt, self._input.inputs, outputs)


def topological_order(steps: list[RunStep]) -> list[str]:
    """The steps' ids, each after the steps it depends on, otherwise in the given order (the
    definition was checked to be acyclic; a step in a cycle would never be listed)."""
    order: list[str] = []
    placed: set[str] = set()
    remaining = list(steps)
    while remaining:
        ready = [s for s in remaining if all(d in placed for d in s.depends_on)]
        if not ready:
            break
        for step in ready:
            order.append(step.id)
            placed.add(step.id)
        remaining = [s for s in remaining if s.id not in placed]
    return order


def _error_type(error: ActivityError) -> str | None:
    cause = error.cause
    return cause.type if isinstance(cause, ApplicationError) else None
