"""Runners: the infrastructure workers run on, named by `controlplane worker --runner-name`
(by default the host name). A runner is what its workers' heartbeats say it is:

- healthy: it has live workers (a heartbeat under 150 s old) and every one is on time;
- degraded: it has live workers, but one is late (no heartbeat for more than its queue's
  interval plus a grace) or one stopped heartbeating without disconnecting in the last
  RECENTLY_LOST (a crash, a cut-off network);
- down: no live worker.

A runner is listed while one of its workers heartbeated within RUNNER_MEMORY. Not to be confused
with the reference's `GET /workers/{runner_name}` (api/routes/workers.py), where a "runner" is a
worker queue, as in Kubiya 0.3's task queues `{org}.{runner}`; that route keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg

from controlplane.crud import fetch_page
from controlplane.db import Queryable
from controlplane.errors import not_found
from controlplane.queues import NAME_PATTERN, STALE_WORKER_SECONDS

Health = Literal["healthy", "degraded", "down"]
RUNNER_NAME_PATTERN = NAME_PATTERN
MAX_RUNNER_NAME = 255
RUNNER_MEMORY = "24 hours"
RECENTLY_LOST = "15 minutes"
LATE_GRACE_SECONDS = 30

_LIVE = (
    "(w.status IN ('active', 'idle', 'busy') "
    f"AND w.last_heartbeat > now() - interval '{STALE_WORKER_SECONDS} seconds')"
)
_LATE = (
    f"({_LIVE} AND w.last_heartbeat < now() - make_interval(secs => q.heartbeat_interval + "
    f"{LATE_GRACE_SECONDS}))"
)
_LOST = (
    "(w.status IN ('active', 'idle', 'busy', 'offline') "
    f"AND w.last_heartbeat <= now() - interval '{STALE_WORKER_SECONDS} seconds' "
    f"AND w.last_heartbeat > now() - interval '{RECENTLY_LOST}')"
)
_WORKER = (
    "jsonb_build_object('worker_id', w.id, 'worker_queue_id', w.worker_queue_id, "
    "'queue_name', q.name, 'environment_name', e.name, 'status', w.status, "
    "'hostname', w.hostname, 'last_heartbeat', w.last_heartbeat, "
    "'registered_at', w.registered_at, 'late', " + _LATE + ")"
)
# One row per (organization, runner); the organization filter outside is pushed into it.
RUNNERS_TABLE = (
    "(SELECT w.organization_id, w.runner_name AS name, max(w.last_heartbeat) AS last_heartbeat, "
    f"count(*) FILTER (WHERE {_LIVE}) AS live_workers, "
    f"count(*) FILTER (WHERE {_LATE}) AS late_workers, "
    f"count(*) FILTER (WHERE {_LOST}) AS lost_workers, "
    f"coalesce(jsonb_agg({_WORKER} ORDER BY w.registered_at DESC, w.id) FILTER (WHERE {_LIVE}), "
    "'[]'::jsonb) AS workers, "
    "(array_agg(w.system_info ORDER BY w.last_heartbeat DESC))[1] AS system_info "
    "FROM workers w JOIN worker_queues q ON q.id = w.worker_queue_id "
    "JOIN environments e ON e.id = q.environment_id "
    f"WHERE w.last_heartbeat > now() - interval '{RUNNER_MEMORY}' "
    "GROUP BY w.organization_id, w.runner_name) runners"
)
COLUMNS = (
    "name, last_heartbeat, live_workers, late_workers, lost_workers, workers, system_info, "
    "now() AS checked_at"
)


@dataclass
class RunnerQueue:
    id: str
    name: str
    environment_name: str
    live_workers: int


@dataclass
class Runner:
    name: str
    status: Health
    reasons: list[str]
    live_workers: int
    late_workers: int
    lost_workers: int
    last_heartbeat: datetime
    checked_at: datetime
    workers: list[dict[str, Any]] = field(default_factory=list)
    queues: list[RunnerQueue] = field(default_factory=list)
    system_info: dict[str, Any] = field(default_factory=dict)


def _runner(row: asyncpg.Record) -> Runner:
    live, late, lost = row["live_workers"], row["late_workers"], row["lost_workers"]
    reasons = []
    status: Health
    if live == 0:
        status = "down"
        reasons.append(f"no worker has heartbeated in the last {STALE_WORKER_SECONDS} s")
    else:
        if late:
            reasons.append(f"{late} live worker(s) missed their heartbeat interval")
        if lost:
            reasons.append(
                f"{lost} worker(s) stopped heartbeating without disconnecting in the last "
                f"{RECENTLY_LOST}"
            )
        status = "degraded" if reasons else "healthy"
    queues: dict[str, RunnerQueue] = {}
    for worker in row["workers"]:
        queue = queues.setdefault(
            worker["worker_queue_id"],
            RunnerQueue(
                worker["worker_queue_id"], worker["queue_name"], worker["environment_name"], 0
            ),
        )
        queue.live_workers += 1
    return Runner(
        name=row["name"],
        status=status,
        reasons=reasons,
        live_workers=live,
        late_workers=late,
        lost_workers=lost,
        last_heartbeat=row["last_heartbeat"],
        checked_at=row["checked_at"],
        workers=list(row["workers"]),
        queues=list(queues.values()),
        system_info=row["system_info"] or {},
    )


async def page(
    db: asyncpg.Pool[Any], org: str, *, limit: int, offset: int
) -> tuple[list[Runner], int]:
    """The organization's runners by name."""
    rows, total = await fetch_page(
        db,
        table=RUNNERS_TABLE,
        columns=COLUMNS,
        where="organization_id = $1",
        args=[org],
        limit=limit,
        offset=offset,
        order="name",
    )
    return [_runner(row) for row in rows], total


async def get(db: Queryable, org: str, name: str) -> Runner:
    """One runner, or not found (a name no worker used lately, or another organization's)."""
    row = await db.fetchrow(
        f"SELECT {COLUMNS} FROM {RUNNERS_TABLE} WHERE organization_id = $1 AND name = $2",
        org,
        name,
    )
    if row is None:
        raise not_found("Runner", name)
    return _runner(row)
