"""The outbound webhook workflows, on the system worker's task queue.

WebhookDispatcherWorkflow runs for as long as the control plane does (the system worker starts
it; one per system task queue). Each round is one activity that waits for outbox events
(LISTEN/NOTIFY, with a poll as a safety net), fans them out into deliveries in one transaction
and starts a WebhookDeliveryWorkflow per delivery. Why a long-running workflow rather than a
step of the housekeeping Schedule: an event goes out within a second of its commit instead of
within a minute, and an idle round costs one activity per `WebhookDispatch.wait_seconds`.
History stays bounded by continue-as-new every ROUNDS_PER_RUN rounds. A round is idempotent
(deliveries are unique per subscription and event, workflow ids per delivery), so a round the
system worker dies in is simply run again.

WebhookDeliveryWorkflow posts one event to one subscription. Retries are workflow timers, not
an activity retry policy, so that every attempt is its own activity that records itself in
the deliveries log with the time of the next one. The activity's own retry policy only covers
a worker that dies mid-attempt (its heartbeat stops; the next worker posts again, with the same
`webhook-id`: delivery is at least once). When the window ends without a 2xx the delivery is
given up, and the subscription disabled if nothing got through to it meanwhile.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows.contracts import (
    ATTEMPT_WEBHOOK_DELIVERY,
    DISPATCH_WEBHOOK_EVENTS,
    GIVE_UP_WEBHOOK_DELIVERY,
    WEBHOOK_DELIVERY_WORKFLOW,
    WEBHOOK_DISPATCHER_WORKFLOW,
    WebhookAttempt,
    WebhookAttemptOutcome,
    WebhookDeliveryInput,
    WebhookDeliveryResult,
    WebhookDispatch,
    WebhookDispatcherState,
    WebhookGiveUp,
)

ROUNDS_PER_RUN = 200
DISPATCH_WAIT_SECONDS = 30
# A POST may take 10 s; the activity heartbeats every second while it runs, so a dead worker is
# noticed after HEARTBEAT and the attempt runs again elsewhere.
ATTEMPT_TIMEOUT = timedelta(seconds=60)
HEARTBEAT = timedelta(seconds=5)
INFRASTRUCTURE_RETRIES = RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=5)


@workflow.defn(name=WEBHOOK_DISPATCHER_WORKFLOW)
class WebhookDispatcherWorkflow:
    @workflow.run
    async def run(self, state: WebhookDispatcherState) -> None:
        for _ in range(ROUNDS_PER_RUN):
            scheduled: int = await workflow.execute_activity(
                DISPATCH_WEBHOOK_EVENTS,
                WebhookDispatch(wait_seconds=DISPATCH_WAIT_SECONDS),
                result_type=int,
                start_to_close_timeout=timedelta(seconds=DISPATCH_WAIT_SECONDS + 60),
                heartbeat_timeout=timedelta(seconds=15),
                # Unlimited: a database or Temporal outage delays deliveries, never drops them.
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            )
            state.rounds += 1
            state.scheduled += scheduled
        workflow.continue_as_new(state)


@workflow.defn(name=WEBHOOK_DELIVERY_WORKFLOW)
class WebhookDeliveryWorkflow:
    @workflow.run
    async def run(self, input: WebhookDeliveryInput) -> WebhookDeliveryResult:
        deadline = workflow.now() + timedelta(seconds=input.window_seconds)
        delay = max(1, input.first_retry_seconds)
        attempt = 0
        while True:
            attempt += 1
            last = workflow.now() + timedelta(seconds=delay) > deadline
            try:
                outcome: WebhookAttemptOutcome = await workflow.execute_activity(
                    ATTEMPT_WEBHOOK_DELIVERY,
                    WebhookAttempt(input.delivery_id, attempt, None if last else delay),
                    result_type=WebhookAttemptOutcome,
                    start_to_close_timeout=ATTEMPT_TIMEOUT,
                    heartbeat_timeout=HEARTBEAT,
                    retry_policy=INFRASTRUCTURE_RETRIES,
                )
            except ActivityError as error:  # the attempt could not even run: a failed attempt
                outcome = WebhookAttemptOutcome("failed", error=str(error.cause or error))
            if outcome.outcome == "delivered":
                return WebhookDeliveryResult("succeeded", attempt)
            if outcome.outcome == "abandoned":
                return WebhookDeliveryResult("abandoned", attempt)
            if last:
                disabled: bool = await workflow.execute_activity(
                    GIVE_UP_WEBHOOK_DELIVERY,
                    WebhookGiveUp(input.delivery_id, input.window_seconds),
                    result_type=bool,
                    start_to_close_timeout=timedelta(minutes=1),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                )
                return WebhookDeliveryResult("failed", attempt, subscription_disabled=disabled)
            await workflow.sleep(timedelta(seconds=delay))
            delay = min(delay * 2, input.max_retry_seconds)
