"""Who is calling: the organization, the credential and what each route lets it do.

Three kinds of credential reach the API:
- API keys of people and tools, role `viewer` < `member` < `admin`;
- worker keys (an API key of role `worker`, scoped to one worker queue): they may only start a
  worker on that queue;
- worker tokens (`worker_...`, minted when a worker starts): they may only speak the worker
  protocol, for executions on their own queue.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

# A principal's role: an API key's, or `worker_token` for a running worker.
Role = Literal["viewer", "member", "admin", "worker", "worker_token"]
# What a route asks for: the least human role, or one of the worker-facing levels.
Access = Literal["viewer", "member", "admin", "worker_token", "admin_or_worker_token", "starter"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "member": 1, "admin": 2}
ACCESS_DESCRIPTION: dict[str, str] = {
    "viewer": "a viewer, member or admin key",
    "member": "a member or admin key",
    "admin": "an admin key",
    "worker_token": "a worker token (the worker protocol)",
    "admin_or_worker_token": "an admin key or a worker token",
    "starter": "an admin key or a worker key of this queue",
}


@dataclass(frozen=True)
class Principal:
    organization_id: str
    role: Role
    api_key_id: uuid.UUID | None = None
    worker_id: uuid.UUID | None = None
    # The queue a worker key or worker token is bound to.
    worker_queue_id: uuid.UUID | None = None

    def allows(self, needed: Access) -> bool:
        if needed == "worker_token":
            return self.role == "worker_token"
        if needed == "admin_or_worker_token":
            return self.role in ("admin", "worker_token")
        if needed == "starter":
            return self.role in ("admin", "worker")
        rank = ROLE_RANK.get(self.role)
        return rank is not None and rank >= ROLE_RANK[needed]

    @property
    def is_worker_token(self) -> bool:
        return self.role == "worker_token"

    @property
    def actor(self) -> str:
        """What `created_by` columns record: the key or worker that acted."""
        if self.worker_id is not None:
            return f"worker:{self.worker_id}"
        return f"api_key:{self.api_key_id}" if self.api_key_id else "system"
