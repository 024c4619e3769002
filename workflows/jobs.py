"""JobRunWorkflow: one scheduled run of a cron job, started by the job's Temporal Schedule
(`job-{id}`) on the system worker's task queue.

It only schedules its one activity, which calls the job-trigger use case: the use case reads the
job as it is now (still there? still enabled?), renders its prompt and starts the execution or
workflow run in the organization's namespace. The workflow does not await that run: the
execution is visible on its own, and the Schedule's overlap policy then only ever waits for a
start, never for a long run. The activity names its run by this workflow's id, so a retry after
a start that succeeded answers the same execution instead of starting another (and starts its
workflow, if the attempt that recorded it died before starting it).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.contracts import (
    JOB_REFUSED,
    JOB_RUN_WORKFLOW,
    RUN_SCHEDULED_JOB,
    JobRunInput,
    JobRunResult,
    ScheduledJobRun,
)

# A database or Temporal outage delays a run by up to about ten minutes, then gives it up (the
# next scheduled time runs anew): a cron run hours late is worse than a skipped one.
START_RETRIES = RetryPolicy(
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=15,
    non_retryable_error_types=[JOB_REFUSED],
)


@workflow.defn(name=JOB_RUN_WORKFLOW)
class JobRunWorkflow:
    @workflow.run
    async def run(self, input: JobRunInput) -> JobRunResult:
        result: JobRunResult = await workflow.execute_activity(
            RUN_SCHEDULED_JOB,
            ScheduledJobRun(input.job_id, input.organization_id, workflow.info().workflow_id),
            result_type=JobRunResult,
            start_to_close_timeout=timedelta(minutes=2),
            # The activity heartbeats: an attempt whose system worker died is retried after
            # this, not after the whole start-to-close timeout.
            heartbeat_timeout=timedelta(seconds=10),
            retry_policy=START_RETRIES,
        )
        return result
