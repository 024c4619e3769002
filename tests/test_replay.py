"""Replay of recorded AgentExecutionWorkflow and TeamExecutionWorkflow histories
(tests/histories/*.json, recorded with RECORD_HISTORIES=1 from the execution tests): a change to
a workflow that would break running executions fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.registry import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_were_recorded() -> None:
    names = {path.stem for path in HISTORIES}
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


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    # The id only names the history in failure reports.
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=WORKFLOWS).replay_workflow(history)
    assert result.replay_failure is None
