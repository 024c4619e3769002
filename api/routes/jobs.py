"""`/api/v1/jobs` (reference §3.18): an agent, team or workflow run on a cron schedule, by a
signed inbound webhook, or by hand. The rules are the domain's (controlplane/jobs/): a cron job
is a Temporal Schedule `job-{id}` kept consistent with its row; every run, however triggered, is
an ordinary execution with `trigger_source` and `job_id`.

`POST /api/v1/jobs/webhook/{webhook_path}` takes no API key: the signature of its body with the
job's secret (shown once, at create) is what authenticates it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field

from api.access import vault_of
from api.execution_shapes import ExecutionOut, ExecutionStatus
from api.pagination import ListQuery, Page, fetch_page
from api.routing import Call, Router, launch_services
from api.schemas import Deleted, PatchBody
from controlplane.environments import ExecutionEnvironmentIn
from controlplane.executions.lifecycle import COLUMNS as EXECUTION_COLUMNS
from controlplane.jobs import definitions, runs, schedules
from controlplane.jobs.definitions import JOBS, JobFields
from controlplane.jobs.runs import Trigger

router = Router("jobs")

TriggerType = Literal["cron", "webhook", "manual"]
EntityType = Literal["agent", "team", "workflow"]
MAX_PROMPT = 20_000
TEMPLATE_DOC = (
    "The prompt, a template: {{NAME}} is a trigger parameter, {{payload.PATH}} a value of a "
    "webhook's JSON body; a name that is not given is left as written"
)
CRON_DOC = (
    "For trigger_type cron: five fields (minute hour day-of-month month day-of-week) or "
    "@hourly, @daily, @weekly, @monthly, @yearly"
)
TEMPORAL_ERRORS = {503: "Temporal is unreachable: nothing was changed"}
WEBHOOK_ERRORS = {401: "The signature is missing or does not sign the body"}


class JobCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    enabled: bool = True
    trigger_type: TriggerType
    cron_schedule: str | None = Field(None, min_length=1, max_length=200, description=CRON_DOC)
    cron_timezone: str | None = Field(
        None, min_length=1, max_length=100, description="An IANA time zone (default UTC)"
    )
    entity_type: EntityType
    entity_id: uuid.UUID = Field(description="An agent, team or workflow of yours")
    prompt_template: str = Field(min_length=1, max_length=MAX_PROMPT, description=TEMPLATE_DOC)
    worker_queue_id: uuid.UUID = Field(description="Where its runs run: a queue of yours")
    execution_environment: ExecutionEnvironmentIn | None = Field(
        None, description="The runs' own environment (agent and team jobs)"
    )


class JobUpdate(PatchBody):
    """Any field but `trigger_type`, which is fixed when the job is created."""

    required_if_sent = (
        "name",
        "enabled",
        "cron_schedule",
        "entity_type",
        "entity_id",
        "prompt_template",
        "worker_queue_id",
    )

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    enabled: bool | None = None
    cron_schedule: str | None = Field(None, min_length=1, max_length=200, description=CRON_DOC)
    cron_timezone: str | None = Field(None, min_length=1, max_length=100)
    entity_type: EntityType | None = None
    entity_id: uuid.UUID | None = None
    prompt_template: str | None = Field(None, min_length=1, max_length=MAX_PROMPT)
    worker_queue_id: uuid.UUID | None = None
    execution_environment: ExecutionEnvironmentIn | None = None


class JobOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    name: str
    description: str | None
    enabled: bool
    status: Literal["active", "disabled"]
    trigger_type: TriggerType
    cron_schedule: str | None
    cron_timezone: str | None
    entity_type: EntityType
    entity_id: uuid.UUID
    entity_name: str | None
    prompt_template: str
    worker_queue_id: uuid.UUID
    execution_environment: dict[str, Any]
    webhook_url: str | None = Field(description="For a webhook job: where to POST, signed")
    temporal_schedule_id: str | None = Field(description="For a cron job: its Temporal Schedule")
    next_run_at: datetime | None = Field(description="The Schedule's next action (cron jobs)")
    last_run_at: datetime | None = Field(
        description="The later of its Schedule's last action (cron jobs) and its last execution"
    )
    total_executions: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class JobWithSecret(JobOut):
    webhook_secret: str | None = Field(
        description="For a webhook job: the HMAC-SHA256 key of its signatures; shown only now"
    )


class JobQuery(ListQuery):
    trigger_type: TriggerType | None = None
    entity_type: EntityType | None = None
    enabled: bool | None = None


class TriggerIn(BaseModel):
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="The values of the template's {{NAME}}"
    )


class JobRunOut(BaseModel):
    job_id: uuid.UUID
    execution_id: uuid.UUID
    workflow_id: str
    status: ExecutionStatus
    trigger_source: str
    prompt: str = Field(description="The prompt as rendered for this run")


class WebhookBody(BaseModel, extra="allow"):
    """Any JSON object; what its signature signs is the raw body."""


def _id(call: Call) -> uuid.UUID:
    return call.path_uuid("job_id", "Job")


def _webhook_url(call: Call, path: str | None) -> str | None:
    if path is None:
        return None
    return f"{call.state.settings.public_url.rstrip('/')}/api/v1/jobs/webhook/{path}"


async def _out(call: Call, row: asyncpg.Record) -> JobOut:
    next_run_at, last_run_at = None, row["last_execution_at"]
    if row["trigger_type"] == "cron":
        times = await schedules.times(call.state.temporal, str(row["id"]))
        if times is not None:
            next_run_at = times.next_run_at
            if times.last_run_at is not None:
                last_run_at = max(filter(None, (last_run_at, times.last_run_at)))
    return JobOut(
        **{key: row[key] for key in JobOut.model_fields if key in row},
        status="active" if row["enabled"] else "disabled",
        webhook_url=_webhook_url(call, row["webhook_path"]),
        temporal_schedule_id=f"job-{row['id']}" if row["trigger_type"] == "cron" else None,
        next_run_at=next_run_at,
        last_run_at=last_run_at,
    )


def _environment(value: ExecutionEnvironmentIn | None) -> dict[str, Any]:
    return value.model_dump(exclude_none=True) if value is not None else {}


# First: a webhook path is never read as a job id.
@router.post(
    "/api/v1/jobs/webhook/{webhook_path}", role=None, signed_body=True, responses=WEBHOOK_ERRORS
)
async def job_webhook(call: Call, body: WebhookBody) -> JobRunOut:
    """Run a webhook job: no API key, but `X-Webhook-Signature` (or GitHub's
    `X-Hub-Signature-256`) `sha256=<hex HMAC-SHA256 of the raw body>` keyed with the job's
    secret. The JSON body is `{{payload...}}` in the template. 404 for an unknown path, 401 for
    a bad or missing signature (nothing runs)."""
    job_id, run = await runs.run_webhook(
        call.db,
        launch_services(call),
        call.state.settings,
        vault_of(call),
        call.path["webhook_path"],
        await call.request.body(),
        call.request.headers,
    )
    return _run_out(job_id, run, "job_webhook")


@router.post("/api/v1/jobs", status=201, carries_secret=True, responses=TEMPORAL_ERRORS)
async def create_job(call: Call, body: JobCreate) -> JobWithSecret:
    """Create a job; a cron job's Schedule is created with it, a webhook job's secret is in the
    answer (shown only now). 422 for a bad cron expression or time zone, nothing written."""
    async with call.db.acquire() as conn, conn.transaction():
        row, secret = await definitions.create(
            conn,
            call.state.temporal,
            vault_of(call) if body.trigger_type == "webhook" else None,
            call.state.settings.system_task_queue,
            call.caller,
            JobFields(
                name=body.name,
                description=body.description,
                enabled=body.enabled,
                trigger_type=body.trigger_type,
                cron_schedule=body.cron_schedule,
                cron_timezone=body.cron_timezone,
                entity_type=body.entity_type,
                entity_id=body.entity_id,
                prompt_template=body.prompt_template,
                worker_queue_id=body.worker_queue_id,
                execution_environment=_environment(body.execution_environment),
            ),
        )
        # Before the commit: a 503 here leaves no job (its Schedule, if created, removes
        # itself at its first run: controlplane/jobs/runs.py).
        out = await _out(call, row)
    return JobWithSecret(**out.model_dump(), webhook_secret=secret)


@router.get("/api/v1/jobs", responses=TEMPORAL_ERRORS)
async def list_jobs(call: Call, query: JobQuery) -> Page[JobOut]:
    """The organization's jobs, oldest first (a cron job's times come from its Schedule)."""
    rows, total = await JOBS.page(
        call.db,
        call.org,
        limit=query.limit,
        offset=query.start,
        filters={
            "j.trigger_type": query.trigger_type,
            "j.entity_type": query.entity_type,
            "j.enabled": query.enabled,
        },
    )
    items = list(await asyncio.gather(*(_out(call, row) for row in rows)))
    return Page[JobOut](items=items, total=total, limit=query.limit, offset=query.start)


@router.get("/api/v1/jobs/{job_id}", responses=TEMPORAL_ERRORS)
async def get_job(call: Call) -> JobOut:
    """One job (never its secret), with next_run_at from its Schedule."""
    return await _out(call, await JOBS.get(call.db, call.org, _id(call)))


@router.patch("/api/v1/jobs/{job_id}", responses=TEMPORAL_ERRORS)
async def update_job(call: Call, body: JobUpdate) -> JobOut:
    """Change the fields sent, checked like at creation; a cron job's Schedule follows."""
    changes = body.changes()
    if "execution_environment" in changes:
        changes["execution_environment"] = _environment(body.execution_environment)
    async with call.db.acquire() as conn, conn.transaction():
        row = await definitions.update(
            conn,
            call.state.temporal,
            call.state.settings.system_task_queue,
            call.caller,
            _id(call),
            changes,
        )
    # After the commit: row and Schedule agree; a retry of this PATCH changes nothing more.
    return await _out(call, row)


