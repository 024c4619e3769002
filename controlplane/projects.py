"""Projects as the domain knows them: the settings every project carries, and the
organization's Default project, which new agents and teams join."""

from __future__ import annotations

import uuid
from typing import Any

from controlplane.db import Queryable

DEFAULT_SETTINGS: dict[str, Any] = {
    "goals": None,
    "policy_ids": [],
    "default_model": None,
    "restrict_to_environment": False,
}


async def default_project_id(db: Queryable, org: str) -> uuid.UUID:
    """The organization's "Default" project (key DEFAULT), created on first use.

    A project already keyed DEFAULT, or else one named "Default", is the default one: creating
    another would collide with it."""
    find = (
        "SELECT id FROM projects WHERE organization_id = $1 "
        "AND (key = 'DEFAULT' OR name = 'Default') ORDER BY key = 'DEFAULT' DESC LIMIT 1"
    )
    found: uuid.UUID | None = await db.fetchval(find, org)
    if found is None:
        # A concurrent first call may win the insert; the second lookup then finds its row.
        await db.execute(
            "INSERT INTO projects (id, organization_id, name, key, settings, visibility) "
            "VALUES ($1, $2, 'Default', 'DEFAULT', $3, 'org') ON CONFLICT DO NOTHING",
            uuid.uuid4(),
            org,
            DEFAULT_SETTINGS,
        )
        found = await db.fetchval(find, org)
    assert found is not None
    return found
