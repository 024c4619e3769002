"""Who is calling: the organization, the key and the role every route checks."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

Role = Literal["viewer", "member", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "member": 1, "admin": 2}


@dataclass(frozen=True)
class Principal:
    organization_id: str
    role: Role
    api_key_id: uuid.UUID | None = None

    def allows(self, needed: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[needed]

    @property
    def actor(self) -> str:
        """What `created_by` columns record: the key that acted."""
        return f"api_key:{self.api_key_id}" if self.api_key_id else "system"
