"""`/api/v1/runners` (reference §3.7): the infrastructure workers run on, named by
`controlplane worker --runner-name` (default: the host name), with their live workers, the
queues those serve and the last heartbeat; `/runners/{runner_name}/health` judges a runner by
its workers' heartbeats (controlplane/runners.py). Kubiya proxies these to its platform; here
they come from the workers' own reports."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from api.pagination import ListQuery, Page
from api.routing import Call, Router
from controlplane import runners
from controlplane.runners import Health, Runner

router = Router("runners")


class RunnerWorker(BaseModel):
    worker_id: uuid.UUID
    worker_queue_id: uuid.UUID
    queue_name: str
    environment_name: str
    status: str
    hostname: str | None
    last_heartbeat: datetime
    registered_at: datetime
    late: bool = Field(description="Missed its queue's heartbeat interval (still live)")


class RunnerQueue(BaseModel):
    id: uuid.UUID
    name: str
    environment_name: str
    live_workers: int


class RunnerOut(BaseModel):
    name: str
    status: Health
    reasons: list[str]
    live_workers: int
    late_workers: int
    lost_workers: int = Field(
        description="Workers that stopped heartbeating without disconnecting, lately"
    )
    last_heartbeat: datetime
    workers: list[RunnerWorker] = Field(description="Its live workers")
    queues: list[RunnerQueue] = Field(description="The queues its live workers serve")
    system_info: dict[str, Any] = Field(description="As its latest worker reported it")

    @classmethod
    def of(cls, runner: Runner) -> RunnerOut:
        return cls(
            name=runner.name,
            status=runner.status,
            reasons=runner.reasons,
            live_workers=runner.live_workers,
            late_workers=runner.late_workers,
            lost_workers=runner.lost_workers,
            last_heartbeat=runner.last_heartbeat,
            workers=[RunnerWorker.model_validate(worker) for worker in runner.workers],
            queues=[RunnerQueue.model_validate(vars(queue)) for queue in runner.queues],
            system_info=runner.system_info,
        )


class RunnerHealth(BaseModel):
    runner_name: str
    status: Health
    reasons: list[str]
    live_workers: int
    late_workers: int
    lost_workers: int
    last_heartbeat: datetime
    seconds_since_heartbeat: float
    checked_at: datetime


@router.get("/api/v1/runners")
async def list_runners(call: Call, query: ListQuery) -> Page[RunnerOut]:
    """Runners with a worker that heartbeated in the last 24 h, by name."""
    items, total = await runners.page(call.db, call.org, limit=query.limit, offset=query.start)
    return Page[RunnerOut](
        items=[RunnerOut.of(runner) for runner in items],
        total=total,
        limit=query.limit,
        offset=query.start,
    )


@router.get("/api/v1/runners/{runner_name}/health")
async def runner_health(call: Call) -> RunnerHealth:
    """healthy, degraded or down, from the heartbeats of the runner's workers."""
    runner = await runners.get(call.db, call.org, call.path["runner_name"])
    return RunnerHealth(
        runner_name=runner.name,
        status=runner.status,
        reasons=runner.reasons,
        live_workers=runner.live_workers,
        late_workers=runner.late_workers,
        lost_workers=runner.lost_workers,
        last_heartbeat=runner.last_heartbeat,
        seconds_since_heartbeat=round(
            (runner.checked_at - runner.last_heartbeat).total_seconds(), 3
        ),
        checked_at=runner.checked_at,
    )
