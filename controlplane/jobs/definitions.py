"""A job's row and its Schedule, kept consistent: every write of a cron job's row happens in a
transaction that also writes its Temporal Schedule, and a refusal from Temporal (or Temporal
being down) rolls the row back, so neither exists without the other.

Checked before anything is written: the cron expression and time zone (422), the entity (an
agent, team or workflow of the organization: 404 otherwise, like any id that is not yours) and
the worker queue (the same), and the run's execution_environment (only an admin may give runs
credentials). Runs act as the job (`job:{id}`), with the role of the key that last wrote it:
whoever triggers it later chooses when, never what it may do.

A webhook job gets an unguessable path and an HMAC secret, sealed by the vault and shown once.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from controlplane.crud import Table
from controlplane.db import Conn, Queryable, conflict_on_duplicate
from controlplane.errors import Invalid, Unavailable, not_found
from controlplane.executions.launch import Caller, check_override
from controlplane.jobs import schedules
from controlplane.jobs.cron import check_cron, check_timezone, invalid
from controlplane.jobs.schedules import ScheduleSpecOfJob
from controlplane.temporal import TemporalGateway
from controlplane.vault import Vault

ENTITY_TABLES = {
    "agent": ("agents", "Agent"),
    "team": ("teams", "Team"),
    "workflow": ("workflows", "Workflow"),
}
COLUMNS = (
    "j.id, j.organization_id, j.name, j.description, j.enabled, j.trigger_type, "
    "j.cron_schedule, j.cron_timezone, j.entity_type, j.entity_id, j.entity_name, "
    "j.prompt_template, j.worker_queue_id, j.execution_environment, j.webhook_path, "
    "j.run_as_role, j.created_by, j.created_at, j.updated_at, "
    "(SELECT count(*) FROM executions e WHERE e.job_id = j.id) AS total_executions, "
    "(SELECT max(e.created_at) FROM executions e WHERE e.job_id = j.id) AS last_execution_at"
)
JOBS = Table("jobs j", "Job", COLUMNS, order="j.created_at, j.id")
PATCHABLE = (
    "name",
    "description",
    "enabled",
    "cron_schedule",
    "cron_timezone",
    "entity_type",
    "entity_id",
    "entity_name",
    "prompt_template",
    "worker_queue_id",
    "execution_environment",
    "run_as_role",
)
SECRET_PREFIX = "jhs_"
PATH_BYTES = 24


def duplicate_name(name: str) -> str:
    return f"A job named '{name}' already exists in your organization"


def secret_name(job_id: uuid.UUID) -> str:
    # The vault binds a ciphertext to (organization, name): this one to its own job.
    return f"job-webhook:{job_id}"


@dataclass
class JobFields:
    """What a job is made of, as a create sends it (already shaped by the route's model)."""

    name: str
    description: str | None
    enabled: bool
    trigger_type: str  # cron | webhook | manual
    cron_schedule: str | None
    cron_timezone: str | None
    entity_type: str  # agent | team | workflow
    entity_id: uuid.UUID
    prompt_template: str
    worker_queue_id: uuid.UUID
    execution_environment: dict[str, Any]


async def entity_name(db: Queryable, org: str, entity_type: str, entity_id: uuid.UUID) -> str:
    """The entity's name; 404 unless it is the organization's."""
    table, kind = ENTITY_TABLES[entity_type]
    name: str | None = await db.fetchval(
        f"SELECT name FROM {table} WHERE id = $1 AND organization_id = $2", entity_id, org
    )
    if name is None:
        raise not_found(kind, entity_id)
    return name


async def check_queue(db: Queryable, org: str, queue_id: uuid.UUID) -> None:
    found = await db.fetchval(
        "SELECT 1 FROM worker_queues WHERE id = $1 AND organization_id = $2", queue_id, org
    )
    if found is None:
        raise not_found("Worker queue", queue_id)


def check_schedule_fields(
    trigger_type: str, cron_schedule: str | None, cron_timezone: str | None
) -> tuple[str | None, str | None]:
    """The schedule's fields as stored: a cron job needs an expression; others take none."""
    if trigger_type != "cron":
        if cron_schedule is not None or cron_timezone is not None:
            raise invalid(
                "cron_schedule",
                f"A {trigger_type} job has no schedule: cron_schedule and cron_timezone are for "
                "trigger_type cron",
            )
        return None, None
    if cron_schedule is None:
        raise invalid("cron_schedule", "A cron job needs a cron_schedule")
    return check_cron(cron_schedule), check_timezone(cron_timezone or "UTC")


def check_environment(caller: Caller, entity_type: str, environment: dict[str, Any]) -> None:
    if entity_type == "workflow" and environment:
        raise Invalid(
            "A workflow job's steps run with their own agents' and teams' environments: "
            "execution_environment is for agent and team jobs"
        )
    check_override(caller, environment)


def spec_of(row: asyncpg.Record) -> ScheduleSpecOfJob:
    return ScheduleSpecOfJob(
        job_id=str(row["id"]),
        organization_id=row["organization_id"],
        cron_schedule=row["cron_schedule"],
        cron_timezone=row["cron_timezone"],
        enabled=row["enabled"],
    )


async def create(
    conn: Conn,
    temporal: TemporalGateway,
    vault: Vault | None,
    task_queue: str,
    caller: Caller,
    fields: JobFields,
) -> tuple[asyncpg.Record, str | None]:
    """A new job (and its Schedule, for a cron job) and, for a webhook job, its secret (the
    only time it is shown). Run it in a transaction: Temporal refusing (or down) rolls the row
    back."""
    org = caller.organization_id
    cron, timezone = check_schedule_fields(
        fields.trigger_type, fields.cron_schedule, fields.cron_timezone
    )
    name_of_entity = await entity_name(conn, org, fields.entity_type, fields.entity_id)
    await check_queue(conn, org, fields.worker_queue_id)
    check_environment(caller, fields.entity_type, fields.execution_environment)
    job_id = uuid.uuid4()
    secret = path = None
    sealed = None
    if fields.trigger_type == "webhook":
        if vault is None:
            raise Unavailable("A webhook job's secret needs the vault, which is not configured")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        path = secrets.token_urlsafe(PATH_BYTES)
        sealed = vault.seal(org, secret_name(job_id), secret)
    with conflict_on_duplicate(duplicate_name(fields.name)):
        await conn.execute(
            "INSERT INTO jobs (id, organization_id, name, description, enabled, trigger_type, "
            "cron_schedule, cron_timezone, entity_type, entity_id, entity_name, "
            "prompt_template, worker_queue_id, execution_environment, webhook_path, "
            "webhook_secret_ciphertext, webhook_secret_nonce, webhook_secret_key_version, "
            "run_as_role, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, "
            "$12, $13, $14, $15, $16, $17, $18, $19, $20)",
            job_id,
            org,
            fields.name,
            fields.description,
            fields.enabled,
            fields.trigger_type,
            cron,
            timezone,
            fields.entity_type,
            fields.entity_id,
            name_of_entity,
            fields.prompt_template,
            fields.worker_queue_id,
            fields.execution_environment,
            path,
            sealed.ciphertext if sealed else None,
            sealed.nonce if sealed else None,
            sealed.key_version if sealed else None,
            caller.role,
            caller.actor,
        )
    row = await JOBS.get(conn, org, job_id)
    if fields.trigger_type == "cron":
        # Last, in the transaction: Temporal refusing (or down) rolls the row back.
        await schedules.create(temporal, task_queue, spec_of(row))
    return row, secret


async def update(
    conn: Conn,
    temporal: TemporalGateway,
    task_queue: str,
    caller: Caller,
    job_id: uuid.UUID,
    changes: dict[str, Any],
) -> asyncpg.Record:
    """Apply a PATCH in the caller's transaction; a cron job's Schedule follows (and a refusal
    from Temporal rolls the change back with the transaction)."""
    org = caller.organization_id
    changes = dict(changes)

    async def check(current: asyncpg.Record, wanted: dict[str, Any]) -> None:
        merged = {**dict(current), **wanted}
        cron, timezone = check_schedule_fields(
            current["trigger_type"], merged["cron_schedule"], merged["cron_timezone"]
        )
        if current["trigger_type"] == "cron":
            wanted.update(cron_schedule=cron, cron_timezone=timezone)
        if "entity_type" in wanted or "entity_id" in wanted:
            wanted["entity_name"] = await entity_name(
                conn, org, merged["entity_type"], merged["entity_id"]
            )
        if "worker_queue_id" in wanted:
            await check_queue(conn, org, merged["worker_queue_id"])
        check_environment(caller, merged["entity_type"], merged["execution_environment"] or {})
        wanted["run_as_role"] = caller.role

    row = await JOBS.patch(
        conn,
        org,
        job_id,
        changes,
        PATCHABLE,
        duplicate=duplicate_name(changes.get("name", "")),
        check=check,
    )
    if row["trigger_type"] == "cron":
        await schedules.update(temporal, task_queue, spec_of(row))
    return row


async def set_enabled(
    conn: Conn, temporal: TemporalGateway, org: str, job_id: uuid.UUID, enabled: bool
) -> asyncpg.Record:
    """Enable or disable (in the caller's transaction); a cron job's Schedule is unpaused or
    paused with it."""
    row = await JOBS.patch(
        conn, org, job_id, {"enabled": enabled}, ("enabled",), duplicate="Duplicate job"
    )
    if row["trigger_type"] == "cron":
        await schedules.set_paused(temporal, str(job_id), paused=not enabled)
    return row


async def delete(conn: Conn, temporal: TemporalGateway, org: str, job_id: uuid.UUID) -> None:
    """Delete the job and its Schedule (in the caller's transaction: Temporal down keeps both);
    its executions stay, without it."""
    trigger_type = await conn.fetchval(
        "DELETE FROM jobs WHERE id = $1 AND organization_id = $2 RETURNING trigger_type",
        job_id,
        org,
    )
    if trigger_type is None:
        raise not_found("Job", job_id)
    if trigger_type == "cron":
        await schedules.delete(temporal, str(job_id))