@router.delete("/api/v1/jobs/{job_id}", responses=TEMPORAL_ERRORS)
async def delete_job(call: Call) -> Deleted:
    """Delete the job and its Schedule; its executions stay listed, without it."""
    job_id = _id(call)
    async with call.db.acquire() as conn, conn.transaction():
        await definitions.delete(conn, call.state.temporal, call.org, job_id)
    return Deleted(id=job_id)


async def _set_enabled(call: Call, enabled: bool) -> JobOut:
    async with call.db.acquire() as conn, conn.transaction():
        row = await definitions.set_enabled(conn, call.state.temporal, call.org, _id(call), enabled)
    return await _out(call, row)


@router.post("/api/v1/jobs/{job_id}/enable", responses=TEMPORAL_ERRORS)
async def enable_job(call: Call) -> JobOut:
    """Enable the job (a cron job's Schedule resumes)."""
    return await _set_enabled(call, True)


@router.post("/api/v1/jobs/{job_id}/disable", responses=TEMPORAL_ERRORS)
async def disable_job(call: Call) -> JobOut:
    """Disable the job (a cron job's Schedule pauses; triggers are refused)."""
    return await _set_enabled(call, False)


def _run_out(job_id: uuid.UUID, run: runs.JobRun, source: str) -> JobRunOut:
    return JobRunOut(
        job_id=job_id,
        execution_id=run.execution_id,
        workflow_id=run.workflow_id,
        status="pending",
        trigger_source=source,
        prompt=run.prompt,
    )


