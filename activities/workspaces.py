"""Per-execution tool workspaces on the worker, and their removal once they go stale.

A workspace is `<root>/<execution id>`. The worker cannot know when an execution that another
worker may continue is over, so it removes workspaces nobody has touched for a while instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger("controlplane.worker")

# Untouched this long, a workspace is removed (env CONTROLPLANE_WORKSPACE_TTL_HOURS).
DEFAULT_TTL_HOURS = 24.0
SWEEP_EVERY_SECONDS = 3600


def workspace_root() -> Path:
    """Where tools work: one directory per execution below this (env CONTROLPLANE_WORKSPACES)."""
    configured = os.environ.get("CONTROLPLANE_WORKSPACES")
    root = (
        Path(configured) if configured else Path(tempfile.gettempdir()) / "controlplane-workspaces"
    )
    root.mkdir(parents=True, exist_ok=True)
    return root


def _last_touched(path: Path) -> float:
    """The newest modification time of anything inside `path` (a tool writing deep inside keeps
    its workspace alive)."""
    newest = path.stat().st_mtime
    for directory, _, files in os.walk(path):
        for name in [directory, *(os.path.join(directory, f) for f in files)]:
            try:
                newest = max(newest, os.lstat(name).st_mtime)
            except OSError:
                continue
    return newest


def sweep(root: Path, ttl_seconds: float, now: float | None = None) -> list[Path]:
    """Remove the workspaces under `root` untouched for `ttl_seconds`; returns what it removed."""
    now = time.time() if now is None else now
    removed = []
    for path in root.iterdir():
        if path.is_dir() and not path.is_symlink() and now - _last_touched(path) > ttl_seconds:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


async def sweep_forever(root: Path) -> None:
    ttl = float(os.environ.get("CONTROLPLANE_WORKSPACE_TTL_HOURS", DEFAULT_TTL_HOURS)) * 3600
    while True:
        removed = await asyncio.to_thread(sweep, root, ttl)
        if removed:
            log.info("removed stale workspaces", extra={"count": len(removed)})
        await asyncio.sleep(SWEEP_EVERY_SECONDS)
