"""The workflows every worker registers."""

from __future__ import annotations

from typing import Any

from workflows.agent_execution import AgentExecutionWorkflow
from workflows.queue_probe import QueueProbeWorkflow

WORKFLOWS: list[type[Any]] = [AgentExecutionWorkflow, QueueProbeWorkflow]
