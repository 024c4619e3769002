"""The system worker's activities: each calls a use case of the domain. They run in the control
plane (database access, the vault key), never on a customer's worker."""

from __future__ import annotations

from typing import Any

import asyncpg
from temporalio import activity

from controlplane.executions.reconcile import reconcile_executions
from controlplane.housekeeping import prune
from controlplane.temporal import TemporalGateway
from workflows.contracts import PRUNE_COUNTERS, RECONCILE_EXECUTIONS


class SystemActivities:
    def __init__(self, db: asyncpg.Pool[Any], temporal: TemporalGateway) -> None:
        self.db = db
        self.temporal = temporal

    @activity.defn(name=PRUNE_COUNTERS)
    async def prune_counters(self) -> int:
        return await prune(self.db)

    @activity.defn(name=RECONCILE_EXECUTIONS)
    async def reconcile_executions(self) -> int:
        return await reconcile_executions(self.db, self.temporal)
