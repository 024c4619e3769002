"""Running a job: the one use case every trigger calls (`run_job`): a user's
`POST /jobs/{id}/trigger`, a signed inbound webhook (`run_webhook`), and the job's Schedule
through JobRunWorkflow on the system worker (`run_scheduled`).

A run reads the job as it is now (a deleted or disabled job starts nothing), fills the prompt
template with the trigger's values (workflows/templates.py: `{{NAME}}`, `{{payload.PATH}}`),
and starts an ordinary run in the organization's namespace: `start_execution` for an agent or a
team, the workflow-run start that `POST /workflows/{id}/start` uses for a workflow. The run
carries `trigger_source` (job_cron, job_webhook, job_manual) and the job's id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from controlplane.errors import Invalid, NotFound, Refused, Unauthenticated
from controlplane.executions.launch import (
    Caller,
    LaunchRequest,
    Services,
    TriggerSource,
    start_execution,
)
from controlplane.executions.starting import ensure_started
from controlplane.jobs import schedules
from controlplane.jobs.definitions import JOBS, secret_name
from controlplane.jobs.signatures import verified
from controlplane.runs import definitions as workflow_definitions
from controlplane.settings import Settings
from controlplane.vault import Vault
from workflows.contracts import JobRunResult, ScheduledJobRun
from workflows.templates import render_variables

BAD_SIGNATURE = (
    "Missing or invalid signature: send X-Webhook-Signature (or X-Hub-Signature-256) "
    "'sha256=<hex HMAC-SHA256 of the body, keyed with the job's secret>'"
)


@dataclass(frozen=True)
class Trigger:
    """How a run was asked for, and the values its prompt template may use."""

    source: TriggerSource
    parameters: dict[str, Any] = field(default_factory=dict)
    triggered_by: str | None = None  # who asked, for a manual trigger
    # A scheduled run's key (its JobRunWorkflow's id): the same key answers the same execution.
    run_key: str | None = None


@dataclass(frozen=True)
class JobRun:
    execution_id: uuid.UUID
    workflow_id: str
    prompt: str


async def run_job(
    db: asyncpg.Pool[Any],
    services: Services,
    settings: Settings,
    org: str,
    job_id: uuid.UUID,
    trigger: Trigger,
) -> JobRun:
    """Start the job's run now (400 while it is disabled; 404 unless it is the organization's)."""
    job = await JOBS.get(db, org, job_id)
    if not job["enabled"]:
        raise Refused(
            f"Job '{job['name']}' is disabled: POST /api/v1/jobs/{job_id}/enable first",
            details={"job_id": str(job_id)},
        )
    if trigger.run_key is not None:
        # A retried attempt answers the execution the first one started; a unique index on the
        # key makes two overlapping attempts record one (the loser fails and is retried).
        done = await db.fetchrow(
            "SELECT id, temporal_workflow_id, prompt FROM executions WHERE job_id = $1 "
            "AND execution_metadata->>'job_run_key' = $2",
            job_id,
            trigger.run_key,
        )
        if done is not None:
            # An attempt that died between the row's commit and its workflow's start: start it.
            await ensure_started(db, services.temporal, done)
            return JobRun(done["id"], done["temporal_workflow_id"], done["prompt"])
    prompt = render_variables(job["prompt_template"], trigger.parameters)
    # The job acts, with the role of the key that last wrote it (checked then).
    caller = Caller(org, f"job:{job_id}", job["run_as_role"])
    metadata: dict[str, Any] = {"job_id": str(job_id), "job_name": job["name"]}
    if trigger.triggered_by is not None:
        metadata["triggered_by"] = trigger.triggered_by
    if trigger.run_key is not None:
        metadata["job_run_key"] = trigger.run_key
    if job["entity_type"] == "workflow":
        started = await workflow_definitions.start_workflow(
            db,
            services.temporal,
            settings,
            caller,
            job["entity_id"],
            inputs={**trigger.parameters, "prompt": prompt},
            worker_queue_id=job["worker_queue_id"],
            trigger_source=trigger.source,
            job_id=job_id,
            prompt=prompt,
            # Written with the row, so a retry after a start that succeeded finds its key.
            metadata=metadata,
        )
        return JobRun(started.execution_id, started.workflow_id, prompt)
    launched = await start_execution(
        db,
        services,
        LaunchRequest(
            caller=caller,
            prompt=prompt,
            worker_queue_id=job["worker_queue_id"],
            agent_id=job["entity_id"] if job["entity_type"] == "agent" else None,
            team_id=job["entity_id"] if job["entity_type"] == "team" else None,
            user_name=f"job {job['name']}",
            execution_metadata=metadata,
            execution_environment=job["execution_environment"] or None,
            trigger_source=trigger.source,
            job_id=job_id,
        ),
    )
    return JobRun(launched.execution_id, launched.workflow_id, prompt)


async def run_scheduled(
    db: asyncpg.Pool[Any], services: Services, settings: Settings, run: ScheduledJobRun
) -> JobRunResult:
    """A run the job's Schedule asked for. A job disabled since starts nothing (a Schedule
    triggered by hand while paused still runs its action; this is where it stops); a job that
    does not exist takes its Schedule with it."""
    job_id = uuid.UUID(run.job_id)
    enabled = await db.fetchval(
        "SELECT enabled FROM jobs WHERE id = $1 AND organization_id = $2",
        job_id,
        run.organization_id,
    )
    if enabled is None:
        # A Schedule whose job never committed (or whose delete failed half-way): remove it.
        await schedules.delete(services.temporal, run.job_id)
        return JobRunResult(skipped="the job was deleted")
    if not enabled:
        return JobRunResult(skipped="the job is disabled")
    started = await run_job(
        db,
        services,
        settings,
        run.organization_id,
        job_id,
        Trigger(source="job_cron", run_key=run.run_key),
    )
    return JobRunResult(execution_id=str(started.execution_id))


async def run_webhook(
    db: asyncpg.Pool[Any],
    services: Services,
    settings: Settings,
    vault: Vault,
    webhook_path: str,
    body: bytes,
    headers: Mapping[str, str],
) -> tuple[uuid.UUID, JobRun]:
    """A signed inbound webhook: its JSON body is `{{payload...}}` in the template. An unknown
    path is 404; a bad or missing signature 401, before anything else is said or done."""
    row = await db.fetchrow(
        "SELECT id, organization_id, webhook_secret_ciphertext, webhook_secret_nonce "
        "FROM jobs WHERE webhook_path = $1",
        webhook_path,
    )
    if row is None:
        raise NotFound("No job listens on this webhook path")
    secret = vault.open(
        row["organization_id"],
        secret_name(row["id"]),
        row["webhook_secret_ciphertext"],
        row["webhook_secret_nonce"],
    )
    if not verified(secret, body, headers):
        raise Unauthenticated(BAD_SIGNATURE)
    try:
        payload = json.loads(body) if body.strip() else {}
        # What Postgres text and jsonb cannot hold (the prompt and a run's inputs keep it).
        unusable = "\x00" in json.dumps(payload, ensure_ascii=False).encode("utf-8").decode()
    except (json.JSONDecodeError, UnicodeError, RecursionError):
        unusable = True
    if unusable:
        raise Invalid("The webhook's body is not JSON a prompt can hold") from None
    started = await run_job(
        db,
        services,
        settings,
        row["organization_id"],
        row["id"],
        Trigger(source="job_webhook", parameters={"payload": payload}),
    )
    return row["id"], started
