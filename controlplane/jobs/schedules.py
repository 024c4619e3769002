"""A cron job's Temporal Schedule, `job-{id}`, in the control plane's own namespace (where the
system worker runs): its action starts JobRunWorkflow on the system task queue, which starts
the job's run in the organization's namespace through the job-trigger use case.

Paused while the job is disabled; its note says why, for whoever looks in the Temporal UI.
Temporal's own refusal of a spec (a cron expression it cannot parse) is a 422, anything else it
answers is a 503: the callers write the job's row in a transaction that this refusal rolls back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from controlplane.errors import Unavailable
from controlplane.jobs.cron import invalid
from controlplane.temporal import TemporalGateway
from workflows.contracts import (
    JOB_RUN_WORKFLOW,
    JobRunInput,
    job_run_workflow_id,
    job_schedule_id,
)


@dataclass(frozen=True)
class ScheduleSpecOfJob:
    """What a job's Schedule is made of."""

    job_id: str
    organization_id: str
    cron_schedule: str
    cron_timezone: str | None
    enabled: bool


@dataclass(frozen=True)
class ScheduleTimes:
    """What the Schedule knows about a job's times."""

    next_run_at: datetime | None
    last_run_at: datetime | None
    paused: bool


def _note(enabled: bool) -> str:
    return "job enabled" if enabled else "job disabled (POST /api/v1/jobs/{id}/enable resumes it)"


def build(spec: ScheduleSpecOfJob, task_queue: str) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            JOB_RUN_WORKFLOW,
            JobRunInput(job_id=spec.job_id, organization_id=spec.organization_id),
            id=job_run_workflow_id(spec.job_id),
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(
            cron_expressions=[spec.cron_schedule], time_zone_name=spec.cron_timezone or "UTC"
        ),
        # A run only starts an execution (seconds), so skipping an overlap loses nothing but a
        # run due while the previous start is still being retried through an outage.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(paused=not spec.enabled, note=_note(spec.enabled)),
    )


@contextmanager
def _temporal_errors(temporal: TemporalGateway, operation: str) -> Iterator[None]:
    try:
        yield
    except RPCError as error:
        if error.status == RPCStatusCode.INVALID_ARGUMENT:
            raise invalid(
                "cron_schedule", f"Temporal refused the schedule: {error.message}"
            ) from None
        temporal.count_error(operation)
        raise Unavailable(f"Temporal could not {operation} the job's schedule: {error}") from None


async def _client(temporal: TemporalGateway) -> Client:
    return await temporal.system_client()


async def create(temporal: TemporalGateway, task_queue: str, spec: ScheduleSpecOfJob) -> None:
    client = await _client(temporal)
    with _temporal_errors(temporal, "create"):
        try:
            await client.create_schedule(job_schedule_id(spec.job_id), build(spec, task_queue))
        except ScheduleAlreadyRunningError:
            # Left by a create whose row did not commit: this job's id is new, so it is ours.
            await _replace(client, spec, task_queue)


async def _replace(client: Client, spec: ScheduleSpecOfJob, task_queue: str) -> None:
    handle = client.get_schedule_handle(job_schedule_id(spec.job_id))
    schedule = build(spec, task_queue)

    def updater(_: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(schedule=schedule)

    await handle.update(updater)
    # Pausing is its own call: an update's state is not how a Schedule is paused.
    if spec.enabled:
        await handle.unpause(note=_note(True))
    else:
        await handle.pause(note=_note(False))


async def update(temporal: TemporalGateway, task_queue: str, spec: ScheduleSpecOfJob) -> None:
    """The Schedule as the job now says (created if it is missing)."""
    client = await _client(temporal)
    with _temporal_errors(temporal, "update"):
        try:
            await _replace(client, spec, task_queue)
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
            await client.create_schedule(job_schedule_id(spec.job_id), build(spec, task_queue))


async def set_paused(temporal: TemporalGateway, job_id: str, paused: bool) -> None:
    client = await _client(temporal)
    handle = client.get_schedule_handle(job_schedule_id(job_id))
    with _temporal_errors(temporal, "pause" if paused else "unpause"):
        if paused:
            await handle.pause(note=_note(False))
        else:
            await handle.unpause(note=_note(True))


async def delete(temporal: TemporalGateway, job_id: str) -> None:
    """Delete the Schedule; one already gone is fine."""
    client = await _client(temporal)
    with _temporal_errors(temporal, "delete"):
        try:
            await client.get_schedule_handle(job_schedule_id(job_id)).delete()
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise


async def times(temporal: TemporalGateway, job_id: str) -> ScheduleTimes | None:
    """The next and the last run from the Schedule's description (None: it does not exist)."""
    client = await _client(temporal)
    with _temporal_errors(temporal, "describe"):
        try:
            described = await client.get_schedule_handle(job_schedule_id(job_id)).describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
    info = described.info
    recent: list[Any] = list(info.recent_actions)
    last = max((action.started_at for action in recent), default=None)
    paused = described.schedule.state.paused
    upcoming = None if paused else next(iter(info.next_action_times), None)
    return ScheduleTimes(next_run_at=upcoming, last_run_at=last, paused=paused)
