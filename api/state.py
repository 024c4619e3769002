"""What one API process holds for its lifetime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from api.metrics import Metrics
from controlplane.executions.events import EventHub
from controlplane.settings import Settings
from controlplane.temporal import TemporalGateway
from controlplane.temporal_auth import SigningKey


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    temporal: TemporalGateway
    events: EventHub
    pool_or_none: asyncpg.Pool[Any] | None = None
    signing_key: SigningKey | None = None

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        if self.pool_or_none is None:
            raise RuntimeError("database pool used before start-up")
        return self.pool_or_none
