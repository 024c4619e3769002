"""The shapes of worker queues and their worker commands, shared by the queue, environment and
worker routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field

from api.routing import Call
from controlplane.queues import queue_row
from controlplane.tenancy import NewKey

QueueStatus = Literal["active", "inactive", "maintenance"]


class WorkerQueueOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    environment_id: uuid.UUID
    name: str
    display_name: str | None
    description: str | None
    status: QueueStatus
    max_workers: int | None
    heartbeat_interval: int
    tags: list[str]
    settings: dict[str, Any]
    ephemeral: bool
    created_at: datetime
    updated_at: datetime
    created_by: str | None
    active_workers: int
    task_queue_name: str

    @staticmethod
    def fields(row: asyncpg.Record) -> dict[str, Any]:
        data = dict(row)
        data["task_queue_name"] = str(row["id"])
        return data

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> WorkerQueueOut:
        return cls.model_validate(cls.fields(row))


class WorkerCommand(BaseModel):
    queue_id: uuid.UUID
    command: str
    command_parts: dict[str, Any]
    can_register: bool
    queue_status: QueueStatus
    active_workers: int
    max_workers: int | None
    worker_key: str | None = Field(
        description="A new worker key for this queue, shown once: save it in the file the "
        "command names (mode 0600); it can start workers on this queue and nothing else. "
        "Only `GET /worker-queues/{id}/worker-command` mints one."
    )
    worker_key_id: uuid.UUID | None


WORKER_KEY_FILE = "worker.key"


def worker_command_for(
    queue: WorkerQueueOut, control_plane_url: str, key: NewKey | None
) -> WorkerCommand:
    room = queue.max_workers is None or queue.active_workers < queue.max_workers
    flags = {"--queue-id": str(queue.id), "--api-key-file": WORKER_KEY_FILE}
    return WorkerCommand(
        queue_id=queue.id,
        command=f"CONTROLPLANE_URL={control_plane_url} controlplane worker "
        + " ".join(f"{flag} {value}" for flag, value in flags.items()),
        command_parts={
            "binary": "controlplane",
            "subcommand": "worker",
            "flags": flags,
            "env": {"CONTROLPLANE_URL": control_plane_url},
            "files": {WORKER_KEY_FILE: "worker_key"},
        },
        can_register=queue.status == "active" and room,
        queue_status=queue.status,
        active_workers=queue.active_workers,
        max_workers=queue.max_workers,
        worker_key=key.key if key else None,
        worker_key_id=key.id if key else None,
    )


async def get_queue(call: Call, queue_id: uuid.UUID) -> WorkerQueueOut:
    return WorkerQueueOut.from_row(await queue_row(call.db, call.org, queue_id))
