"""The workflows every worker registers."""

from __future__ import annotations

from typing import Any

from workflows.agent_execution import AgentExecutionWorkflow
from workflows.queue_probe import QueueProbeWorkflow
from workflows.team_execution import TeamExecutionWorkflow

WORKFLOWS: list[type[Any]] = [AgentExecutionWorkflow, TeamExecutionWorkflow, QueueProbeWorkflow]
