"""The activity of the queue probe: it names the worker that ran it."""

from __future__ import annotations

from temporalio import activity


@activity.defn(name="answer_probe")
async def answer_probe(note: str) -> str:
    return f"{note} answered by {activity.info().task_queue}"