@router.post("/api/v1/jobs/{job_id}/trigger", responses=TEMPORAL_ERRORS)
async def trigger_job(call: Call, body: TriggerIn) -> JobRunOut:
    """Run the job now (400 while it is disabled); `parameters` fill the prompt template."""
    job_id = _id(call)
    run = await runs.run_job(
        call.db,
        launch_services(call),
        call.state.settings,
        call.org,
        job_id,
        Trigger(source="job_manual", parameters=body.parameters, triggered_by=call.principal.actor),
    )
    return _run_out(job_id, run, "job_manual")


@router.get("/api/v1/jobs/{job_id}/executions")
async def list_job_executions(call: Call, query: ListQuery) -> Page[ExecutionOut]:
    """The job's runs, newest first: ordinary executions with `trigger_source` and `job_id`."""
    job_id = _id(call)
    await JOBS.get(call.db, call.org, job_id)
    rows, total = await fetch_page(
        call.db,
        table="executions",
        columns=EXECUTION_COLUMNS,
        where="organization_id = $1 AND job_id = $2",
        args=[call.org, job_id],
        query=query,
        order="created_at DESC, id DESC",
    )
    items = [ExecutionOut(**dict(row)) for row in rows]
    return Page[ExecutionOut](items=items, total=total, limit=query.limit, offset=query.start)
