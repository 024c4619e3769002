"""Replay of recorded AgentExecutionWorkflow and TeamExecutionWorkflow histories
(tests/histories/*.json, recorded with RECORD_HISTORIES=1 from the execution tests): a change to
a workflow that would break running executions fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.registry import WORKFLOWS

ROOT = Path(__file__).parent / "histories"
HISTORIES = sorted(ROOT.glob("*.json"))
# Recorded before BATCHED_REPORTS_PATCH: executions still running at that upgrade replay on the
# single-report path. Kept until no such execution can exist (then the patch is deprecated).
BEFORE_BATCHED_REPORTS = sorted((ROOT / "before_batched_reports").glob("*.json"))


def test_histories_were_recorded() -> None:
    names = {path.stem for path in HISTORIES}
    assert names == {path.stem for path in BEFORE_BATCHED_REPORTS}
    assert {
        "multi_turn_mark_done",
        "pause_resume",
        "cancel_mid_stream",
        "model_400_failed",
        "worker_killed_mid_call",
        "team_leader_delegates",
        "team_sequential",
        "team_parallel",
        "team_cancelled",
    } <= names


@pytest.mark.parametrize(
    "path",
    HISTORIES + BEFORE_BATCHED_REPORTS,
    ids=[p.stem for p in HISTORIES]
    + [f"before_batched_reports/{p.stem}" for p in BEFORE_BATCHED_REPORTS],
)
async def test_recorded_history_replays(path: Path) -> None:
    # The id only names the history in failure reports.
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=WORKFLOWS).replay_workflow(history)
    assert result.replay_failure is None
