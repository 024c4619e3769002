"""Reports a model call makes while it streams (its start, its chunks, its tools' events), sent
in order by a background task, so an outage of the control plane (the API restarting, Postgres
down for a while) does not stop the model: the call keeps streaming into the buffer, the task
retries with backoff until the control plane answers again, and the call ends once all of it
has landed. Only a failure of the model call itself re-runs it (and pays for it again).

Bounded: past MAX_QUEUED reports, chunks of the same message waiting side by side are merged
into one (text joined, the first one's key kept; none of them was sent yet, so nothing lands
twice). What it holds is then about the size of the answer, which the call holds anyway.

A report the control plane refuses for good (4xx) is not retried: the next report, or the
drain at the end, raises it and the call fails as it would have without the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from activities.reporting import ControlPlane
from workflows.contracts import ReportItem

log = logging.getLogger("controlplane.worker.reports")

# Reports per request; the control plane takes at most 100 in one batch.
BATCH = 100
MAX_QUEUED = 200
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 5.0
# How long an outage the call waits out before it gives up (and Temporal retries it).
GIVE_UP_AFTER = 600.0


def retryable(error: BaseException) -> bool:
    """An outage: no connection, a timeout, a 5xx, or being asked to slow down."""
    if isinstance(error, httpx.TransportError):
        return True
    if isinstance(error, httpx.HTTPStatusError):
        status = error.response.status_code
        return status >= 500 or status == 429
    return False


class ReportBuffer:
    def __init__(
        self,
        control_plane: ControlPlane,
        execution_id: str,
        *,
        give_up_after: float = GIVE_UP_AFTER,
    ) -> None:
        self.control_plane = control_plane
        self.execution_id = execution_id
        self.give_up_after = give_up_after
        self._queue: list[ReportItem] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    def add(self, item: ReportItem) -> None:
        """Queue a report (raises the refusal of an earlier one, if any)."""
        self.raise_failure()
        self._queue.append(item)
        if len(self._queue) > MAX_QUEUED:
            self._queue = merge_chunks(self._queue)
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    async def drain(self) -> None:
        """Until everything queued has landed (or could not be)."""
        await self._idle.wait()
        self.raise_failure()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self._error is None:
                batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                try:
                    await self._send(batch)
                except BaseException as error:
                    self._error = error
                    self._queue.clear()
            self._idle.set()

    async def _send(self, batch: list[ReportItem]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.give_up_after
        delay = FIRST_BACKOFF
        while True:
            try:
                await self.control_plane.send_reports(self.execution_id, batch)
                return
            except Exception as error:
                if not retryable(error) or loop.time() + delay > deadline:
                    raise
                log.warning(
                    "control plane unreachable, reports kept and retried",
                    extra={"execution_id": self.execution_id, "error": str(error)[:200]},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)


def merge_chunks(items: list[ReportItem]) -> list[ReportItem]:
    """Consecutive `message_chunk` events of one message and attempt, not final, merged into
    one (their text joined, the first one's key kept)."""
    merged: list[ReportItem] = []
    for item in items:
        previous = merged[-1].event if merged else None
        event = item.event
        if (
            previous is not None
            and event is not None
            and previous.event_type == event.event_type == "message_chunk"
            and not previous.data.get("is_final")
            and all(
                previous.data.get(k) == event.data.get(k) for k in ("message_id", "attempt", "step")
            )
        ):
            text = str(previous.data.get("content", "")) + str(event.data.get("content", ""))
            previous.data = {**event.data, "content": text}
            continue
        merged.append(item)
    return merged
