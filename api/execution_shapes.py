"""The shape of an execution, shared by the executions and jobs routes (a job's runs are
ordinary executions)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field

from api.routing import Call

ExecutionStatus = Literal[
    "pending",
    "queued",
    "running",
    "waiting_for_input",
    "paused",
    "completed",
    "failed",
    "cancelled",
]


class Participant(BaseModel):
    id: uuid.UUID
    user_id: str
    user_name: str | None
    user_email: str | None
    user_avatar: str | None
    role: str
    joined_at: datetime
    last_active_at: datetime


class ExecutionOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    execution_type: str
    entity_id: uuid.UUID | None
    entity_name: str | None
    prompt: str
    system_prompt: str | None
    status: ExecutionStatus
    response: str | None
    error_message: str | None
    usage: dict[str, Any]
    execution_metadata: dict[str, Any]
    runner_name: str | None
    user_id: str | None
    user_name: str | None
    user_email: str | None
    user_avatar: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    last_message_at: datetime | None
    last_message_preview: str | None
    temporal_workflow_id: str | None
    worker_queue_id: uuid.UUID | None
    parent_execution_id: uuid.UUID | None = Field(
        None, description="For a team member's run: the team execution that delegated it"
    )
    trigger_source: str = Field(
        description="user | api | system | job_cron | job_webhook | job_manual"
    )
    job_id: uuid.UUID | None = Field(None, description="The job it ran for, if any")
    participants: list[Participant] = Field(default_factory=list)


async def execution_out(call: Call, row: asyncpg.Record) -> ExecutionOut:
    participants = await call.db.fetch(
        "SELECT id, user_id, user_name, user_email, user_avatar, role, joined_at, last_active_at "
        "FROM execution_participants WHERE execution_id = $1 ORDER BY joined_at",
        row["id"],
    )
    return ExecutionOut(
        **dict(row), participants=[Participant.model_validate(dict(p)) for p in participants]
    )
