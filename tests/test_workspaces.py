"""Stale tool workspaces are removed from the worker's disk; live ones are kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

from activities.workspaces import sweep


def test_sweep_removes_only_workspaces_untouched_for_the_ttl(tmp_path: Path) -> None:
    now = time.time()
    stale = tmp_path / "old-execution"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "f.txt").write_text("x")
    busy = tmp_path / "busy-execution"
    (busy / "deep").mkdir(parents=True)
    (busy / "deep" / "recent.txt").write_text("still writing")
    for path in (stale, stale / "sub", stale / "sub" / "f.txt", busy, busy / "deep"):
        os.utime(path, (now - 90_000, now - 90_000))  # 25 hours ago
    outside = tmp_path / "not-a-workspace.txt"
    outside.write_text("files at the root are not workspaces")
    os.utime(outside, (now - 90_000, now - 90_000))

    removed = sweep(tmp_path, ttl_seconds=24 * 3600, now=now)

    assert removed == [stale]
    assert not stale.exists()
    assert (busy / "deep" / "recent.txt").exists()  # touched recently deep inside
    assert outside.exists()
