"""The activity of the queue probe: it names the worker that ran it."""

from __future__ import annotations

from temporalio import activity

from workflows.contracts import ANSWER_PROBE


@activity.defn(name=ANSWER_PROBE)
async def answer_probe(note: str) -> str:
    return f"{note} answered by {activity.info().task_queue}"
