"""What one API process holds for its lifetime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from api.credentials import CredentialCache
from api.metrics import Metrics
from api.rate_limits import RateLimiter
from controlplane.executions.events import EventHub
from controlplane.executions.starting import BackgroundStarts
from controlplane.settings import Settings
from controlplane.temporal import TemporalGateway
from controlplane.temporal_auth import SigningKey


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    temporal: TemporalGateway
    events: EventHub
    credentials: CredentialCache
    pool_or_none: asyncpg.Pool[Any] | None = None
    signing_key: SigningKey | None = None
    rate_limiter: RateLimiter = field(init=False)
    # The workflow starts made after an execute's answer.
    starts: BackgroundStarts = field(init=False)

    def __post_init__(self) -> None:
        self.rate_limiter = RateLimiter(lambda: self.pool)
        self.starts = BackgroundStarts(lambda: self.pool, self.temporal)

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        if self.pool_or_none is None:
            raise RuntimeError("database pool used before start-up")
        return self.pool_or_none
