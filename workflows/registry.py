"""The workflows every worker registers."""

from __future__ import annotations

from typing import Any

from workflows.queue_probe import QueueProbeWorkflow

WORKFLOWS: list[type[Any]] = [QueueProbeWorkflow]
