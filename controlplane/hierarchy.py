"""Where an agent or a team sits in its organization, read by everything that inherits along
it: context, skills, execution environments and policies. The rows come from one statement
(controlplane/snapshot.py); the functions here only arrange them.

One precedence, outermost first; a later layer wins where values clash, lists are unioned in
this order:

    organization → projects → environments → team environments → team → agent (→ the run)

- projects: the agent's (`project_agents`) or the team's (`project_teams`), oldest first;
- environments: the entity's own `environment_ids`, in their order, those that still exist;
- team environments: the agent's team's environments not already among its own;
- team: the agent's team (a team is its own last layer);
- agent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EnvironmentLayer:
    id: uuid.UUID
    name: str
    execution_environment: dict[str, Any]


@dataclass
class Hierarchy:
    organization_id: str
    project_ids: list[uuid.UUID] = field(default_factory=list)
    environments: list[EnvironmentLayer] = field(default_factory=list)
    team_environments: list[EnvironmentLayer] = field(default_factory=list)
    team: dict[str, Any] | None = None
    agent: dict[str, Any] | None = None

    @property
    def environment_ids(self) -> list[uuid.UUID]:
        return [environment.id for environment in self.environments]

    @property
    def team_environment_ids(self) -> list[uuid.UUID]:
        return [environment.id for environment in self.team_environments]

    @property
    def all_environment_ids(self) -> list[uuid.UUID]:
        return self.environment_ids + self.team_environment_ids

    @property
    def team_id(self) -> uuid.UUID | None:
        return uuid.UUID(str(self.team["id"])) if self.team is not None else None

    @property
    def agent_id(self) -> uuid.UUID | None:
        return uuid.UUID(str(self.agent["id"])) if self.agent is not None else None


def uuids(values: Any) -> list[uuid.UUID]:
    """The uuids among `values` (a JSON list of ids), once each, in order."""
    out: list[uuid.UUID] = []
    for value in values if isinstance(values, list) else []:
        try:
            out.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    return list(dict.fromkeys(out))


def chain_environments(
    ids: Any, found: Mapping[uuid.UUID, EnvironmentLayer], exclude: Iterable[uuid.UUID] = ()
) -> list[EnvironmentLayer]:
    """The environments among `ids` (a JSON list) that exist (`found`), in the list's order,
    once each, leaving out `exclude`."""
    skip = set(exclude)
    return [found[ident] for ident in uuids(ids) if ident in found and ident not in skip]


def agent_chain(
    org: str,
    agent: dict[str, Any],
    team: dict[str, Any] | None,
    environments: Mapping[uuid.UUID, EnvironmentLayer],
    project_ids: list[uuid.UUID],
) -> Hierarchy:
    """An agent's hierarchy from its row, its team's row and the environments that exist."""
    own = chain_environments(agent.get("environment_ids"), environments)
    team_environments = []
    if team is not None:
        team_environments = chain_environments(
            team.get("environment_ids"), environments, exclude=(e.id for e in own)
        )
    return Hierarchy(
        organization_id=org,
        project_ids=project_ids,
        environments=own,
        team_environments=team_environments,
        team=team,
        agent=agent,
    )


def team_chain(
    org: str,
    team: dict[str, Any],
    environments: Mapping[uuid.UUID, EnvironmentLayer],
    project_ids: list[uuid.UUID],
) -> Hierarchy:
    """A team's hierarchy: its projects, its environments (as team environments, the same
    layer they are for its agents) and itself."""
    return Hierarchy(
        organization_id=org,
        project_ids=project_ids,
        team_environments=chain_environments(team.get("environment_ids"), environments),
        team=team,
    )
