"""PlanGenerationWorkflow (`plan-{execution_id}`): a task plan from a description, on the system
worker (task queue `controlplane-system`, the control plane's namespace).

1. begin: the execution runs (and the model key is checked, so a missing one fails at once);
2. the planning tools read what the request left out (its agents, teams, environments, worker
   queues), each a `run_planning_tool` activity, concurrently;
3. analysis: one forced tool call (`submit_analysis`), validated;
4. plan: one forced tool call (`submit_plan`), validated against the analysis and resources;
5. finish: the domain resolves names to ids, costs the plan from the models' prices and records
   it on the execution.

Each model call is its own activity, so a system worker killed mid-generation resumes on
another without repeating finished steps. An answer that does not validate gets one repair
call (the model sees its answer and the errors); a second invalid answer fails the generation
with `invalid_model_output` and what was wrong. Every ending, failures and cancellation
included, is recorded on the execution by `finish_plan_generation` before the workflow ends.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

from workflows.contracts import (
    BEGIN_PLAN_GENERATION,
    EXECUTION_GONE,
    FINISH_PLAN_GENERATION,
    GET_PLAN_STATE,
    MODEL_NOT_CONFIGURED,
    MODEL_REFUSED,
    PLAN_GENERATION_WORKFLOW,
    PLAN_MODEL_STEP,
    PLANNING_TOOLS,
    RUN_PLANNING_TOOL,
    PlanBegin,
    PlanError,
    PlanFinish,
    PlanGenerationInput,
    PlanGenerationResult,
    PlanModelStep,
    PlanModelStepResult,
    PlanningToolCall,
    PlanningToolResult,
    PlanRepair,
    PlanState,
    StepUsage,
)

RECORD: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=5,
        non_retryable_error_types=[MODEL_NOT_CONFIGURED, EXECUTION_GONE],
    ),
}
# A model call: Temporal owns the retries (429, 5xx, timeouts: 2 retries, as Kubiya's planner);
# the activity heartbeats while it waits, so a dead system worker is noticed in 10 s.
MODEL_CALL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=5),
    "heartbeat_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=3,
        non_retryable_error_types=[MODEL_NOT_CONFIGURED, MODEL_REFUSED, EXECUTION_GONE],
    ),
}


class PlanFailed(Exception):
    def __init__(self, error: PlanError) -> None:
        super().__init__(error.message)
        self.error = error


@workflow.defn(name=PLAN_GENERATION_WORKFLOW)
class PlanGenerationWorkflow:
    def __init__(self) -> None:
        self._state = PlanState(stage="starting")

    @workflow.query(name=GET_PLAN_STATE)
    def state(self) -> PlanState:
        return self._state

    @workflow.run
    async def run(self, input: PlanGenerationInput) -> PlanGenerationResult:
        try:
            return await self._generate(input)
        except BaseException as error:
            if is_cancelled_exception(error):
                failure = PlanError("cancelled", "The plan generation was cancelled")
                await self._finish(input, "cancelled", error=failure)
                raise
            if isinstance(error, PlanFailed):
                failure = error.error
            elif isinstance(error, ActivityError):
                failure = _activity_failure(error)
            else:
                raise  # a bug in this code: the workflow task fails and is retried once fixed
            await self._finish(input, "failed", error=failure)
            raise ApplicationError(
                failure.message, failure.details, type=failure.kind, non_retryable=True
            ) from None

    async def _generate(self, input: PlanGenerationInput) -> PlanGenerationResult:
        await workflow.execute_activity(
            BEGIN_PLAN_GENERATION,
            PlanBegin(input.execution_id, input.organization_id, input.model.value),
            **RECORD,
        )
        self._state.stage = "discovering"
        resources = await self._discover(input)
        self._state.stage = "analysis"
        analysis = await self._structured(input, "analysis", resources, None)
        self._state.stage = "plan"
        draft = await self._structured(input, "plan", resources, analysis)
        self._state.stage = "finishing"
        plan = await self._finish(
            input, "completed", resources=resources, analysis=analysis, draft=draft
        )
        self._state.stage = "completed"
        return PlanGenerationResult(
            input.execution_id, "completed", plan=plan, usage=self._state.usage
        )

    async def _discover(self, input: PlanGenerationInput) -> dict[str, list[dict[str, Any]]]:
        """The request's own lists, and the planning tools' reads for those it left out."""
        resources = {key: list(input.request.get(key) or []) for key in PLANNING_TOOLS.values()}
        missing = [name for name, key in PLANNING_TOOLS.items() if not resources[key]]
        results = await asyncio.gather(
            *(
                workflow.execute_activity(
                    RUN_PLANNING_TOOL,
                    PlanningToolCall(
                        input.execution_id, input.organization_id, name, f"tool-{index + 1}"
                    ),
                    result_type=PlanningToolResult,
                    **RECORD,
                )
                for index, name in enumerate(missing)
            )
        )
        for result in results:
            resources[PLANNING_TOOLS[result.tool_name]] = result.items
        return resources

    async def _structured(
        self,
        input: PlanGenerationInput,
        step: str,
        resources: dict[str, list[dict[str, Any]]],
        analysis: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """One step's validated answer: a call, and one repair call if it did not validate."""
        repair: PlanRepair | None = None
        errors: list[str] = []
        for attempt in (1, 2):
            self._state.attempts[step] = attempt
            result: PlanModelStepResult = await workflow.execute_activity(
                PLAN_MODEL_STEP,
                PlanModelStep(
                    execution_id=input.execution_id,
                    organization_id=input.organization_id,
                    step=step,
                    model=input.model,
                    request=input.request,
                    resources=resources,
                    max_tokens=(
                        input.analysis_max_tokens if step == "analysis" else input.plan_max_tokens
                    ),
                    analysis=analysis,
                    repair=repair,
                ),
                result_type=PlanModelStepResult,
                **MODEL_CALL,
            )
            self._add_usage(result.usage)
            if result.output is not None and not result.errors:
                return result.output
            errors = result.errors
            repair = PlanRepair(result.tool_use_id, result.answer or {}, errors)
        raise PlanFailed(
            PlanError(
                "invalid_model_output",
                f"The model's {step} did not validate, twice: {'; '.join(errors[:5])}",
                {"step": step, "errors": errors},
            )
        )

    def _add_usage(self, usage: StepUsage) -> None:
        for entry in self._state.usage:
            if entry.step == usage.step:
                entry.calls += usage.calls
                entry.input_tokens += usage.input_tokens
                entry.output_tokens += usage.output_tokens
                entry.cost_usd = round(entry.cost_usd + usage.cost_usd, 8)
                return
        self._state.usage.append(usage)

    async def _finish(
        self,
        input: PlanGenerationInput,
        status: str,
        *,
        resources: dict[str, list[dict[str, Any]]] | None = None,
        analysis: dict[str, Any] | None = None,
        draft: dict[str, Any] | None = None,
        error: PlanError | None = None,
    ) -> dict[str, Any] | None:
        self._state.stage = status if status != "completed" else "finishing"
        plan: dict[str, Any] | None = await workflow.execute_activity(
            FINISH_PLAN_GENERATION,
            PlanFinish(
                execution_id=input.execution_id,
                organization_id=input.organization_id,
                status=status,
                request=input.request,
                resources=resources or {},
                analysis=analysis,
                draft=draft,
                usage=self._state.usage,
                error=error,
            ),
            result_type=dict[str, Any] | None,  # type: ignore[arg-type]
            **RECORD,
        )
        return plan


def _activity_failure(error: ActivityError) -> PlanError:
    cause = error.cause
    message = cause.message if isinstance(cause, ApplicationError) else str(cause or error)
    kind = cause.type if isinstance(cause, ApplicationError) else None
    if kind == MODEL_NOT_CONFIGURED:
        return PlanError("model_not_configured", message)
    if error.activity_type != PLAN_MODEL_STEP or kind == EXECUTION_GONE:
        return PlanError(
            "internal_error",
            f"Step {error.activity_type} failed: {message}",
            {"activity": error.activity_type},
        )
    if kind == MODEL_REFUSED:
        return PlanError("model_error", message)
    return PlanError(
        "model_error",
        f"The model call failed after its retries: {message}",
        {"error_type": kind or type(cause).__name__},
    )
