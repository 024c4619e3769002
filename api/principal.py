"""Who is calling: the organization, the key and the role every route checks."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

# "worker" is the role of a worker token: it may use the worker protocol routes and nothing
# else. Keys of member rank and above may use those routes too (a worker starts with a key).
Role = Literal["viewer", "member", "admin", "worker"]
KeyRole = Literal["viewer", "member", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "member": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    organization_id: str
    role: Role
    api_key_id: uuid.UUID | None = None
    worker_id: uuid.UUID | None = None

    def allows(self, needed: Role) -> bool:
        if self.role == "worker":
            return needed == "worker"
        if needed == "worker":
            return ROLE_RANK[self.role] >= ROLE_RANK["member"]
        return ROLE_RANK[self.role] >= ROLE_RANK[needed]

    @property
    def actor(self) -> str:
        """What `created_by` columns record: the key or worker that acted."""
        if self.worker_id is not None:
            return f"worker:{self.worker_id}"
        return f"api_key:{self.api_key_id}" if self.api_key_id else "system"
