"""The `sleep` tool: wait up to `max_seconds`, heartbeating the activity every second (so a
cancelled execution stops waiting at once)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from temporalio import activity

from activities.tools import Config, ToolRefused, ToolResult

DEFAULT_MAX_SECONDS = 60


async def run(
    name: str,
    arguments: Mapping[str, Any],
    config: Config,
    *,
    workspace: Path,
    env: Mapping[str, str],
) -> ToolResult:
    seconds = arguments.get("seconds")
    if isinstance(seconds, str):
        try:
            seconds = float(seconds)
        except ValueError:
            seconds = None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise ToolRefused("argument 'seconds' must be a number >= 0")
    limit = config.number("max_seconds", DEFAULT_MAX_SECONDS)
    duration = min(float(seconds), limit)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    while (left := deadline - loop.time()) > 0:
        if activity.in_activity():
            activity.heartbeat()
        await asyncio.sleep(min(1.0, left))
    note = f" (capped at max_seconds={limit:g})" if seconds > limit else ""
    return ToolResult(f"Slept {duration:g} seconds{note}")
