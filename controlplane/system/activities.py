"""The system worker's activities: each calls a use case of the domain. They run in the control
plane (database access, the vault key), never on a customer's worker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from controlplane.errors import DomainError, Unavailable
from controlplane.executions.events import EventHub
from controlplane.executions.launch import Services
from controlplane.executions.reconcile import reconcile_executions
from controlplane.executions.starting import start_stalled
from controlplane.housekeeping import prune
from controlplane.jobs import runs as job_runs
from controlplane.planning import generation
from controlplane.planning.steps import run_step
from controlplane.policy_engine import get_engine
from controlplane.runs import records, steps
from controlplane.settings import Settings
from controlplane.temporal import TemporalGateway
from controlplane.vault import Vault, vault_from_key
from controlplane.webhooks import delivery, dispatch
from controlplane.workers import mark_stale
from workflows.contracts import (
    ANNOUNCE_STALE_WORKERS,
    ATTEMPT_WEBHOOK_DELIVERY,
    AWAIT_RUN_STEP,
    BEGIN_PLAN_GENERATION,
    BEGIN_RUN,
    CANCEL_RUN_STEPS,
    DISPATCH_WEBHOOK_EVENTS,
    EXECUTION_GONE,
    FINISH_PLAN_GENERATION,
    FINISH_RUN,
    GIVE_UP_WEBHOOK_DELIVERY,
    JOB_REFUSED,
    MESSAGE_RUN_STEP,
    MODEL_NOT_CONFIGURED,
    MODEL_REFUSED,
    PLAN_MODEL_STEP,
    PRUNE_COUNTERS,
    RECONCILE_EXECUTIONS,
    RECORD_RUN_PROGRESS,
    RUN_GONE,
    RUN_PLANNING_TOOL,
    RUN_SCHEDULED_JOB,
    START_RUN_STEP,
    STEP_REFUSED,
    JobRunResult,
    PlanBegin,
    PlanFinish,
    PlanModelStep,
    PlanModelStepResult,
    PlanningToolCall,
    PlanningToolResult,
    RunBegin,
    RunCancel,
    RunFinish,
    RunProgress,
    ScheduledJobRun,
    StepLaunched,
    StepMessageDelivery,
    StepObservation,
    StepStart,
    StepWatch,
    WebhookAttempt,
    WebhookAttemptOutcome,
    WebhookDeliveryInput,
    WebhookDispatch,
    WebhookGiveUp,
)

HEARTBEAT_SECONDS = 1.0
MODEL_TIMEOUT_SECONDS = 120.0
NO_MODEL_KEY = (
    "ANTHROPIC_API_KEY is not set on the system worker: the planner cannot call the model "
    "(set ANTHROPIC_API_KEY or ANTHROPIC_API_KEY_FILE for `controlplane system-worker`, or run "
    "`controlplane dev --fake-llm`)"
)
# How often a waiting dispatch round looks at the outbox without a notice, and heartbeats.
DISPATCH_POLL_SECONDS = 2.0
HEARTBEAT_EVERY_SECONDS = 1.0


@contextlib.asynccontextmanager
async def heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the body runs, so a worker that dies mid-attempt is noticed within the
    activity's heartbeat timeout and the attempt runs again elsewhere."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY_SECONDS)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class SystemActivities:
    def __init__(
        self,
        db: asyncpg.Pool[Any],
        temporal: TemporalGateway,
        settings: Settings | None = None,
        anthropic_api_key: str | None = None,
    ) -> None:
        self.db = db
        self.temporal = temporal
        self.settings = settings or temporal.settings
        self.vault: Vault | None = (
            vault_from_key(self.settings.secret_key) if self.settings.secret_key else None
        )
        self.anthropic_api_key = anthropic_api_key or None
        self._anthropic: anthropic.AsyncAnthropic | None = None
        settings = self.settings
        # What starting an organization's execution needs (a run's steps start them).
        self.services = Services(temporal, get_engine(settings), settings.policy_fail_open)
        # Woken by the NOTIFY of every execution event: a run's step awaits its execution.
        self.hub = EventHub(settings.database_url)

    def activities(self) -> list[Any]:
        return [
            self.prune_counters,
            self.reconcile_executions,
            self.announce_stale_workers,
            self.dispatch_webhook_events,
            self.attempt_webhook_delivery,
            self.give_up_webhook_delivery,
            self.begin_plan_generation,
            self.run_planning_tool,
            self.plan_model_step,
            self.finish_plan_generation,
            self.begin_run,
            self.start_run_step,
            self.await_run_step,
            self.record_run_progress,
            self.message_run_step,
            self.cancel_run_steps,
            self.finish_run,
            self.run_scheduled_job,
        ]

    async def close(self) -> None:
        await self.hub.close()

    @property
    def anthropic(self) -> anthropic.AsyncAnthropic:
        """One client per worker (ANTHROPIC_BASE_URL from the environment); Temporal owns the
        retries."""
        if self._anthropic is None:
            self._anthropic = anthropic.AsyncAnthropic(
                api_key=self.anthropic_api_key, max_retries=0, timeout=MODEL_TIMEOUT_SECONDS
            )
        return self._anthropic

    @activity.defn(name=PRUNE_COUNTERS)
    async def prune_counters(self) -> int:
        return await prune(self.db, self.settings.webhook_log_retention_days)

    @activity.defn(name=RECONCILE_EXECUTIONS)
    async def reconcile_executions(self) -> int:
        """Starts still due are made first, then ended workflows are recorded."""
        started = await start_stalled(self.db, self.temporal)
        return started + await reconcile_executions(self.db, self.temporal)

    # --- workers and webhooks ----------------------------------------------------------------

    @activity.defn(name=ANNOUNCE_STALE_WORKERS)
    async def announce_stale_workers(self) -> int:
        return await mark_stale(self.db)

    @activity.defn(name=DISPATCH_WEBHOOK_EVENTS)
    async def dispatch_webhook_events(self, request: WebhookDispatch) -> int:
        """Wait for outbox events (up to `wait_seconds`, or until the worker shuts down), fan
        them out and start their delivery workflows; returns how many were started."""
        client = await self.temporal.system_client()
        task_queue = activity.info().task_queue
        policy = WebhookDeliveryInput(
            delivery_id="",
            first_retry_seconds=self.settings.webhook_first_retry_seconds,
            window_seconds=self.settings.webhook_retry_window_seconds,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.wait_seconds
        async with dispatch.outbox_notices(self.db) as notice:
            while True:
                notice.clear()
                events = await dispatch.fan_out(self.db)
                started = await dispatch.schedule(self.db, client, task_queue, policy)
                remaining = deadline - loop.time()
                if events or started or remaining <= 0 or activity.is_worker_shutdown():
                    return started
                activity.heartbeat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        notice.wait(), min(DISPATCH_POLL_SECONDS, max(remaining, 0.01))
                    )

    @activity.defn(name=ATTEMPT_WEBHOOK_DELIVERY)
    async def attempt_webhook_delivery(self, request: WebhookAttempt) -> WebhookAttemptOutcome:
        async with heartbeating():
            outcome = await delivery.attempt(
                self.db,
                self.vault,
                uuid.UUID(request.delivery_id),
                allow_private=self.settings.webhook_allow_private,
                next_retry_seconds=request.next_retry_seconds,
            )
        return WebhookAttemptOutcome(outcome.outcome, outcome.status_code, outcome.error)

    @activity.defn(name=GIVE_UP_WEBHOOK_DELIVERY)
    async def give_up_webhook_delivery(self, request: WebhookGiveUp) -> bool:
        return await delivery.give_up(
            self.db, uuid.UUID(request.delivery_id), request.window_seconds
        )

    # --- task planning -----------------------------------------------------------------------

    def _require_model_key(self) -> None:
        if not self.anthropic_api_key:
            raise ApplicationError(NO_MODEL_KEY, type=MODEL_NOT_CONFIGURED, non_retryable=True)

    @activity.defn(name=BEGIN_PLAN_GENERATION)
    async def begin_plan_generation(self, start: PlanBegin) -> None:
        """The generation runs; without a model key it fails here, before any step."""
        self._require_model_key()
        with _gone_is_final():
            await generation.begin(self.db, start)

    @activity.defn(name=RUN_PLANNING_TOOL)
    async def run_planning_tool(self, call: PlanningToolCall) -> PlanningToolResult:
        with _gone_is_final():
            return await generation.run_tool(self.db, call)

    @activity.defn(name=PLAN_MODEL_STEP)
    async def plan_model_step(self, step: PlanModelStep) -> PlanModelStepResult:
        """One forced-tool model call, validated. Retryable model errors (429, 5xx, overload,
        timeouts, connection errors) raise and Temporal retries; the others fail the step at
        once, saying what the model's API answered."""
        self._require_model_key()
        with _gone_is_final():
            await generation.step_started(self.db, step)
        beating = asyncio.create_task(_heartbeat_forever())
        try:
            return await run_step(self.anthropic, step)
        except anthropic.APIStatusError as error:
            if error.status_code in (408, 409, 429) or error.status_code >= 500:
                raise
            raise ApplicationError(
                f"The model refused the planner's call ({error.status_code}): {_message(error)}",
                type=MODEL_REFUSED,
                non_retryable=True,
            ) from None
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

    @activity.defn(name=FINISH_PLAN_GENERATION)
    async def finish_plan_generation(self, outcome: PlanFinish) -> dict[str, Any] | None:
        return await generation.finish(self.db, outcome)

    # --- runs: plan executions and user-defined workflows (workflows/runs.py) ---------------

    @activity.defn(name=BEGIN_RUN)
    async def begin_run(self, start: RunBegin) -> None:
        with _run_errors():
            await records.begin(self.db, start)

    @activity.defn(name=START_RUN_STEP)
    async def start_run_step(self, start: StepStart) -> StepLaunched:
        """Start the step's execution (the same one again on a retry) and record it."""
        with _run_errors():
            return await steps.start_step(self.db, self.services, start)

    @activity.defn(name=AWAIT_RUN_STEP)
    async def await_run_step(self, watch: StepWatch) -> StepObservation:
        """Wait, heartbeating, for the step's execution to wait for input or end; retried (on
        another system worker, if this one died) it just waits again."""
        return await steps.watch_step(self.db, self.hub, watch, activity.heartbeat)

    @activity.defn(name=RECORD_RUN_PROGRESS)
    async def record_run_progress(self, progress: RunProgress) -> None:
        with _run_errors():
            await records.record_progress(self.db, progress)

    @activity.defn(name=MESSAGE_RUN_STEP)
    async def message_run_step(self, delivery: StepMessageDelivery) -> None:
        with _run_errors():
            await steps.deliver_message(self.db, self.temporal, delivery)

    @activity.defn(name=CANCEL_RUN_STEPS)
    async def cancel_run_steps(self, cancel: RunCancel) -> None:
        await steps.cancel_steps(self.db, self.temporal, cancel)

    @activity.defn(name=FINISH_RUN)
    async def finish_run(self, outcome: RunFinish) -> None:
        await records.finish(self.db, outcome)

    # --- jobs: a cron job's scheduled run (workflows/jobs.py) ----------------------------------

    @activity.defn(name=RUN_SCHEDULED_JOB)
    async def run_scheduled_job(self, run: ScheduledJobRun) -> JobRunResult:
        """Start the job's run as it is now; a refusal (its agent, queue or policy says no) is
        final, an outage is retried."""
        try:
            async with heartbeating():  # a dead system worker's attempt is retried in seconds
                return await job_runs.run_scheduled(self.db, self.services, self.settings, run)
        except Unavailable:
            raise
        except DomainError as error:
            raise ApplicationError(error.message, type=JOB_REFUSED, non_retryable=True) from None


async def _heartbeat_forever() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_SECONDS)


@contextlib.contextmanager
def _gone_is_final() -> Any:
    try:
        yield
    except generation.ExecutionGone as error:
        raise ApplicationError(error.message, type=EXECUTION_GONE, non_retryable=True) from None


@contextlib.contextmanager
def _run_errors() -> Any:
    """What no retry fixes: the run is gone, or the step cannot run as asked."""
    try:
        yield
    except records.RunGone as error:
        raise ApplicationError(error.message, type=RUN_GONE, non_retryable=True) from None
    except steps.StepRefused as error:
        raise ApplicationError(error.message, type=STEP_REFUSED, non_retryable=True) from None


def _message(error: anthropic.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(error.message)
